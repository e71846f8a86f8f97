"""The front a person reads: feasible-first non-dominated trials, as rows, a table and CSV."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autoq.plan import percentile_interval
from autoq.trial_record import (
    BOOT_ATTR,
    CONSTRAINT_ATTR,
    INFEASIBLE_ATTR,
    RUN_ATTR,
    trial_config,
)

__all__ = [
    "ParetoRow", "drop_interval_text", "format_pareto", "front_is_feasible", "front_markdown", "front_run_labels",
    "front_run_name", "front_run_note", "front_trials", "is_feasible", "pareto_csv", "pareto_rows", "search_limits",
    "target_label",
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
    drop_lo: float | None = None  # 95% paired bootstrap interval of map_drop (0..1), None without one
    drop_hi: float | None = None
    same_as: int | None = None  # a faster front member whose drop this one's is not distinguishable from

    @property
    def distinct(self) -> bool:
        return self.same_as is None


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


def _not_better(slow: list[float], fast: list[float]) -> bool:
    """Whether the slower member's drop is not clearly lower than the faster one's: the 95% interval of
    the paired difference (same image draws) reaches zero."""
    return percentile_interval([a - b for a, b in zip(slow, fast)])[1] >= 0.0


def pareto_rows(study, node_names: tuple[str, ...], project: Any = None) -> list[ParetoRow]:
    """The front (`front_trials`), sorted by latency, each with its drop's interval and, when a faster
    member's drop is not distinguishable from its own (paired bootstrap), that member's number."""
    trials = sorted(front_trials(study, project), key=lambda t: (t.values[1], t.values[0]))
    rows = []
    for j, t in enumerate(trials):
        counts = trial_config(t).counts(node_names)
        boot = t.user_attrs.get(BOOT_ATTR) or []
        lo, hi = percentile_interval(boot) if boot else (None, None)
        same_as = next((f.number for f in trials[:j] if boot and len(f.user_attrs.get(BOOT_ATTR) or []) == len(boot)
                        and _not_better(boot, f.user_attrs[BOOT_ATTR])), None)
        rows.append(
            ParetoRow(
                trial=t.number,
                map=t.user_attrs.get("map", float("nan")),
                map_drop=t.values[0],
                latency_ms=t.values[1],
                int8=counts["int8"],
                int16=counts["int16"],
                float=counts["float"],
                drop_lo=lo,
                drop_hi=hi,
                same_as=same_as,
            )
        )
    return rows


def drop_interval_text(lo: float | None, hi: float | None) -> str:
    """``[0.12, 0.95]`` in points, or ``-`` without an interval."""
    return "-" if lo is None or hi is None else f"[{100 * lo:.2f}, {100 * hi:.2f}]"


def format_pareto(rows: list[ParetoRow], target: str = "") -> str:
    """The Pareto table as printed at the end of a search: mAP and drop in points with the drop's 95%
    interval, the estimated latency, and ``~#N`` on a member not distinguishable from faster #N."""
    lat = "est. ms" + (f" ({target})" if target else "")
    head = (f"{'trial':>5}  {'mAP':>6}  {'drop pt':>7}  {'95% interval':>14}  {lat:>10}  {'#int8':>5}  {'#int16':>6}  "
            f"{'#float':>6}  note")
    lines = [head, "-" * len(head)]
    for r in rows:
        note = "" if r.distinct else f"~#{r.same_as}: not distinguishable from this faster trial"
        lines.append(
            f"{r.trial:>5}  {100 * r.map:>6.2f}  {100 * r.map_drop:>7.2f}  {drop_interval_text(r.drop_lo, r.drop_hi):>14}  "
            f"{r.latency_ms:>{len(lat)}.3f}  {r.int8:>5}  {r.int16:>6}  {r.float:>6}  {note}".rstrip()
        )
    if any(r.drop_lo is not None for r in rows):
        n = sum(r.distinct for r in rows)
        lines.append(f"drop: float mAP - trial mAP, points; 95% paired bootstrap interval over the eval images. "
                     f"{n} of {len(rows)} front members are distinguishable from every faster one.")
    return "\n".join(lines)


def _opt(v: float | None, scale: float = 100.0) -> str:
    return "" if v is None else f"{scale * v:.4f}"


