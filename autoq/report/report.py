"""`autoq report`: the morning view of a finished (or running) study as one HTML file + Markdown.

Sections: the Pareto front (table and plot), the per-unit precision map of one trial (as the target's toolchain builds it) (default:
the front member with the lowest mAP drop), its per-class AP against the float model, and its
latency broken down by segment (from the cost model, recomputed with ``project.latency``).
"""

from __future__ import annotations

import csv
import io
import math
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from autoq.errors import SearchError
from autoq.plan import QuantConfig, percentile_interval
from autoq.report.doc import Doc
from autoq.report.plots import pareto_png, trial_points
from autoq.results.front import (
    drop_interval_text,
    front_trials,
    pareto_rows,
    target_label,
)
from autoq.results.store import load_study, make_tracker
from autoq.results.trials import get_trial
from autoq.search.sensitivity import node_units
from autoq.trial_record import BOOT_ATTR, REQUESTED_ATTR, RUN_ATTR, trial_config

if TYPE_CHECKING:
    from autoq.pipeline import Project

__all__ = ["FEW_INSTANCES", "class_instances", "default_trial", "write_report"]

FEW_INSTANCES = 10  # a class with fewer ground-truth boxes in the eval set is greyed: its AP is noise


def class_instances(eval_set) -> dict[str, int]:
    """Non-crowd ground-truth boxes per class name over the eval set's images ({} without annotations)."""
    coco = getattr(eval_set, "coco", None)
    if coco is None:
        return {}
    names = dict(zip(eval_set.category_ids, eval_set.class_names))
    ids = set(int(i) for i in eval_set.image_ids)
    out: dict[str, int] = {}
    for a in coco.dataset.get("annotations", []):
        if a["image_id"] in ids and not a.get("iscrowd"):
            name = names.get(a["category_id"], str(a["category_id"]))
            out[name] = out.get(name, 0) + 1
    return out


def default_trial(study) -> int:
    """The front member with the lowest drop (then the lowest latency)."""
    front = front_trials(study)
    if not front:
        raise SearchError(f"study {study.study_name!r} has no completed trials yet; run `autoq search` first")
    return min(front, key=lambda t: (t.values[0], t.values[1], t.number)).number


def _trial_per_class_ap(project: Project, t, config, log) -> dict[str, float]:
    """The trial's per-class AP: its MLflow artifact when there, else one evaluation."""
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    run_id = t.user_attrs.get(RUN_ATTR)
    if run_id:
        try:
            client = make_tracker(project).client
            with tempfile.TemporaryDirectory() as tmp:
                path = client.download_artifacts(run_id, "per_class_ap.csv", tmp)
                rows = list(csv.DictReader(io.StringIO(Path(path).read_text())))
            if rows and "ap_pt" in rows[0]:  # logged in points since issue 17
                return {r["class"]: float(r["ap_pt"]) / 100.0 for r in rows}
            return {r["class"]: float(r["ap"]) for r in rows}
        except Exception:
            pass
    log(f"report: re-evaluating trial {t.number} for its per-class AP")
    return dict(project.evaluate(config).per_class_ap)


def _summary(values) -> str:
    """``int8`` or ``int8 x2, int16`` for the values of a unit's nodes."""
    counts = Counter(v for v in values if v)
    return ", ".join(k if n == 1 else f"{k} x{n}" for k, n in counts.items()) if len(counts) > 1 else next(iter(counts), "")


