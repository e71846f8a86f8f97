"""The Optuna objective: a trial's config (sampled or seeded), the budget check, screening, early
stop, the evaluation, and its record on the trial and its MLflow run."""

from __future__ import annotations

import traceback

from autoq.model.resolution import format_resolution
from autoq.pipeline import Project
from autoq.plan import QuantConfig
from autoq.results.trials import counted_trials
from autoq.search.context import SearchContext
from autoq.search.dominance import (
    best_drop_at,
    completed_points,
    early_stop_images,
    stop_reason,
)
from autoq.search.sampler import record_constraints
from autoq.search.screen import enqueue_next_candidate, screen
from autoq.search.space import suggest_layout_config
from autoq.tracking.mlflow import Tracker
from autoq.trial_record import (
    BOOT_ATTR,
    CONFIG_ATTR,
    DUPLICATE_ATTR,
    FAIL_ATTR,
    INFEASIBLE_ATTR,
    INTERRUPTED_ATTR,
    OVER_BUDGET_ATTR,
    PARTIAL_ATTR,
    REQUESTED_ATTR,
    RUN_ATTR,
    SCREENED_ATTR,
    SEED_CONFIG_ATTR,
    STARTED_ATTR,
    STOPPED_ATTR,
    trial_config,
)

__all__ = ["constraint_values", "early_stop_images", "make_objective"]


def constraint_values(project: Project, drop: float, latency: float) -> list[float] | None:
    s = project.config.search
    out = []
    if s.max_map_drop is not None:
        out.append(float(drop - s.max_map_drop / 100.0))
    if s.max_latency_ms is not None:
        out.append(float(latency - s.max_latency_ms))
    return out or None


def _same_config(project: Project, study, config: QuantConfig, number: int):
    """The first completed trial (other than ``number``) that evaluated ``config`` exactly (the model's own
    resolution and the original variant spelled or not), or None."""
    import dataclasses

    from optuna.trial import TrialState

    def norm(c: QuantConfig) -> QuantConfig:
        return dataclasses.replace(c, resolution=tuple(c.resolution or project.input_size), variant=c.variant or "")

    want = norm(config)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.number != number and CONFIG_ATTR in t.user_attrs and norm(trial_config(t)) == want:
            return t
    return None


def _refused(project: Project, config: QuantConfig) -> bool:
    """The trial's (resolution, variant) was found unbuildable before the search (`validate_choices`)."""
    size = config.resolution or project.input_size
    return (format_resolution(size), config.variant or "") in project.root.refused


def _debug_log(project: Project, text: str) -> None:
    """Appends to ``<work_dir>/search-debug.log``: tracebacks stay out of the normal log but are kept."""
    try:
        with open(project.config.work_dir / "search-debug.log", "a", encoding="utf-8") as f:
            f.write(text.rstrip() + "\n\n")
    except OSError:
        pass


