"""The search loop: minimize (map_drop, latency_ms), resumable, shared by workers, mirrored to MLflow.

Overnight rules:
- Optuna storage is the source of truth. A trial's MLflow run is opened when the trial starts and
  its id stored on the trial at once, so a crash never leaves a completed trial unlogged or
  logged twice.
- A heartbeat marks a trial whose worker died (kill -9, lost machine) as failed once it is
  ``3 x heartbeat`` seconds old; its configuration is retried once.
- The budget is exact across workers: trial numbers are handed out atomically by the storage, and
  a trial whose number comes after ``budget`` counted trials is dropped before it runs.

Smart search (``search.sensitivity: true``, the default; see README "Search"):
- a cached sensitivity sweep (`autoq.search.sensitivity`) ranks node units; the space gives the top
  ``space.per_node_top_k`` units their own parameter and the rest one parameter per sensitivity band
  (`autoq.search.space.SpaceLayout`, stored on the study so a resumed study keeps its space);
- seeds: all-int8, all-int16, ``search.seeds`` YAMLs, knapsack candidates over the additive drop
  predictor and the cost model (`autoq.search.surrogate`), each with its exact config attached;
- pre-screen: a sampler proposal that the ridge-refit drop predictor + the cost model call dominated
  (or infeasible) is not evaluated: the trial is PRUNED with user attr ``screened`` (not counted in the
  budget) and the knapsack's next candidate is enqueued in its place;
- early stop (`autoq.search.dominance`): a trial first runs on ``early_stop_images`` images and is PRUNED
  (MLflow tag ``partial=true``) when it cannot reach the front at its latency (``dominance_stop``) or its
  drop there exceeds ``max_map_drop`` by ``early_stop_margin``; otherwise the rest of the images run;
- constraints ``max_map_drop`` / ``max_latency_ms``: user attr ``constraint`` (<= 0 feasible) read by the
  sampler's ``constraints_func``; the reported front is the feasible one, or the unconstrained one with a
  warning when nothing is feasible.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autoq.pipeline import Project
from autoq.results.store import make_tracker
from autoq.results.trials import finished_trials, in_flight_trials, screened_count
from autoq.runtime.session import SessionSettings
from autoq.search.choices import validate_choices
from autoq.search.context import SearchContext, build_context
from autoq.search.dashboard import name_objectives
from autoq.search.objective import make_objective
from autoq.search.progress import ParetoTags, Progress
from autoq.search.recovery import fail_stale_trials
from autoq.search.seeds import enqueue_seeds, load_seed_configs
from autoq.search.study import open_study
from autoq.tracking.mlflow import Tracker
from autoq.trial_record import PARENT_ATTR, SEEDED_ATTR, SESSION_ATTR

__all__ = ["Prepared", "optimize", "prepare_study"]

Log = Callable[[str], None]


@dataclass(frozen=True)
class Prepared:
    """A search process after `prepare_study`: its study, the MLflow tracker and parent run, and its context."""

    study: Any
    tracker: Tracker
    parent: str
    ctx: SearchContext


def prepare_study(project: Project, *, seed: int | None = None, worker: int = 0, log: Log = print) -> Prepared:
    """Everything before the first trial: baseline, statistics, sensitivity, study, parent run, seed trials."""
    cfg = project.config
    cfg.ensure_work_dir()
    names = project.quantizable_names
    study = open_study(project, seed=seed, worker=worker)
    pin_session(project, study, log)  # before the baseline: every run of the study computes with the same settings
    base = project.baseline
    _ = project.stats  # calibration statistics once, before any trial
    validate_choices(project, log)  # every (resolution, variant) built once; broken ones leave the space
    user_seeds = load_seed_configs(project)  # fail early on a bad seed file
    ctx = build_context(project, study, log)
    tracker = make_tracker(project)
    parent = tracker.parent_run(
        cfg.search.study_name,
        study.user_attrs.get(PARENT_ATTR),
        {
            "model": cfg.model.path.name,
            "model_sha256": project.model.sha256,
            "target": project.target.name,
            "quantizable_nodes": len(names),
            "eval_images": len(project.eval_set.metas),
            "float_map_pt": round(100 * base.map, 2),
            "sampler": cfg.search.sampler,
            "space": f"{ctx.layout.kind}: {len(ctx.layout.params)} precision parameters",
        },
    )
    if study.user_attrs.get(PARENT_ATTR) != parent:
        study.set_user_attr(PARENT_ATTR, parent)
        study.set_user_attr("float_map", base.map)
    name_objectives(project, study, ctx.layout)  # optuna-dashboard: named objectives and parameters
    if not study.user_attrs.get(SEEDED_ATTR):
        study.set_user_attr(SEEDED_ATTR, True)
        enqueue_seeds(project, study, ctx, user_seeds, log=log)
    return Prepared(study, tracker, parent, ctx)


def pin_session(project: Project, study, log: Log = print) -> None:
    """The study's ORT session settings: measured by its first run and recorded on the study; later
    runs and workers use the recorded ones (a timing-based choice could differ, and with it the drops)."""
    recorded = study.user_attrs.get(SESSION_ATTR)
    settings = None
    if isinstance(recorded, dict):
        try:
            settings = SessionSettings(**recorded)
        except (TypeError, ValueError):
            settings = None  # another version's fields: record this run's choice
    if settings is None:
        study.set_user_attr(SESSION_ATTR, dataclasses.asdict(project.session_settings))
        return
    if settings != project.session_settings:
        log(f"session settings: {recorded} as recorded with study {study.study_name!r} (not this machine's measurement)")
    project.pin_session_settings(settings)


class _DropTrialFailures(logging.Filter):
    """Optuna's "Trial N failed ..." warnings (with the traceback): autoq prints its own line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.getMessage().startswith("Trial ") and " failed " in record.getMessage())


