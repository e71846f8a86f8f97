"""The trial record: every key autoq writes on an Optuna trial or study, in one place.

Optuna's storage is the source of truth; MLflow mirrors it. A trial's scalar metrics (the keys of
`autoq.plan.TrialResult.metrics`: ``map``, ``map_drop`` (0..1), ``latency_ms``, ``cos/<output>``, ...)
are written under the same names as Optuna user attrs and MLflow metrics; the attrs below say what
else a trial carries. Writers (`autoq.search`, `autoq.tracking`) and readers (`autoq.results`,
reports, exports) import the keys from here, never spell them.
"""

from __future__ import annotations

from typing import Any

from autoq.errors import SearchError
from autoq.plan import QuantConfig

__all__ = [
    "BOOT_ATTR", "CONFIG_ATTR", "CONSTRAINT_ATTR", "DUPLICATE_ATTR", "FAIL_ATTR", "FRONT_VIEW_ATTR", "INFEASIBLE_ATTR", "INTERRUPTED_ATTR", "OVER_BUDGET_ATTR", "PARAM_LEGEND_ATTR", "PARENT_ATTR",
    "PARTIAL_ATTR", "REQUESTED_ATTR", "RUN_ATTR", "SCREENED_ATTR", "SEEDED_ATTR", "SEED_CONFIG_ATTR", "SESSION_ATTR", "SPACE_ATTR", "SPACE_KNOBS_ATTR",
    "STARTED_ATTR", "STOPPED_ATTR", "trial_config",
]

# --- on a trial
CONFIG_ATTR = "quant_config"  # the QuantConfig it evaluated (dict): as the target's toolchain builds it
REQUESTED_ATTR = "requested_config"  # what the sampler or seed asked, when the toolchain builds it differently
INFEASIBLE_ATTR = "infeasible"  # why the toolchain would refuse to compile it (list of lines): never on the front
OVER_BUDGET_ATTR = "over_budget"
SCREENED_ATTR = "screened"  # a proposal the surrogate rejected without evaluating it (not counted)
DUPLICATE_ATTR = "duplicate_of"  # the finished trial whose configuration it repeats (its result reused; also screened)
SEED_CONFIG_ATTR = "seed_config"  # an enqueued trial's exact QuantConfig (dict)
CONSTRAINT_ATTR = "constraint"  # [map_drop - max, latency - max], <= 0 = feasible
PARTIAL_ATTR = "partial"  # early-stopped on the image subset
STOPPED_ATTR = "stopped_early"  # why it stopped on the subset (dominated, or over max_map_drop)
STARTED_ATTR = "autoq_started"  # the trial's number, set first thing in the objective (it got past ask())
RUN_ATTR = "mlflow_run_id"  # its MLflow child run
FAIL_ATTR = "fail_reason"  # why it failed
INTERRUPTED_ATTR = "interrupted"  # stopped by Ctrl-C: not counted in the budget, its config queued again
BOOT_ATTR = "drop_boot"  # paired bootstrap samples of map_drop (0..1), same image draws for every trial
# --- on the study
SEEDED_ATTR = "autoq_seeded"
SESSION_ATTR = "autoq_session"  # ORT session settings (threads, ...) every run of the study uses: same seed, same numbers
SPACE_ATTR = "autoq_space"  # the study's SpaceLayout (JSON)
SPACE_KNOBS_ATTR = "autoq_space_knobs"
PARENT_ATTR = "mlflow_parent_run_id"  # the study's MLflow parent run
FRONT_VIEW_ATTR = "mlflow_front_view"  # `mlflow ui` address (#/experiments/...) of the front's saved runs view
PARAM_LEGEND_ATTR = "autoq_parameters"  # parameter name -> what it decides (optuna-dashboard's study page)


def trial_config(trial: Any) -> QuantConfig:
    """The QuantConfig a trial evaluated."""
    data = trial.user_attrs.get(CONFIG_ATTR)
    if data is None:
        raise SearchError(f"trial {trial.number} has no recorded configuration (state {trial.state.name})")
    return QuantConfig.from_dict(data)
