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
from autoq.plan import QuantConfig
from autoq.report.doc import Doc
from autoq.report.plots import pareto_png, trial_points
from autoq.results.front import front_trials, pareto_rows
from autoq.results.store import load_study, make_tracker
from autoq.results.trials import get_trial
from autoq.search.sensitivity import node_units
from autoq.trial_record import REQUESTED_ATTR, RUN_ATTR, trial_config

if TYPE_CHECKING:
    from autoq.pipeline import Project

__all__ = ["default_trial", "write_report"]


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
    doc.table(["trial", "mAP", "drop (pt)", "latency_ms", "#int8", "#int16", "#float"],
              [[r.trial, 100 * r.map, 100 * r.map_drop, f"{r.latency_ms:.3f}", r.int8, r.int16, r.float] for r in rows])
    doc.png("pareto.png", pareto_png(points, title=f"study {study.study_name}"), "Pareto front")

    cal = config.calibration
    doc.h2(f"Trial {number}", "trial")
    doc.p(f"drop {100 * t.values[0]:.2f} pt, {t.values[1]:.3f} ms; calibration {cal.method}"
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
        cls_rows = []
        for c, f_ap in base.per_class_ap.items():
            q = trial_ap.get(c, float("nan"))
            cls_rows.append([c, 100 * f_ap, 100 * q, 100 * (q - f_ap)])
        cls_rows.sort(key=lambda r: (math.isnan(r[3]), r[3]))
        doc.p("Sorted by delta (worst first); AP in points.")
        doc.table(["class", "float AP", f"trial {number} AP", "delta"], cls_rows)
    else:
        doc.p("The metric has no per-class AP.")

    doc.h3("Latency breakdown by segment")
    doc.table(["segment", "device", "nodes", "ms"], [[i, d, n, f"{ms:.4f}"] for i, (d, n, ms) in enumerate(lat.segments)])
    doc.table(["part", "value"], [[k, f"{v:.4f}"] for k, v in lat.breakdown().items()])
    return doc.write(out)
