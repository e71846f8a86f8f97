"""The Optuna objective: a trial's config (sampled or seeded), the budget check, screening, early
stop, the evaluation, and its record on the trial and its MLflow run."""

from __future__ import annotations

import traceback

from autoq.pipeline import Project
from autoq.plan import QuantConfig
from autoq.results.trials import counted_trials
from autoq.search.context import SearchContext
from autoq.search.screen import enqueue_next_candidate, screen
from autoq.search.space import suggest_layout_config
from autoq.tracking.mlflow import Tracker
from autoq.trial_record import (
    CONFIG_ATTR,
    CONSTRAINT_ATTR,
    FAIL_ATTR,
    INFEASIBLE_ATTR,
    OVER_BUDGET_ATTR,
    PARTIAL_ATTR,
    REQUESTED_ATTR,
    RUN_ATTR,
    SCREENED_ATTR,
    SEED_CONFIG_ATTR,
    STARTED_ATTR,
)

__all__ = ["constraint_values", "early_stop_images", "make_objective"]


def early_stop_images(project: Project) -> int:
    s = project.config.search
    n = len(project.eval_set.metas)
    if s.max_map_drop is None or s.early_stop_images == 0:
        return 0
    k = s.early_stop_images if s.early_stop_images > 0 else (max(16, n // 4) if n >= 32 else 0)
    return k if 0 < k < n else 0


def constraint_values(project: Project, drop: float, latency: float) -> list[float] | None:
    s = project.config.search
    out = []
    if s.max_map_drop is not None:
        out.append(float(drop - s.max_map_drop / 100.0))
    if s.max_latency_ms is not None:
        out.append(float(latency - s.max_latency_ms))
    return out or None


def make_objective(project: Project, study, ctx: SearchContext, tracker: Tracker, parent: str, budget: int):
    """The objective closure over this process's study, context, tracker and budget."""
    from optuna import TrialPruned

    cfg = project.config
    precisions = project.allowed_precisions()
    early = early_stop_images(project)

    def objective(trial) -> tuple[float, float]:
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
        if not seeded and stale is None:
            why = screen(project, study, ctx, trial, config, budget)
            if why is not None:
                ctx.screened += 1
                ctx.consecutive_screened += 1
                trial.set_user_attr(SCREENED_ATTR, why)
                trial.set_user_attr(CONFIG_ATTR, config.to_dict())
                c = constraint_values(project, trial.user_attrs.get("predicted_drop", 1.0), project.latency(config).total_ms)
                if c is not None:
                    trial.set_user_attr(CONSTRAINT_ATTR, c)
                enqueue_next_candidate(project, study, ctx)
                raise TrialPruned(f"screened: {why}")
        ctx.consecutive_screened = 0
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
            if early and original:
                part = project.evaluate(config, images=early)
                if part.map_drop > cfg.search.max_map_drop / 100.0 + cfg.search.early_stop_margin / 100.0:
                    for k, v in part.metrics().items():
                        trial.set_user_attr(k, v)
                    trial.set_user_attr(PARTIAL_ATTR, True)
                    c = constraint_values(project, part.map_drop, part.latency_ms)
                    if c is not None:
                        trial.set_user_attr(CONSTRAINT_ATTR, c)
                    tracker.finish_trial(run_id, config=config, result=part)
                    raise TrialPruned(f"drop {100 * part.map_drop:.2f} pt on {part.images} images")
            result = project.evaluate(config)
        except TrialPruned:
            raise
        except Exception as exc:  # isolate the trial: record why, keep the study going
            reason = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr(FAIL_ATTR, reason[:2000])
            trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
            tracker.finish_trial(run_id, config=config, result=None, failure=reason)
            raise
        for k, v in result.metrics().items():
            trial.set_user_attr(k, v)
        trial.set_user_attr("seconds", dict(result.seconds))
        if result.infeasible:
            trial.set_user_attr(INFEASIBLE_ATTR, list(result.infeasible))
        c = constraint_values(project, result.map_drop, result.latency_ms)
        if c is not None:
            trial.set_user_attr(CONSTRAINT_ATTR, c)
        tracker.finish_trial(run_id, config=config, result=result)
        return result.map_drop, result.latency_ms

    return objective
