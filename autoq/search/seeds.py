"""The trials a study starts with: all-int8, all-int16, the user's ``search.seeds`` and knapsack
candidates, each enqueued with its exact config."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from autoq.errors import SearchError
from autoq.model.resolution import format_resolution, parse_resolution
from autoq.pipeline import Project
from autoq.plan import Precision, QuantConfig
from autoq.quant.ranges import RANGE_ESTIMATORS
from autoq.search.context import SearchContext
from autoq.search.space import layout_params_of
from autoq.search.surrogate import knapsack
from autoq.trial_record import SEED_CONFIG_ATTR

__all__ = ["enqueue_seeds", "knapsack_bounds", "knapsack_configs", "load_seed_configs", "projection_note"]

Log = Callable[[str], None]


def load_seed_configs(project: Project) -> list[tuple[str, QuantConfig]]:
    """``search.seeds``: QuantConfig YAML files -> configs; an unknown node or bad precision names node and file."""
    import yaml

    names = set(project.quantizable_names)
    allowed = {p.value for p in project.allowed_precisions()}
    out = []
    for path in project.config.search.seeds:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a mapping")
            config = QuantConfig.from_dict(data)
        except Exception as exc:
            raise SearchError(f"search.seeds: {path}: not a QuantConfig YAML (as logged in MLflow): {exc}") from None
        for node, p in [("(default)", config.default), *config.nodes.items()]:
            if node != "(default)" and node not in names:
                sample = ", ".join(sorted(names)[:3])
                raise SearchError(f"search.seeds: {path}: node {node!r} is not a quantizable node of "
                                  f"{project.config.model.path.name} (nodes are named like {sample}, ...)")
            if p.value not in allowed:
                raise SearchError(f"search.seeds: {path}: precision {p.value} for node {node!r} is not allowed "
                                  f"(target {project.target.name}, space.precisions: {sorted(allowed)})")
        method = config.calibration.method
        if method not in RANGE_ESTIMATORS and ":" not in method:
            raise SearchError(f"search.seeds: {path}: calibration method {method!r} is not a range estimator; "
                              f"known: {', '.join(RANGE_ESTIMATORS.names())}")
        pct = config.calibration.percentile
        if pct is not None and not 0 < float(pct) <= 100:
            raise SearchError(f"search.seeds: {path}: calibration.percentile {pct} must be in (0, 100], e.g. 99.99")
        out.append((path.name, config))
    return out


def projection_note(project: Project, label: str, config: QuantConfig) -> str | None:
    """One line when the target's toolchain builds ``config`` differently: which node, what it asked,
    what the toolchain does instead and why (the capability row's source); None when it builds it as is."""
    r = project.realize(config)
    if not r.changed:
        return None
    node = next(iter(sorted(r.refused) or r.changed))
    req, got = r.changed[node]
    kind = project.node_kinds[node]
    rule = project.target.capabilities.rule(kind)
    verb = "refuses" if node in r.refused else "does not run"
    return (f"{label}: target {project.target.name}'s toolchain {verb} {req.value} on {kind} {node!r} (it runs "
            f"{', '.join(sorted(p.value for p in rule.runs))}; {rule.source or 'capability table'}): built as {got.value}"
            + (f"; {len(r.changed) - 1} more nodes changed the same way" if len(r.changed) > 1 else ""))


def knapsack_bounds(project: Project, model, n: int) -> list[float]:
    """Predicted-drop bounds of the knapsack seeds: fractions of max_map_drop, else of the predicted all-int8 drop."""
    import numpy as np

    if n <= 0:
        return []
    s = project.config.search
    if s.max_map_drop is not None:
        top = s.max_map_drop / 100.0
        return [float(x) for x in np.linspace(top / n, top, n)]
    int8 = sum(max(v, 0.0) for (_, p), v in model.coef.items() if p == "int8")
    return [float(x) * int8 for x in np.geomspace(0.05, 0.6, n)]


def knapsack_configs(project: Project, ctx: SearchContext, bounds: list[float]) -> list[tuple[float, float, QuantConfig]]:
    """[(bound, predicted drop, config)] for each bound that has a solution (duplicates dropped)."""
    out, seen = [], set()
    for b in bounds:
        sol = knapsack(ctx.items, b)
        if sol is None:
            continue
        choice, pred, _ = sol
        nodes = ctx.layout.config_nodes(choice)
        c = QuantConfig(default=Precision.INT8, calibration=ctx.calibration, nodes=nodes)
        if c in seen:
            continue
        seen.add(c)
        out.append((b, pred, c))
    return out


def enqueue_seeds(project: Project, study, ctx: SearchContext, user_seeds: list[tuple[str, QuantConfig]], *, log: Log = print) -> None:
    """Enqueues the seed trials of a new study, each with its exact config attached."""
    cfg = project.config
    precisions = project.allowed_precisions()
    # Per-channel weights when allowed: per-tensor int8 weights alone can ruin a detector
    # (depthwise convs), which would hide what the activation precision does.
    calibration = ctx.calibration
    # Seeds run the original model, at its own resolution when that is among the choices.
    resolutions, variants = project.resolution_choices(), project.variant_choices()
    resolution = None
    if resolutions:
        own = format_resolution(project.input_size)
        resolution = parse_resolution(own if own in resolutions else resolutions[0])
    seeds: list[tuple[str, QuantConfig]] = []
    for p in (Precision.INT8, Precision.INT16):
        if p in precisions:
            seeds.append((f"all-{p.value}", QuantConfig.uniform(p, calibration=calibration, resolution=resolution, variant="")))
    seeds += [(f"user:{name}", c) for name, c in user_seeds]
    if ctx.model is not None:
        bounds = knapsack_bounds(project, ctx.model, cfg.search.knapsack_seeds)
        for b, pred, c in knapsack_configs(project, ctx, bounds):
            seeds.append((f"knapsack<={100 * b:.2f}pt (predicted {100 * pred:.2f})", dataclasses.replace(c, resolution=resolution)))
    unique: list[tuple[str, QuantConfig]] = []
    first: dict[QuantConfig, str] = {}
    for label, c in seeds:  # a configuration is evaluated once: seeds the toolchain builds alike are one trial
        built = project.realize(c).config
        if built in first:
            log(f"search: seed {label} not enqueued: same configuration as seed {first[built]}")
            continue
        first[built] = label
        unique.append((label, c))
    seeds = unique
    for label, c in seeds:
        note = projection_note(project, f"seed {label}", c) if label.startswith("user:") else None
        if note:
            log(f"search: {note}")
        params = layout_params_of(c, ctx.layout, resolutions=resolutions, variants=variants)
        study.enqueue_trial(params, user_attrs={"seed": label, SEED_CONFIG_ATTR: c.to_dict()})
    log(f"search: space {ctx.layout.kind} with {len(ctx.layout.params)} precision parameters; "
        f"{len(seeds)} seed trials enqueued ({', '.join(label for label, _ in seeds)})")
