"""Pre-screening: a sampler proposal that the refit drop model and the cost model call dominated
(or infeasible) is not evaluated; the knapsack's next candidate takes its place."""

from __future__ import annotations

from autoq.pipeline import Project
from autoq.plan import QuantConfig
from autoq.search.context import SearchContext
from autoq.search.seeds import knapsack_configs
from autoq.search.space import layout_params_of
from autoq.search.surrogate import knapsack_items
from autoq.trial_record import (
    CONFIG_ATTR,
    SCREENED_ATTR,
    SEED_CONFIG_ATTR,
    trial_config,
)

__all__ = ["SCREEN_MAX_CONSECUTIVE", "SCREEN_MIN_TRIALS", "enqueue_next_candidate", "screen"]

SCREEN_MIN_TRIALS = 6  # completed trials before the surrogate may reject a proposal
SCREEN_MAX_CONSECUTIVE = 4  # after this many rejections in a row the next proposal is evaluated anyway


def screen(project: Project, study, ctx: SearchContext, trial, config: QuantConfig, budget: int) -> str | None:
    """Why a sampler proposal is not worth evaluating (None = evaluate it). Refits the drop model first."""
    from optuna.trial import TrialState

    if ctx.model is None or not project.config.search.screen:
        return None
    if ctx.consecutive_screened >= SCREEN_MAX_CONSECUTIVE or ctx.screened >= budget:
        return None
    if config.resolution not in (None, tuple(project.input_size)) or config.variant:
        return None
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
            if not t.user_attrs.get(SCREENED_ATTR) and "map_drop" in t.user_attrs]
    complete = [t for t in done if t.state is TrialState.COMPLETE]
    if len(complete) < SCREEN_MIN_TRIALS:
        return None
    rows = [(ctx.model.params_of(trial_config(t)), float(t.user_attrs["map_drop"])) for t in done]
    ctx.model.refit(rows)
    pred = ctx.model.predict(config)
    margin = max(2 * ctx.model.rmse, 0.005)
    s = project.config.search
    estimate_mode = (project.config.target.mode or project.target.mode) != "measured"
    lat = project.latency(config).total_ms if estimate_mode else None
    trial.set_user_attr("predicted_drop", pred)
    if lat is not None and s.max_latency_ms is not None and lat > s.max_latency_ms:
        return f"latency {lat:.3f} ms > max_latency_ms"
    if s.max_map_drop is not None and pred - margin > s.max_map_drop / 100.0:
        return f"predicted drop {100 * pred:.2f} pt > max_map_drop + margin"
    if lat is not None:
        for t in complete:
            if t.values[1] <= lat and t.values[0] <= pred - margin:
                return f"dominated by trial {t.number} (predicted drop {100 * pred:.2f} pt, {lat:.3f} ms)"
    return None


def enqueue_next_candidate(project: Project, study, ctx: SearchContext) -> None:
    """The knapsack's next untried candidate under the refit drop model (bounds across the observed drops)."""
    import numpy as np
    from optuna.trial import TrialState

    ctx.items, _ = knapsack_items(ctx.model, project.model.nodes, project.target, project.allowed_precisions(),
                                  ctx.calibration)
    tried = set()  # as the toolchain builds them: two requests it builds alike are one configuration
    for t in study.get_trials(deepcopy=False):
        if CONFIG_ATTR in t.user_attrs:
            tried.add(trial_config(t))
        elif SEED_CONFIG_ATTR in t.user_attrs and t.state is TrialState.WAITING:
            tried.add(project.realize(QuantConfig.from_dict(t.user_attrs[SEED_CONFIG_ATTR])).config)
    s = project.config.search
    top = s.max_map_drop / 100.0 if s.max_map_drop is not None else max(
        [t.values[0] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))] + [0.01])
    rng = np.random.default_rng(len(tried))
    bounds = sorted(rng.uniform(0.02, 1.0, 8) * top)
    resolutions, variants = project.resolution_choices(), project.variant_choices()
    for b, pred, c in knapsack_configs(project, ctx, bounds):
        if project.realize(c).config in tried:
            continue
        params = layout_params_of(c, ctx.layout, resolutions=resolutions, variants=variants)
        params = {k: v for k, v in params.items() if k not in ("resolution", "variant")}
        study.enqueue_trial(params, user_attrs={"seed": f"knapsack<={100 * b:.2f}pt (after screen)", SEED_CONFIG_ATTR: c.to_dict()})
        return
