"""What a running search shows: one progress line per trial (with ETA) and the MLflow ``pareto``
tags kept current."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from autoq.plan import percentile_interval
from autoq.results.front import front_run_labels, front_trials
from autoq.results.trials import finished_trials
from autoq.tracking.mlflow import Tracker
from autoq.trial_record import (
    BOOT_ATTR,
    FAIL_ATTR,
    INFEASIBLE_ATTR,
    INTERRUPTED_ATTR,
    OVER_BUDGET_ATTR,
    RUN_ATTR,
    SCREENED_ATTR,
    STOPPED_ATTR,
)

__all__ = ["Progress", "ParetoTags"]

Log = Callable[[str], None]


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """One line per finished trial: count, ETA, the best drop and the fastest trial so far.

    A failure reason seen before is not repeated: the line names the first trial that had it.
    """

    def __init__(self, log: Log, budget: int, done_before: int, timeout: float | None, target: str = "the target", *,
                 max_drop: float | None = None, images: int = 0) -> None:
        self.log, self.budget, self.done_before, self.timeout, self.target = log, budget, done_before, timeout, target
        self.start = time.perf_counter()
        self.failures: dict[str, int] = {}
        self.max_drop = max_drop  # points (search.max_map_drop): an interval wider says the eval set is too small
        self.images = images
        self.warned_noise = False

    def __call__(self, study, trial) -> None:
        from optuna.trial import TrialState

        if trial.user_attrs.get(OVER_BUDGET_ATTR) or trial.user_attrs.get(SCREENED_ATTR) or trial.user_attrs.get(INTERRUPTED_ATTR):
            return
        done = len(finished_trials(study))
        ran = max(done - self.done_before, 1)
        elapsed = time.perf_counter() - self.start
        left = max(self.budget - done, 0) * elapsed / ran
        if self.timeout is not None:
            left = min(left, max(self.timeout - elapsed, 0.0))
        if trial.state is TrialState.COMPLETE:
            boot = trial.user_attrs.get(BOOT_ATTR)
            ci = percentile_interval(boot) if boot else None
            now = f"drop {100 * trial.values[0]:.2f} pt" + (f" [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if ci else "")
            now += f", {trial.values[1]:.3f} ms"
            if ci and self.max_drop and not self.warned_noise and 100 * (ci[1] - ci[0]) > self.max_drop:
                self.warned_noise = True
                self.log(f"note: the eval set is too small for the drops asked: trial {trial.number}'s 95% interval is "
                         f"{100 * (ci[1] - ci[0]):.2f} pt wide on {self.images or '?'} images, wider than search.max_map_drop="
                         f"{self.max_drop:g} pt; drops closer than that cannot be told apart. Add images to "
                         "data.eval_images (the interval narrows as 1/sqrt(images)).")
            refused = trial.user_attrs.get(INFEASIBLE_ATTR)
            if refused:
                now += f" -- does not compile on {self.target}: {refused[0]}" + (f" (+{len(refused) - 1})" if len(refused) > 1 else "")
        elif trial.state is TrialState.PRUNED:
            now = trial.user_attrs.get(STOPPED_ATTR) or (
                f"drop {100 * trial.user_attrs.get('map_drop', float('nan')):.2f} pt on {trial.user_attrs.get('images', '?')} images")
            now = f"stopped early: {now}"
        else:
            reason = trial.user_attrs.get(FAIL_ATTR, "unknown")
            first = self.failures.setdefault(reason, trial.number)
            now = f"FAILED: {reason[:300]}" if first == trial.number else f"failed like trial {first}"
        best = ""
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if complete:
            lo = min(complete, key=lambda t: (t.values[0], t.values[1]))
            fast = min(complete, key=lambda t: (t.values[1], t.values[0]))
            best = (
                f" | best drop {100 * lo.values[0]:.2f} pt @ {lo.values[1]:.3f} ms (#{lo.number})"
                f" | fastest {fast.values[1]:.3f} ms @ {100 * fast.values[0]:.2f} pt (#{fast.number})"
            )
        self.log(
            f"[{min(done, self.budget)}/{self.budget}] trial {trial.number}: {now} | "
            f"{elapsed / ran:.1f} s/trial, ETA {_fmt_seconds(left)}{best}"
        )


class ParetoTags:
    """Keeps MLflow tag ``pareto`` current as trials finish: after each completed trial only the runs
    whose front membership changed are re-tagged (a tracking hiccup is a warning, not a failed search)."""

    def __init__(self, tracker: Tracker, parent: str, log: Log, project: Any = None) -> None:
        self.tracker, self.parent, self.log, self.warned = tracker, parent, log, False
        self.project = project
        self.written: Any = None  # the front this process last wrote (the study's final update rewrites it anyway)

    def __call__(self, study, trial) -> None:
        from optuna.trial import TrialState

        if trial.state is not TrialState.COMPLETE:
            return  # only a completed trial can change the front
        try:
            labels = front_run_labels(study, self.project)
            front = labels or ({t.user_attrs.get(RUN_ATTR) for t in front_trials(study, self.project)} - {None})
            if front == self.written:  # a trial off the front changes nothing: no MLflow round trips
                return
            self.tracker.update_pareto(self.parent, front)
            self.written = front
        except Exception as exc:
            if not self.warned:
                self.warned = True
                self.log(f"warning: cannot update MLflow pareto tags: {type(exc).__name__}: {exc}")
