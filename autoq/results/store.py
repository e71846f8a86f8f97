"""Opening the stores a study lives in: the Optuna storage (SQLite serialized, credentials never
printed) and the MLflow tracker."""

from __future__ import annotations

from typing import Any

from autoq.errors import SearchError
from autoq.tracking.mlflow import Tracker

__all__ = ["load_study", "make_tracker", "open_storage", "redact"]


def redact(url: str) -> str:
    """A storage URL without its password (never print or log credentials)."""
    import re

    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def open_storage(url: str, heartbeat: int):
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if url.startswith(("sqlite:", "postgresql", "mysql", "oracle", "mssql")):
        from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite:"):
            kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
        try:
            storage = RDBStorage(
                url,
                heartbeat_interval=heartbeat,
                grace_period=3 * heartbeat,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
                **kwargs,
            )
        except Exception as exc:  # unreachable server, bad credentials, missing driver
            raise SearchError(f"cannot open study storage {redact(url)}: {type(exc).__name__}: {exc}") from None
        if url.startswith("sqlite:"):
            _serialize_sqlite(storage.engine)
        return storage
    return optuna.storages.get_storage(url)


def _serialize_sqlite(engine) -> None:
    """Makes every SQLite transaction take the write lock at BEGIN (``BEGIN IMMEDIATE``).

    pysqlite only locks at the first write, so two workers can both read a queued trial as
    WAITING and both run it (optuna#4002; `tests/test_overnight.py` reproduces it). Taking
    the lock up front makes Optuna's read-check-update of a trial's state atomic.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # let the "begin" hook below issue BEGIN

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while creating the tables predate the hooks


def load_study(project: Any, *, sampler: Any = None, create: bool = False):
    """The project's study in its Optuna storage (``create``: made when missing, with both objectives
    minimized); ``sampler`` only matters to a process that runs trials."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = project.config
    url = cfg.storage_url()
    if url.startswith("sqlite:///"):
        cfg.ensure_work_dir()
    storage = open_storage(url, cfg.search.heartbeat_seconds)
    name = cfg.search.study_name
    if not create:
        try:
            return optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        except KeyError:
            raise SearchError(f"no study {name!r} in {redact(url)}; run `autoq search` first") from None
    try:
        return optuna.create_study(
            study_name=name, storage=storage, sampler=sampler, directions=["minimize", "minimize"], load_if_exists=True
        )
    except Exception as exc:  # e.g. read-only database file
        raise SearchError(f"cannot write study {name!r} to {redact(url)}: {exc}") from None


def make_tracker(project: Any) -> Tracker:
    """The MLflow tracker of the project's ``tracking`` settings."""
    cfg = project.config
    try:
        return Tracker(uri=cfg.tracking_uri(), experiment=cfg.experiment_name(), artifact_root=cfg.root / "mlartifacts")
    except Exception as exc:
        raise SearchError(f"cannot open MLflow tracking {redact(cfg.tracking_uri())}: {exc}") from None
