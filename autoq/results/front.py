"""The front a person reads: feasible-first non-dominated trials, as rows, a table and CSV."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autoq.trial_record import CONSTRAINT_ATTR, INFEASIBLE_ATTR, trial_config

__all__ = [
    "ParetoRow", "format_pareto", "front_is_feasible", "front_trials", "is_feasible", "pareto_csv",
    "pareto_rows", "search_limits",
]


@dataclass(frozen=True)
class ParetoRow:
    trial: int
    map: float
    map_drop: float
    latency_ms: float
    int8: int
    int16: int
    float: int


def search_limits(project: Any = None) -> tuple[float | None, float | None]:
    s = getattr(getattr(project, "config", None), "search", None)
    if s is None:  # no project (or a stand-in without a config): the stored constraint attrs decide
        return None, None
    return (None if s.max_map_drop is None else s.max_map_drop / 100.0), s.max_latency_ms


def is_feasible(t, limits: tuple[float | None, float | None] = (None, None)) -> bool:
    """Within ``limits`` (max drop on the 0..1 scale, max latency) or, without limits, the stored constraint."""
    if t.user_attrs.get(INFEASIBLE_ATTR):  # the toolchain would not compile it
        return False
    drop_max, lat_max = limits
    if drop_max is None and lat_max is None:
        return all(c <= 0 for c in t.user_attrs.get(CONSTRAINT_ATTR) or ())
    return (drop_max is None or t.values[0] <= drop_max + 1e-12) and (lat_max is None or t.values[1] <= lat_max + 1e-12)


def _pareto(trials: list) -> list:
    out = []
    for t in trials:
        d, l = t.values
        if not any((u.values[0] <= d and u.values[1] <= l) and (u.values[0] < d or u.values[1] < l) for u in trials):
            out.append(t)
    return out


def front_trials(study, project: Any = None) -> list:
    """The reported front: non-dominated completed trials among the feasible ones (``search.max_map_drop`` /
    ``max_latency_ms`` of ``project``, else the stored ``constraint`` attrs); when none is feasible, the
    unconstrained front (see `front_is_feasible`)."""
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values and len(t.values) == 2]
    complete = [t for t in complete if not t.user_attrs.get(INFEASIBLE_ATTR)]  # never a point that does not compile
    feasible = [t for t in complete if is_feasible(t, search_limits(project))]
    return _pareto(feasible or complete)


def front_is_feasible(study, project: Any = None) -> bool:
    return all(is_feasible(t, search_limits(project)) for t in front_trials(study, project))


def pareto_rows(study, node_names: tuple[str, ...], project: Any = None) -> list[ParetoRow]:
    """The front (`front_trials`), sorted by latency."""
    rows = []
    for t in front_trials(study, project):
        counts = trial_config(t).counts(node_names)
        rows.append(
            ParetoRow(
                trial=t.number,
                map=t.user_attrs.get("map", float("nan")),
                map_drop=t.values[0],
                latency_ms=t.values[1],
                int8=counts["int8"],
                int16=counts["int16"],
                float=counts["float"],
            )
        )
    return sorted(rows, key=lambda r: r.latency_ms)


def format_pareto(rows: list[ParetoRow]) -> str:
    """The Pareto table as printed at the end of a search (mAP and drop in points)."""
    head = f"{'trial':>5}  {'mAP':>6}  {'drop':>6}  {'latency_ms':>10}  {'#int8':>5}  {'#int16':>6}  {'#float':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.trial:>5}  {100 * r.map:>6.2f}  {100 * r.map_drop:>6.2f}  {r.latency_ms:>10.3f}  "
            f"{r.int8:>5}  {r.int16:>6}  {r.float:>6}"
        )
    return "\n".join(lines)


def pareto_csv(rows: list[ParetoRow]) -> str:
    lines = ["trial,map,map_drop,latency_ms,int8,int16,float"]
    lines += [f"{r.trial},{r.map:.6f},{r.map_drop:.6f},{r.latency_ms:.6f},{r.int8},{r.int16},{r.float}" for r in rows]
    return "\n".join(lines) + "\n"