@contextlib.contextmanager
def _quiet_trial_failures():
    """Silences Optuna's failed-trial warnings only while autoq runs the study."""
    logger, f = logging.getLogger("optuna.study._optimize"), _DropTrialFailures()
    logger.addFilter(f)
    try:
        yield
    finally:
        logger.removeFilter(f)


def optimize(
    project: Project,
    prepared: Prepared,
    *,
    budget: int,
    timeout: float | None = None,
    log: Log = print,
):
    """Runs trials until the study holds ``budget`` finished trials (or ``timeout`` seconds pass),
    waiting out other workers' in-flight trials so the budget is exact."""
    cfg = project.config
    study, tracker, parent = prepared.study, prepared.tracker, prepared.parent
    tracker.mark_stale_runs(study)
    done_before = len(finished_trials(study))
    log(f"search: {max(budget - done_before, 0)} trial(s) to run ({done_before} already in study {cfg.search.study_name!r})")
    objective = make_objective(project, study, prepared.ctx, tracker, parent, budget)
    progress = Progress(log, budget, done_before, timeout, project.target.name,
                        max_drop=cfg.search.max_map_drop, images=len(project.eval_set.metas))
    pareto_tags = ParetoTags(tracker, parent, log, project)
    start = time.monotonic()
    stalled = False  # the last optimize() finished nothing (other workers took the budget)
    while True:
        left = None if timeout is None else timeout - (time.monotonic() - start)
        if left is not None and left <= 0:
            break
        if prepared.ctx.exhausted:
            log("search: the sampler only proposes configurations already evaluated; stopping before the budget")
            break
        remaining = budget - len(finished_trials(study)) - len(in_flight_trials(study))
        if remaining > 0 and not stalled:
            before = len(finished_trials(study))
            screened_before = screened_count(study)
            with _quiet_trial_failures():  # Progress prints one line per failure; the traceback is in MLflow
                study.optimize(objective, n_trials=remaining, timeout=left, catch=(Exception,),
                               callbacks=[progress, pareto_tags], gc_after_trial=False)
            if objective.interrupted:  # Ctrl-C inside a trial: abandoned (not counted); the CLI exits 130
                raise KeyboardInterrupt
            stalled = len(finished_trials(study)) == before and screened_count(study) == screened_before
            continue
        if not in_flight_trials(study):
            break
        stalled = False
        # Trials of other workers still run, or a dead worker's trial awaits its heartbeat timeout:
        # wait, then let Optuna fail and re-queue the stale ones, so the budget is really finished.
        time.sleep(cfg.search.heartbeat_seconds)
        fail_stale_trials(study)
        tracker.mark_stale_runs(study)
    return study