def pareto_csv(rows: list[ParetoRow]) -> str:
    """The front in mAP points (latency: the target's estimate, ms)."""
    lines = ["trial,map_pt,map_drop_pt,map_drop_pt_lo,map_drop_pt_hi,latency_ms,int8,int16,float,same_as"]
    lines += [f"{r.trial},{100 * r.map:.4f},{100 * r.map_drop:.4f},{_opt(r.drop_lo)},{_opt(r.drop_hi)},{r.latency_ms:.4f},"
              f"{r.int8},{r.int16},{r.float},{'' if r.same_as is None else r.same_as}" for r in rows]
    return "\n".join(lines) + "\n"


def target_label(project: Any = None) -> str:
    """The target's name as tables print it (a target YAML path: its file stem)."""
    name = str(getattr(getattr(getattr(project, "config", None), "target", None), "name", "") or "")
    return name.rsplit("/", 1)[-1].removesuffix(".yaml").removesuffix(".yml")


def front_run_name(r: ParetoRow) -> str:
    """A front member's MLflow run name: what it costs and buys, readable in the runs table."""
    ci = "" if r.drop_lo is None else f" {drop_interval_text(r.drop_lo, r.drop_hi)}"
    same = "" if r.distinct else f" ~#{r.same_as}"
    return f"★ trial {r.trial} · drop {100 * r.map_drop:.2f} pt{ci} · {r.latency_ms:.3f} ms{same}"


def front_run_note(r: ParetoRow, target: str = "", images: int | None = None) -> str:
    """A front member's MLflow description (markdown): drop with its interval, latency, export command."""
    on = f" on {images} images" if images else ""
    lines = [f"**Pareto front member** — trial {r.trial}", "",
             f"- mAP drop: **{100 * r.map_drop:.2f} pt** (mAP {100 * r.map:.2f})"
             + ("" if r.drop_lo is None else f", 95% interval {drop_interval_text(r.drop_lo, r.drop_hi)} pt{on} "
                "(paired bootstrap over the images)"),
             f"- estimated latency: **{r.latency_ms:.3f} ms** ({target or 'target'} cost model, not measured)",
             f"- nodes: {r.int8} int8, {r.int16} int16, {r.float} float (CPU)"]
    if not r.distinct:
        lines.append(f"- its drop is **not distinguishable** from faster trial {r.same_as}'s on this eval set: "
                     f"prefer trial {r.same_as} unless more images say otherwise")
    lines += ["", f"Export: `autoq export --trial {r.trial} -o trial_{r.trial}/`"]
    return "\n".join(lines)


def front_markdown(rows: list[ParetoRow], target: str = "", images: int | None = None) -> str:
    """The study's MLflow description: the front as a markdown table and how to act on it."""
    on = f", {images} eval images" if images else ""
    head = ["**Pareto front** (mAP drop in points vs estimated latency"
            + (f", {target} cost model" if target else "") + f"{on}). "
            "Front runs are named `★ trial N · drop … · … ms`; filter `tags.pareto = 'true'`. "
            "The child run `pareto front chart` charts every member (drop_pt_vs_step_latency_us: x = step = latency in µs).", "",
            "| trial | mAP | drop pt | 95% interval | est. ms | int8 / int16 / float | note | export |",
            "|---:|---:|---:|---|---:|---|---|---|"]
    for r in rows:
        note = "" if r.distinct else f"≈ faster #{r.same_as}"
        head.append(f"| {r.trial} | {100 * r.map:.2f} | {100 * r.map_drop:.2f} | {drop_interval_text(r.drop_lo, r.drop_hi)} | "
                    f"{r.latency_ms:.3f} | {r.int8} / {r.int16} / {r.float} | {note} | `autoq export --trial {r.trial}` |")
    return "\n".join(head)


def front_run_labels(study, project: Any = None) -> dict[str, tuple[str, str]]:
    """MLflow run id -> (run name, description) of every front member (see `Tracker.update_pareto`)."""
    names = getattr(project, "quantizable_names", None)
    if names is None:
        return {}
    target = target_label(project)
    eval_set = getattr(project, "eval_set", None)
    images = len(eval_set.metas) if eval_set is not None else None
    runs = {t.number: t.user_attrs.get(RUN_ATTR) for t in front_trials(study, project)}
    return {runs[r.trial]: (front_run_name(r), front_run_note(r, target, images))
            for r in pareto_rows(study, names, project) if runs.get(r.trial)}
