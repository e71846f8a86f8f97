"""Publishing a finished search: the front's tags, tables and failure summary (`finish_study`) and
what the study's parent MLflow run holds besides the Pareto table (`log_study_views`):

- ``autoq.yaml`` (the project file), tags ``autoq.model_sha256``, ``autoq.eval_sha256``,
  ``autoq.calib_sha256`` (dataset hashes, see `dataset_hashes`) and metrics ``float_map_pt``/``float_map50_pt`` (mAP points);
- ``pareto.png`` (every trial grey, the front red and labelled) and ``pareto.html`` (interactive,
  self-contained);
- ``exports/<format>/trial_<N>/...``: the exported configuration of every front member, for each
  format in `FRONT_EXPORT_FORMATS` (a format that fails is a warning, never a failed search);
- ``sensitivity.csv`` / ``sensitivity.png`` when the search ran a sensitivity sweep.

Nothing here may break a search: every part that fails is logged as one warning line.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from autoq.errors import SearchError
from autoq.export.run import export_pareto
from autoq.pipeline import Project, calibration_files
from autoq.report.plots import pareto_html, pareto_png, trial_points
from autoq.results.front import (
    format_pareto,
    front_is_feasible,
    front_markdown,
    front_run_labels,
    front_trials,
    pareto_csv,
    pareto_rows,
    search_limits,
    target_label,
)
from autoq.results.store import redact
from autoq.results.trials import finished_trials, screened_count
from autoq.search.loop import Prepared
from autoq.search.sensitivity import sensitivity_artifacts
from autoq.trial_record import FAIL_ATTR, FRONT_VIEW_ATTR, PARTIAL_ATTR, RUN_ATTR

__all__ = ["FRONT_EXPORT_FORMATS", "dataset_hashes", "finish_study", "log_study_views"]

Log = Callable[[str], None]

#: Formats the front is exported in on the parent run.
FRONT_EXPORT_FORMATS: tuple[str, ...] = ("horizon",)


def _files_sha(paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        h.update(p.name.encode())
        if p.is_file():
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]


def dataset_hashes(project: Project) -> dict[str, str]:
    """Content hashes of the evaluation set (annotation file + image files) and calibration images."""
    d = project.config.data
    folder = Path(d.eval_images)
    files = sorted(folder / f for f in project.eval_set.files) if folder.is_dir() else []
    ann = [Path(d.eval_annotations)] if d.eval_annotations and Path(d.eval_annotations).is_file() else []
    calib = "\n".join(calibration_files(d.calib_images, d.calib_count))
    return {
        "autoq.model_sha256": project.model.sha256,
        "autoq.eval_sha256": _files_sha([*ann, *files]),
        "autoq.calib_sha256": hashlib.sha256(calib.encode()).hexdigest()[:16],
    }


def log_study_views(project: Project, prepared: Prepared, rows, *, log: Log = print) -> None:
    """Logs the parent run's config, hashes, plots, front exports and sensitivity (see the module doc)."""
    study, tracker, parent = prepared.study, prepared.tracker, prepared.parent
    client = tracker.client

    def attempt(what: str, fn) -> None:
        try:
            fn()
        except Exception as exc:  # tracking extras never fail a search
            log(f"warning: MLflow {what} not logged: {type(exc).__name__}: {str(exc)[:300]}")

    def config_and_hashes() -> None:
        cfg = project.config
        client.log_text(parent, redact(Path(cfg.file).read_text(encoding="utf-8")), "autoq.yaml")  # no passwords
        for k, v in dataset_hashes(project).items():
            client.set_tag(parent, k, v)
        base = project.baseline
        client.log_metric(parent, "float_map50_pt", round(100 * float(base.map50), 4))
        if base.per_class_ap:
            lines = ["class,ap_pt"] + [f"{k},{100 * v:.2f}" for k, v in base.per_class_ap.items()]
            client.log_text(parent, "\n".join(lines) + "\n", "float_per_class_ap.csv")

    def plots() -> None:
        points = trial_points(study, project)
        title = f"study {study.study_name}: {len(points)} trials, front {sum(p.front for p in points)}"
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "pareto.png").write_bytes(pareto_png(points, title=title, target=target_label(project)))
            table = "<pre>" + format_pareto(rows, target_label(project)) + "</pre>"
            (Path(tmp) / "pareto.html").write_text(pareto_html(points, title=title, table=table, target=target_label(project)), encoding="utf-8")
            tracker.log_dir(parent, Path(tmp))

    def exports(fmt: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            export_pareto(project, fmt=fmt, out_dir=Path(tmp))
            tracker.log_dir(parent, Path(tmp), f"exports/{fmt}")

    def sensitivity() -> None:
        for name, content in sensitivity_artifacts(prepared.ctx.sensitivity).items():
            if isinstance(content, bytes):
                with tempfile.TemporaryDirectory() as tmp:
                    p = Path(tmp) / Path(name).name
                    p.write_bytes(content)
                    parent_dir = str(Path(name).parent)
                    client.log_artifact(parent, str(p), None if parent_dir == "." else parent_dir)
            else:
                client.log_text(parent, content, name)

    attempt("config and dataset hashes", config_and_hashes)
    attempt("pareto.png/pareto.html", plots)
    for fmt in FRONT_EXPORT_FORMATS:
        attempt(f"export of the front ({fmt})", lambda fmt=fmt: exports(fmt))
    attempt("sensitivity artifacts", sensitivity)


def finish_study(project: Project, prepared: Prepared, *, log: Log = print) -> None:
    """Pareto tags on every trial run, front table and failure summary on the parent run."""
    from optuna.trial import TrialState

    study, tracker, parent = prepared.study, prepared.tracker, prepared.parent
    finished = finished_trials(study)
    failures = Counter(t.user_attrs.get(FAIL_ATTR, "unknown") for t in finished if t.state is TrialState.FAIL)
    for reason, n in failures.most_common():
        log(f"warning: {n} trial(s) failed: {reason[:300]}")
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise SearchError(f"no trial completed; failures: {'; '.join(failures)[:500]}")
    rows = pareto_rows(study, project.quantizable_names, project)
    front = front_trials(study, project)
    if not front_is_feasible(study, project):
        s = project.config.search
        drop_max, lat_max = search_limits(project)
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

        def violation(t) -> float:
            v = 0.0
            if drop_max is not None:
                v += max(t.values[0] - drop_max, 0.0) / max(drop_max, 1e-9)
            if lat_max is not None:
                v += max(t.values[1] - lat_max, 0.0) / lat_max
            return v

        best = min(complete, key=violation)
        log(f"warning: no trial meets max_map_drop={s.max_map_drop} pt / max_latency_ms={s.max_latency_ms}; the front "
            f"below is unconstrained. Closest: trial {best.number} (drop {100 * best.values[0]:.2f} pt, "
            f"{best.values[1]:.3f} ms); export it with `autoq export --trial {best.number}`")
    screened = screened_count(study)
    pruned = sum(1 for t in finished if t.state is TrialState.PRUNED and t.user_attrs.get(PARTIAL_ATTR))
    if screened or pruned:
        log(f"search: {pruned} trial(s) stopped early on the image subset, {screened} proposal(s) screened out by the surrogate")
    ran = [t.user_attrs["images"] for t in finished if t.state is not TrialState.FAIL and "images" in t.user_attrs]
    per_trial = sum(ran) / len(ran) if ran else 0.0
    if ran:
        n = len(project.eval_set.metas)
        log(f"search: {per_trial:.1f} images evaluated per trial on average, {per_trial / n:.2f}x the {n}-image eval set")
    labels = front_run_labels(study, project)  # front runs named and described: readable at a glance
    tracker.update_pareto(parent, labels or ({t.user_attrs.get(RUN_ATTR) for t in front} - {None}))
    log_study_views(project, prepared, rows, log=log)
    target = target_label(project)
    try:
        tracker.set_description(parent, front_markdown(rows, target, len(project.eval_set.metas)))
        tracker.front_chart(parent, [(r.map_drop, r.latency_ms) for r in rows],
                            name=f"pareto front chart ({len(rows)} members)")
        view = tracker.front_view()  # the front with metric columns (MLflow opens runs without any)
        if study.user_attrs.get(FRONT_VIEW_ATTR) != view:
            study.set_user_attr(FRONT_VIEW_ATTR, view)
    except Exception as exc:  # tracking extras never fail a search
        log(f"warning: MLflow front description/chart not logged: {type(exc).__name__}: {str(exc)[:300]}")
    distinct = sum(r.distinct for r in rows)
    tracker.finish_parent(
        parent,
        metrics={"float_map_pt": round(100 * project.baseline.map, 4), "trials": len(finished), "pareto_size": len(rows),
                 "pareto_distinguishable": distinct, "screened": screened, "early_stopped": pruned,
                 "images_per_trial": round(per_trial, 2)},
        texts={"pareto.csv": pareto_csv(rows), "pareto.txt": format_pareto(rows, target) + "\n"},
    )
