"""The read side of a study: where results live (`store`: the Optuna storage and the MLflow
tracker), which trials count (`trials`) and the front (`front`). Search writes, everything after it
(report, export, the CLI's tables) reads through here."""
