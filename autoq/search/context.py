"""What a search process decides before its first trial: the space layout (stored on the study),
the sensitivity sweep and the drop model with its knapsack items."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autoq.errors import SearchError
from autoq.pipeline import Project
from autoq.plan import Calibration
from autoq.search.sensitivity import default_calibration, node_units, run_sensitivity
from autoq.search.space import GRANULARITY, METHOD, SpaceLayout
from autoq.search.surrogate import DropModel, knapsack_items
from autoq.surrogates.capabilities import unit_choices
from autoq.trial_record import SPACE_ATTR, SPACE_KNOBS_ATTR

__all__ = ["SearchContext", "build_context", "realizable_choices"]

Log = Callable[[str], None]


@dataclass
class SearchContext:
    """What prepare_study decides for the trials of this process: the space, the drop model, knapsack items."""
    layout: SpaceLayout
    sensitivity: Any = None  # autoq.search.sensitivity.Sensitivity | None
    model: Any = None  # autoq.search.surrogate.DropModel | None
    items: list = field(default_factory=list)
    calibration: Calibration | None = None
    screened: int = 0
    consecutive_screened: int = 0
    duplicates: int = 0  # proposals that repeated a finished trial or a refused choice (not evaluated)
    exhausted: bool = False  # so many repeats that the space is taken as searched: the loop stops


def _layout_for(project: Project, study, sens, log: Log) -> SpaceLayout:
    """The study's SpaceLayout: stored on the study; a new study stores the one the config asks for."""
    import json

    cfg = project.config
    names = project.quantizable_names
    knobs = json.dumps({"per_node_top_k": cfg.space.per_node_top_k if sens is not None else 0,
                        "bands": cfg.space.bands if sens is not None else 0})
    stored = study.user_attrs.get(SPACE_ATTR)
    if stored is not None:
        stored_knobs = study.user_attrs.get(SPACE_KNOBS_ATTR)
        if stored_knobs not in (knobs, "legacy"):
            raise SearchError(
                f"study {cfg.search.study_name!r} was created with a different search space ({stored_knobs}; "
                f"the config now asks for {knobs}): set a new search.study_name (or --study-name NEW) to search "
                "the new space, or restore the old values to continue this study"
            )
        return SpaceLayout.from_json(stored)
    if study.get_trials(deepcopy=False):
        # a study created before grouped spaces: it keeps its per-node parameters
        layout = SpaceLayout.per_node(names)
        log(f"search: study {cfg.search.study_name!r} was created with one parameter per node; it keeps that space "
            "(use a new search.study_name for the sensitivity-grouped space)")
        study.set_user_attr(SPACE_KNOBS_ATTR, "legacy")
    else:
        units = node_units(project)
        choices = realizable_choices(project, units)
        if sens is None or cfg.space.per_node_top_k == 0:
            layout = SpaceLayout.units(units, choices)
        else:
            ranked = [(u.unit, u.nodes) for u in sens.ranked()]
            layout = SpaceLayout.grouped(ranked, cfg.space.per_node_top_k, cfg.space.bands, choices)
        fixed = sum(len(c) == 1 for c in choices.values())
        log(f"search: {len(units)} units, {len(units) - fixed} with a precision choice on target {project.target.name} "
            f"({fixed} fixed by what its toolchain builds)")
        study.set_user_attr(SPACE_KNOBS_ATTR, knobs)
    study.set_user_attr(SPACE_ATTR, layout.to_json())
    return layout


def realizable_choices(project: Project, units) -> dict[str, tuple[str, ...]]:
    """Unit -> the precisions worth proposing for it on the project's target (`unit_choices`)."""
    allowed = project.allowed_precisions()
    caps, kinds = project.target.capabilities, project.node_kinds
    return {u: tuple(p.value for p in unit_choices(tuple(m), kinds, caps, allowed)) for u, m in units}


def _calibration_choices(project: Project) -> dict[str, list]:
    s = project.config.space
    return {GRANULARITY: list(s.granularities), METHOD: list(s.methods)}


def build_context(project: Project, study, log: Log) -> SearchContext:
    cfg = project.config
    sens = None
    if cfg.search.sensitivity:

        sens = run_sensitivity(project, log=log)
    layout = _layout_for(project, study, sens, log)
    ctx = SearchContext(layout=layout, sensitivity=sens, calibration=default_calibration(project))
    if sens is not None:

        precisions = project.allowed_precisions()
        ctx.model = DropModel.from_sensitivity(layout, sens, precisions, calibration_choices=_calibration_choices(project))
        ctx.items, _ = knapsack_items(ctx.model, project.model.nodes, project.target, precisions, ctx.calibration,
                                      realize=lambda c: project.realize(c).config)
    return ctx