def write_report(project: Project, out: Path, *, trial: int | None = None, log: Callable[[str], None] = print):
    """Writes ``out`` (HTML) and ``out.md``; returns both paths."""
    study = load_study(project)
    number = default_trial(study) if trial is None else trial
    t = get_trial(study, number)
    config = trial_config(t)
    base = project.baseline
    names = project.quantizable_names
    doc = Doc(f"autoq report: study {study.study_name}")
    points = trial_points(study, project)
    doc.p(f"model {project.config.model.path.name} (sha256 {project.model.sha256[:12]}), target {project.target.name}, "
          f"{len(points)} completed trials, float {project.metric.name} {100 * base.map:.2f}"
          + ("" if math.isnan(base.map50) else f" (AP50 {100 * base.map50:.2f})") + f" on {len(project.eval_set.metas)} images.")

    doc.h2("Pareto front", "front")
    rows = pareto_rows(study, names, project)
    target = target_label(project)
    images = len(project.eval_set.metas)
    doc.p(f"mAP and drop in points (drop = float mAP - trial mAP). Latency is the {target} cost model's estimate "
          "(ms), not a measurement. The interval is the 95% paired bootstrap interval of the drop over the "
          f"{images} evaluation images (float and trial on the same image draws); a member marked '~ #N' has a drop "
          "not distinguishable from faster trial N's: on this eval set it buys latency for no measurable accuracy.")
    doc.table(["trial", "mAP", "drop (pt)", "95% interval (pt)", f"latency ms (est., {target})", "#int8", "#int16",
               "#float", "note"],
              [[r.trial, 100 * r.map, 100 * r.map_drop, drop_interval_text(r.drop_lo, r.drop_hi), f"{r.latency_ms:.3f}",
                r.int8, r.int16, r.float, "" if r.distinct else f"~ #{r.same_as}"] for r in rows],
              dim=[not r.distinct for r in rows])
    if any(r.drop_lo is not None for r in rows):
        doc.p(f"{sum(r.distinct for r in rows)} of {len(rows)} front members are distinguishable from every faster member.")
    doc.png("pareto.png", pareto_png(points, title=f"study {study.study_name}", target=target), "Pareto front")

    cal = config.calibration
    doc.h2(f"Trial {number}", "trial")
    boot = t.user_attrs.get(BOOT_ATTR)
    ci = f" (95% interval {drop_interval_text(*percentile_interval(boot))})" if boot else ""
    doc.p(f"drop {100 * t.values[0]:.2f} pt{ci}, {t.values[1]:.3f} ms (estimated); calibration {cal.method}"
          + (f" {cal.percentile}" if cal.percentile else "") + f", {cal.granularity} weights; default {config.default.value}; "
          + ", ".join(f"{k} {v}" for k, v in config.counts(names).items()) + " nodes.")

    lat = project.latency(config)
    doc.h3("Per-unit precision: what the toolchain builds")
    requested = QuantConfig.from_dict(t.user_attrs[REQUESTED_ATTR]) if REQUESTED_ATTR in t.user_attrs else config
    doc.p(f"Units are the node groups that share one precision (a Conv with its fused activation and tail). "
          f"'toolchain' is what target {project.target.name}'s toolchain builds (its capability table), "
          "which autoq simulated and priced; 'asked' is what the search proposed, where it differs.")
    unit_rows = []
    for unit, members in node_units(project):
        built = _summary(config.precision_of(m).value for m in members)
        asked = _summary(requested.precision_of(m).value for m in members)
        ops = _summary(project.node_kinds.get(m, "") for m in members)
        devices = _summary(lat.devices.get(m, "") for m in members)
        ms = sum(lat.per_node.get(m, 0.0) for m in members)
        unit_rows.append([unit, ops, built, "" if asked == built else asked, devices, f"{ms:.4f}"])
    doc.table(["unit", "ops", "toolchain", "asked", "device", "ms (estimate)"], unit_rows,
              collapsed=f"{len(unit_rows)} units of {len(names)} quantizable nodes (click to expand)")

    doc.h3("Per-class AP vs float")
    trial_ap = _trial_per_class_ap(project, t, config, log)
    if base.per_class_ap:
        counts = class_instances(project.eval_set)
        cls_rows = []
        for c, f_ap in base.per_class_ap.items():
            q = trial_ap.get(c, float("nan"))
            cls_rows.append([c, counts.get(c, 0), 100 * f_ap, 100 * q, 100 * (q - f_ap)])
        cls_rows.sort(key=lambda r: (r[1] < FEW_INSTANCES, math.isnan(r[4]), r[4]))
        few = sum(r[1] < FEW_INSTANCES for r in cls_rows)
        doc.p(f"Sorted by delta (worst first); AP in points; instances = ground-truth boxes in the eval set. "
              f"{few} classes with fewer than {FEW_INSTANCES} instances are greyed and listed last: their AP moves "
              "by many points with a single box.")
        doc.table(["class", "instances", "float AP", f"trial {number} AP", "delta"], cls_rows,
                  dim=[r[1] < FEW_INSTANCES for r in cls_rows])
    else:
        doc.p("The metric has no per-class AP.")

    doc.h3("Latency breakdown by segment")
    doc.table(["segment", "device", "nodes", "ms"], [[i, d, n, f"{ms:.4f}"] for i, (d, n, ms) in enumerate(lat.segments)])
    doc.table(["part", "value"], [[k, f"{v:.4f}" if k.endswith("_ms") or not float(v).is_integer() else str(int(v))]
                                  for k, v in lat.breakdown().items()])
    doc.p(f"Latency figures are the {target} cost model's estimates, not measurements.")
    doc.h2("Next", "next")
    doc.pre(f"autoq export --trial {number} -o trial_{number}/        # this trial, in {target}'s format\n"
            "autoq export --pareto -o exports/             # every front member\n"
            "autoq pareto                                  # the front in the terminal")
    return doc.write(out)
