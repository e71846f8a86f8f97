"""`autoq export`: a finished trial of the project's study -> the compiler's file."""

from __future__ import annotations

from pathlib import Path

from autoq.pipeline import Project, model_file_for_export


def export_trial(project: Project, *, trial: int, fmt: str, out: Path, **options) -> list[Path]:
    """Writes trial ``trial``'s configuration in format ``fmt``; returns the files written."""
    from autoq.export import export_config
    from autoq.export.base import ExportContext
    from autoq.search.study import get_trial, open_study, trial_config

    study = open_study(project, create=False)
    t = get_trial(study, trial)
    config = trial_config(t)
    h, w = config.resolution or project.input_size
    ctx = ExportContext(
        config=config,
        model_path=model_file_for_export(project),
        input_name=project.model.input_name,
        input_shape=(1, 3, h, w),
        node_names=project.quantizable_names,
        node_ops={n.name: n.op_type for n in project.model.nodes},
        preprocess=project.preprocess,
        study=study.study_name,
        trial=t.number,
        map_drop=t.values[0],
        latency_ms=t.values[1],
        target=project.target.name,
        calib_dir=project.config.data.calib_images,
    )
    return export_config(ctx, fmt, out, **options)
