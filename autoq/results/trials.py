"""Which trials of a study count: the budget's trials, the finished and in-flight ones, one by number."""

from __future__ import annotations

from autoq.errors import SearchError
from autoq.trial_record import (
    FAIL_ATTR,
    INTERRUPTED_ATTR,
    OVER_BUDGET_ATTR,
    SCREENED_ATTR,
)

__all__ = ["counted_trials", "finished_trials", "get_trial", "in_flight_trials", "screened_count"]


def _retried_numbers(trials) -> set[int]:
    """Trials whose configuration was retried after their worker died (not counted in the budget)."""
    out: set[int] = set()
    for t in trials:
        out.update(t.system_attrs.get("retry_history", ()))
    return out


def counted_trials(study) -> list:
    """Trials that count toward the budget: all but dropped over-budget, screened, Ctrl-C-interrupted and retried stale ones."""
    trials = study.get_trials(deepcopy=False)
    retried = _retried_numbers(trials)
    return [t for t in trials if not t.user_attrs.get(OVER_BUDGET_ATTR) and not t.user_attrs.get(SCREENED_ATTR)
            and not t.user_attrs.get(INTERRUPTED_ATTR) and t.number not in retried]


def finished_trials(study) -> list:
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [t for t in counted_trials(study) if t.state in done]


def in_flight_trials(study) -> list:
    """Counted trials that are running (here or on another worker); queued ones are not in flight."""
    from optuna.trial import TrialState

    return [t for t in counted_trials(study) if t.state is TrialState.RUNNING]


def screened_count(study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get(SCREENED_ATTR))


def get_trial(study, number: int):
    """A completed trial by number, or a clear error saying what exists."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        raise SearchError(f"study {study.study_name!r} has no trial {number} (it has {len(trials)} trials)")
    t = trials[number]
    if t.state is not TrialState.COMPLETE:
        raise SearchError(
            f"trial {number} is {t.state.name.lower()}"
            + (f" ({t.user_attrs[FAIL_ATTR]})" if FAIL_ATTR in t.user_attrs else "")
            + "; pick a completed trial (see `autoq pareto`)"
        )
    return t