def make_objective(project: Project, study, ctx: SearchContext, tracker: Tracker, parent: str, budget: int):
    """The objective closure over this process's study, context, tracker and budget."""
    from optuna import TrialPruned

    cfg = project.config
    precisions = project.allowed_precisions()
    early = early_stop_images(project)
    image_stats: dict[int, object] = {}  # trial number -> per-image results of this process's complete trials

    def run(trial) -> tuple[float, float]:
        trial.set_user_attr(STARTED_ATTR, trial.number)  # a retried copy inherits the attrs: keep the number
        earlier = [t for t in counted_trials(study) if t.number < trial.number]
        if len(earlier) >= budget:  # another worker filled the budget first
            trial.set_user_attr(OVER_BUDGET_ATTR, True)
            study.stop()
            raise TrialPruned("over budget")
        frozen = study.get_trials(deepcopy=False)[trial.number]
        stale = frozen.system_attrs.get("failed_trial")  # set by RetryHeartbeatStaleTrialCallback
        if stale is not None and trial.user_attrs.get(RUN_ATTR):
            tracker.close_stale(trial.user_attrs[RUN_ATTR], f"worker stopped during trial {stale}; retried as trial {trial.number}",
                                retried=True)
        config = suggest_layout_config(trial, ctx.layout, precisions, cfg.space.granularities, cfg.space.methods,
                                       cfg.space.percentiles, resolutions=project.resolution_choices(),
                                       variants=project.variant_choices())
        seeded = SEED_CONFIG_ATTR in trial.user_attrs
        if seeded:  # an enqueued seed: its exact config (the params are its projection onto the space)
            config = QuantConfig.from_dict(trial.user_attrs[SEED_CONFIG_ATTR])
        requested = config.counts(project.quantizable_names)
        realized = project.realize(config)  # what the target's toolchain builds: evaluated, priced, recorded
        if realized.changed:
            trial.set_user_attr(REQUESTED_ATTR, config.to_dict())
        config = realized.config
        same = _same_config(project, study, config, trial.number)
        if same is not None or _refused(project, config):
            # evaluated once per study (its result reused), or a choice found unbuildable before the search
            why = f"same configuration as trial {same.number}" if same is not None else "resolution/variant refused"
            trial.set_user_attr(SCREENED_ATTR, why)
            trial.set_user_attr(CONFIG_ATTR, config.to_dict())
            if same is not None:
                trial.set_user_attr(DUPLICATE_ATTR, same.number)
                for k in ("map", "map_drop", "latency_ms"):
                    if k in same.user_attrs:
                        trial.set_user_attr(k, same.user_attrs[k])
            ctx.duplicates += 1
            if ctx.duplicates > max(50, 5 * budget):  # the sampler keeps proposing what is done: stop
                ctx.exhausted = True
                study.stop()
            if ctx.model is not None:
                enqueue_next_candidate(project, study, ctx)
            raise TrialPruned(why)
        if not seeded and stale is None:
            why = screen(project, study, ctx, trial, config, budget)
            if why is not None:
                ctx.screened += 1
                ctx.consecutive_screened += 1
                trial.set_user_attr(SCREENED_ATTR, why)
                trial.set_user_attr(CONFIG_ATTR, config.to_dict())
                record_constraints(trial, constraint_values(project, trial.user_attrs.get("predicted_drop", 1.0),
                                                            project.latency(config).total_ms))
                enqueue_next_candidate(project, study, ctx)
                raise TrialPruned(f"screened: {why}")
        ctx.consecutive_screened = 0
        ctx.duplicates = 0
        trial.set_user_attr(CONFIG_ATTR, config.to_dict())
        counts = config.counts(project.quantizable_names)
        params = {
            "resolution": "x".join(map(str, config.resolution or project.input_size)),
            "variant": config.variant or "original",
            "calibration": config.calibration.method
            + (f" {config.calibration.percentile}" if config.calibration.percentile else "")
            + f", {config.calibration.granularity} weights",
            "granularity": config.calibration.granularity,
            "method": config.calibration.method,
            "n_int8": counts["int8"],
            "n_int16": counts["int16"],
            "n_float": counts["float"],
            # what was asked before the target's toolchain rules (demotions, fusions): differs when it changed
            "requested_int8": requested["int8"],
            "requested_int16": requested["int16"],
            "requested_float": requested["float"],
            "toolchain_changed": len(realized.changed),
            "seed": trial.user_attrs.get("seed", "sampler"),
            "retry_of": stale if stale is not None else "",
        }
        run_id = tracker.start_trial(parent_id=parent, number=trial.number, params=params)
        trial.set_user_attr(RUN_ATTR, run_id)
        original = config.resolution in (None, tuple(project.input_size)) and not config.variant
        try:
            stopped: list[str] = []
            points = completed_points(study) if early and original else []

            def go_on(part) -> bool:  # after the first images: stop a hopeless trial (`autoq.search.dominance`)
                why = stop_reason(project, points, part, image_stats)
                stopped.extend([why] if why else [])
                return why is None

            result = project.evaluate(config, images=early, go_on=go_on) if early and original else project.evaluate(config)
            if result.partial:
                for k, v in result.metrics().items():
                    trial.set_user_attr(k, v)
                trial.set_user_attr(PARTIAL_ATTR, True)
                trial.set_user_attr(STOPPED_ATTR, stopped[0])
                record_constraints(trial, constraint_values(project, result.map_drop, result.latency_ms))
                tracker.finish_trial(run_id, config=config, result=result)
                raise TrialPruned(stopped[0])
        except TrialPruned:
            raise
        except Exception as exc:  # isolate the trial: record why (one line), keep the study going
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            tb = traceback.format_exc()
            trial.set_user_attr(FAIL_ATTR, reason[:2000])
            trial.set_user_attr("traceback", tb[-4000:])
            tracker.finish_trial(run_id, config=config, result=None, failure=reason, traceback=tb)
            _debug_log(project, f"trial {trial.number} failed: {reason}\n{tb}")
            raise
        for k, v in result.metrics().items():
            trial.set_user_attr(k, v)
        trial.set_user_attr("seconds", dict(result.seconds))
        if result.drop_boot:  # the drop's noise: intervals, and which front members are told apart
            trial.set_user_attr(BOOT_ATTR, [round(x, 6) for x in result.drop_boot])
        if result.infeasible:
            trial.set_user_attr(INFEASIBLE_ATTR, list(result.infeasible))
        record_constraints(trial, constraint_values(project, result.map_drop, result.latency_ms),
                           infeasible=bool(result.infeasible))
        tracker.finish_trial(run_id, config=config, result=result)
        if early and result.image_stats is not None:  # kept while on the front: only front members dominate
            image_stats[trial.number] = result.image_stats
            points = completed_points(study)  # one read of the study (this trial is told after the return)
            done = {n: (drop, latency) for drop, latency, n in points}
            for n in [n for n in image_stats if n != trial.number]:
                best = best_drop_at(points, done[n][1]) if n in done else None
                if n not in done or best[0] < done[n][0]:
                    del image_stats[n]
        return result.map_drop, result.latency_ms

    def objective(trial) -> tuple[float, float]:
        try:
            return run(trial)
        except KeyboardInterrupt:  # Ctrl-C: the trial costs no budget slot and runs again next time
            abandon_interrupted(study, tracker, trial)
            objective.interrupted = True  # type: ignore[attr-defined]  # `optimize` re-raises after Optuna's tell
            study.stop()
            raise TrialPruned("interrupted") from None

    objective.interrupted = False  # type: ignore[attr-defined]
    return objective


def abandon_interrupted(study, tracker: Tracker, trial) -> None:
    """Marks ``trial`` interrupted (not counted, see `autoq.results.trials.counted_trials`), closes its
    MLflow run and queues its configuration again so the next run evaluates it."""
    trial.set_user_attr(INTERRUPTED_ATTR, True)
    attrs = trial.user_attrs
    if attrs.get(RUN_ATTR):
        tracker.close_stale(attrs[RUN_ATTR], f"interrupted (Ctrl-C) during trial {trial.number}; queued again", retried=True)
    config = attrs.get(CONFIG_ATTR) or attrs.get(SEED_CONFIG_ATTR)
    if attrs.get(SCREENED_ATTR) or attrs.get(OVER_BUDGET_ATTR):
        return
    retry = {k: v for k, v in attrs.items() if k in ("seed",)}
    if config is not None:
        retry[SEED_CONFIG_ATTR] = config
    study.enqueue_trial(trial.params, user_attrs=retry, skip_if_exists=False)
