"""`autoq export`: a finished trial of the project's study -> the compiler's file(s)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from autoq.data.coco import load_calibration
from autoq.errors import ExportError, SearchError
from autoq.export import export_config
from autoq.export.base import ExportContext
from autoq.pipeline import Project, model_file_for_export
from autoq.plan import percentile_interval
from autoq.results.front import front_trials
from autoq.results.store import load_study
from autoq.results.trials import get_trial
from autoq.trial_record import BOOT_ATTR, trial_config


def trial_context(project: Project, study, t) -> ExportContext:
    """The ExportContext of finished trial ``t`` of ``study``."""
    # the trial's variant (resolution, rewrites or user variant): its model file, written under
    # .autoq/export/ by hash, and the config as that model's nodes see it
    state = project.variant(trial_config(t).resolution, trial_config(t).variant)
    config = state.config_for(trial_config(t))
    h, w = config.resolution or state.input_size
    nodes = state.model.nodes
    d = project.config.data
    return ExportContext(
        config=config,
        model_path=model_file_for_export(state),
        input_name=state.model.input_name,
        input_shape=(1, 3, h, w),
        node_names=state.quantizable_names,
        node_ops={n.name: n.op_type for n in nodes},
        preprocess=project.preprocess,
        study=study.study_name,
        trial=t.number,
        map_drop=t.values[0],
        map_drop_ci=percentile_interval(t.user_attrs[BOOT_ATTR]) if t.user_attrs.get(BOOT_ATTR) else None,
        latency_ms=t.values[1],
        target=project.target.name,
        calib_images=lambda: load_calibration(d.calib_images, d.calib_count, (h, w), project.preprocess)[0],
        qdq_model=lambda: state.build(config).SerializeToString(),
        toolchain_decides=frozenset(n for n, kind in state.node_kinds.items()
                                    if len(project.target.capabilities.rule(kind).runs) == 1),
    )


def export_trial(project: Project, *, trial: int, fmt: str, out: Path, **options) -> list[Path]:
    """Writes trial ``trial``'s configuration in format ``fmt``; returns the files written."""
    study = load_study(project)
    t = get_trial(study, trial)
    return export_config(trial_context(project, study, t), fmt, out, **options)


def export_pareto(
    project: Project, *, fmt: str, out_dir: Path, log: Callable[[str], None] = print, **options
) -> list[Path]:
    """Writes one export per Pareto-front trial, each in ``out_dir/trial_<N>/``; returns all files.

    Trials are taken from `front_trials` (completed, feasible, non-dominated on (map_drop, latency_ms))
    in order of latency. A trial the format cannot express (e.g. int16 nodes for vastai) is skipped
    with one line saying why; if no front member can be written, that is an ``ExportError``.
    """

    study = load_study(project)
    front = sorted(front_trials(study, project), key=lambda t: (t.values[1], t.values[0], t.number))
    if not front:
        raise SearchError(f"study {study.study_name!r} has no completed trials yet; run `autoq search` first")
    out_dir = Path(out_dir)
    files: list[Path] = []
    skipped: list[str] = []
    for t in front:
        sub = out_dir / f"trial_{t.number}"
        try:
            ctx = trial_context(project, study, t)
            try:
                sub.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ExportError(f"cannot create {sub} ({exc.strerror or exc}); pass -o a writable folder") from None
            files.extend(export_config(ctx, fmt, sub, **options))
        except ExportError as exc:
            if sub.is_dir() and not any(sub.iterdir()):
                sub.rmdir()
            skipped.append(f"trial {t.number}: {exc}")
            log(f"skipped Pareto trial {t.number} for format {fmt}: {exc}")
    if not files:
        raise ExportError(f"no Pareto trial can be written as {fmt}: " + "; ".join(skipped)[:1500])
    return files
