"""What optuna-dashboard shows of an autoq study: named objectives and a legend of the parameters.

Optuna stores objectives as numbers (the dashboard shows "0"/"1") and parameters by their space
names (``band:2``, ``unit:Conv_12``). `name_objectives` sets the objective names on the study
(`optuna.Study.set_metric_names`) and a study user attr ``autoq_parameters`` saying what each
parameter decides (how many nodes, which sensitivity band), shown on the dashboard's study page.
"""

from __future__ import annotations

import warnings
from typing import Any

from autoq.search.space import BAND_PREFIX, NODE_PREFIX, UNIT_PREFIX
from autoq.trial_record import PARAM_LEGEND_ATTR

__all__ = ["objective_names", "name_objectives", "parameter_legend"]


def objective_names(target: str) -> list[str]:
    """The study's two objectives as the dashboard labels them (the stored values stay 0..1 and ms)."""
    return ["mAP drop (0..1, x100 = points; float - trial)", f"estimated latency ms ({target})"]


def parameter_legend(layout: Any) -> dict[str, str]:
    """Parameter name -> what it decides, e.g. ``band:2`` -> "precision of 37 nodes: sensitivity band 2 of 3"."""
    params = list(getattr(layout, "params", ()))
    bands = sum(1 for name, _ in params if name.startswith(BAND_PREFIX))
    out = {}
    for name, members in params:
        if name.startswith(BAND_PREFIX):
            out[name] = (f"precision of {len(members)} nodes: sensitivity band {name[len(BAND_PREFIX):]} of {bands} "
                         "(1 = most sensitive after the per-unit parameters)")
        elif name.startswith(UNIT_PREFIX):
            out[name] = f"precision of unit {name[len(UNIT_PREFIX):]} ({len(members)} nodes, searched alone: sensitive)"
        elif name.startswith(NODE_PREFIX):
            out[name] = f"precision of node {name[len(NODE_PREFIX):]}"
    out.update({"granularity": "weight quantization granularity", "method": "activation range estimator",
                "percentile": "percentile of the percentile range method", "resolution": "input size HxW",
                "variant": "graph variant (rewrite set or model.variants name)"})
    return out


def name_objectives(project: Any, study: Any, layout: Any) -> None:
    """Objective names and the parameter legend on ``study`` (rewritten only when they change)."""
    names = objective_names(str(project.target.name))
    if list(getattr(study, "metric_names", None) or []) != names:
        with warnings.catch_warnings():  # set_metric_names is marked experimental in Optuna
            warnings.simplefilter("ignore")
            study.set_metric_names(names)
    legend = parameter_legend(layout)
    if study.user_attrs.get(PARAM_LEGEND_ATTR) != legend:
        study.set_user_attr(PARAM_LEGEND_ATTR, legend)
