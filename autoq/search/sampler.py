"""The Optuna sampler of ``search.sampler``, constraint-aware when the search has limits."""

from __future__ import annotations

from autoq.config import SAMPLERS
from autoq.errors import SearchError
from autoq.trial_record import CONSTRAINT_ATTR, INFEASIBLE_ATTR

__all__ = ["AUTO_SAMPLER", "make_sampler", "record_constraints"]

#: what ``search.sampler: auto`` means (chosen by measurement, see README "Search")
AUTO_SAMPLER = "tpe"


def _trial_constraints_api() -> bool:
    """Optuna >= 5 reads constraints set on the trial (``Trial.set_constraint``); ``constraints_func`` is
    deprecated there (a FutureWarning per sampler). Older versions only have ``constraints_func``."""
    import optuna

    return hasattr(optuna.trial.Trial, "set_constraint")


def record_constraints(trial, values: list[float] | None, *, infeasible: bool = False) -> None:
    """Stores a trial's constraint values (``<= 0`` = feasible): user attr ``constraint`` (read by the
    reports) and, on Optuna >= 5, the trial's own constraints (read by the samplers)."""
    if values is not None:
        trial.set_user_attr(CONSTRAINT_ATTR, values)
    if _trial_constraints_api() and (values is not None or infeasible):
        for k, v in enumerate(values or ()):
            trial.set_constraint(f"limit{k}", float(v))
        trial.set_constraint("compiles", 1.0 if infeasible else 0.0)


def _constraints_func(trial) -> list[float]:
    c = trial.user_attrs.get(CONSTRAINT_ATTR)
    return [*([float(x) for x in c] if c else [0.0]), 1.0 if trial.user_attrs.get(INFEASIBLE_ATTR) else 0.0]


def make_sampler(cfg, seed: int, name: str | None = None, *, compile_limits: bool = False):
    """The Optuna sampler of ``search.sampler`` (``auto`` = `AUTO_SAMPLER`), constraint-aware when
    ``max_map_drop`` / ``max_latency_ms`` are set or the target refuses some configs (``compile_limits``)."""
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    name = name or cfg.search.sampler
    if name == "auto":
        name = AUTO_SAMPLER
    constrained = cfg.search.max_map_drop is not None or cfg.search.max_latency_ms is not None or compile_limits
    cf = _constraints_func if constrained and not _trial_constraints_api() else None
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=False, constant_liar=True,
                                          constraints_func=cf, n_startup_trials=min(10, max(4, cfg.search.budget // 8)))
    if name == "nsga2":
        pop = max(8, min(50, cfg.search.budget // 5))
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=pop, constraints_func=cf)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, constraints_func=cf, n_startup_trials=min(10, max(4, cfg.search.budget // 8)))
    raise SearchError(f"search.sampler {name!r} is not one of {', '.join(SAMPLERS)}")
