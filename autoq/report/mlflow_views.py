"""What the study's parent MLflow run holds besides the Pareto table (called by `finish_study`).

- ``autoq.yaml`` (the project file), tags ``autoq.model_sha256``, ``autoq.eval_sha256``,
  ``autoq.calib_sha256`` (dataset hashes, see `dataset_hashes`) and metrics ``float_map``/``float_map50``;
- ``pareto.png`` (every trial grey, the front red and labelled) and ``pareto.html`` (interactive,
  self-contained);
- ``exports/<format>/trial_<N>/...``: the exported configuration of every front member, for each
  format in `EXPORT_FORMATS` (a format that fails is a warning, never a failed search);
- whatever the functions in `PARENT_ARTIFACT_HOOKS` return (the hook for the sensitivity
  table/plot: ``hook(project, study) -> {artifact name: str | bytes}``).

Nothing here may break a search: every part that fails is logged as one warning line.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autoq.pipeline import Project
    from autoq.tracking.mlflow import Tracker

__all__ = ["EXPORT_FORMATS", "PARENT_ARTIFACT_HOOKS", "dataset_hashes", "log_study_views"]

#: Formats the front is exported in on the parent run.
EXPORT_FORMATS: list[str] = ["horizon"]
#: ``hook(project, study) -> {artifact name: text or bytes}`` logged on the parent run (e.g. sensitivity).
PARENT_ARTIFACT_HOOKS: list[Callable[[Any, Any], Mapping[str, str | bytes]]] = []


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
    from autoq.pipeline import _calibration_files

    d = project.config.data
    folder = Path(d.eval_images)
    files = sorted(folder / f for f in project.eval_set.files) if folder.is_dir() else []
    ann = [Path(d.eval_annotations)] if d.eval_annotations and Path(d.eval_annotations).is_file() else []
    calib = "\n".join(_calibration_files(d.calib_images, d.calib_count))
    return {
        "autoq.model_sha256": project.model.sha256,
        "autoq.eval_sha256": _files_sha([*ann, *files]),
        "autoq.calib_sha256": hashlib.sha256(calib.encode()).hexdigest()[:16],
    }


def log_study_views(project: Project, study, tracker: Tracker, parent: str, rows, *, log=print) -> None:
    """Logs the parent run's config, hashes, plots, front exports and hook artifacts (see the module doc)."""
    from autoq.report.plots import pareto_html, pareto_png, trial_points
    from autoq.search.study import format_pareto

    client = tracker.client

    def attempt(what: str, fn) -> None:
        try:
            fn()
        except Exception as exc:  # tracking extras never fail a search
            log(f"warning: MLflow {what} not logged: {type(exc).__name__}: {str(exc)[:300]}")

    def config_and_hashes() -> None:
        cfg = project.config
        client.log_text(parent, Path(cfg.file).read_text(encoding="utf-8"), "autoq.yaml")
        for k, v in dataset_hashes(project).items():
            client.set_tag(parent, k, v)
        base = project.baseline
        client.log_metric(parent, "float_map50", float(base.map50))
        if base.per_class_ap:
            lines = ["class,ap"] + [f"{k},{v:.6f}" for k, v in base.per_class_ap.items()]
            client.log_text(parent, "\n".join(lines) + "\n", "float_per_class_ap.csv")

    def plots() -> None:
        points = trial_points(study, project)
        title = f"study {study.study_name}: {len(points)} trials, front {sum(p.front for p in points)}"
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "pareto.png").write_bytes(pareto_png(points, title=title))
            table = "<pre>" + format_pareto(rows) + "</pre>"
            (Path(tmp) / "pareto.html").write_text(pareto_html(points, title=title, table=table), encoding="utf-8")
            tracker.log_dir(parent, Path(tmp))

    def exports(fmt: str) -> None:
        from autoq.export.run import export_pareto

        with tempfile.TemporaryDirectory() as tmp:
            export_pareto(project, fmt=fmt, out_dir=Path(tmp))
            tracker.log_dir(parent, Path(tmp), f"exports/{fmt}")

    def hooks() -> None:
        for hook in PARENT_ARTIFACT_HOOKS:
            for name, content in dict(hook(project, study)).items():
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
    for fmt in EXPORT_FORMATS:
        attempt(f"export of the front ({fmt})", lambda fmt=fmt: exports(fmt))
    attempt("hook artifacts (sensitivity)", hooks)
