"""What every exporter receives (`ExportContext`) and the registry exporters join.

An exporter turns one trial's decisions into the files a vendor compiler reads. It gets everything
it needs in one frozen record, so exporters never reach back into the study, the model cache or
the dataset, and a user plugin (``my_pkg.my_mod:write_thing``) sees exactly what built-ins see.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from autoq.errors import ConfigError, ExportError
from autoq.plan import Precision, QuantConfig
from autoq.registry import Registry

if TYPE_CHECKING:
    import numpy as np

    from autoq.data.preprocess import Preprocess

__all__ = [
    "EXPORTERS",
    "ExportContext",
    "Exporter",
    "bundle_dir",
    "calibration_images",
    "check_choice",
    "check_model_nodes",
    "comment_block",
    "copy_model",
    "header_lines",
    "join_names",
    "one_line",
    "out_file",
    "percentile_fraction",
    "precision_counts",
    "provenance_sidecar",
    "safe_stem",
    "write_run_script",
]

# An exporter: ``fn(ctx, out, **typed_keyword_options) -> files written``. ``out`` is a file path or
# an existing directory (the exporter then picks the file name).
Exporter = Callable[..., "list[Path]"]

EXPORTERS: Registry[Exporter] = Registry("export format", builtins_module="autoq.export.builtins")


@dataclass(frozen=True)
class ExportContext:
    """One trial, ready to be written for a compiler.

    Attributes:
        config: the trial's QuantConfig.
        model_path: the ONNX the compiler should read; its node names match those in ``config``.
        input_name: the model's image input.
        input_shape: ``(1, 3, H, W)`` at the trial's resolution.
        node_names: quantizable node names (``config.precision_of`` applies to these).
        node_ops: node name -> op type (all nodes of the model, for messages and op-type rules).
        preprocess: how images become the model input (``autoq.data.preprocess.Preprocess``).
        study, trial, map_drop, latency_ms: provenance written into file headers (map_drop 0..1, printed
            in mAP points; ``map_drop_ci`` its bootstrap interval when the trial has one).
        target: hardware target name, e.g. ``"generic-npu"``, ``"horizon-x3"``, ``"horizon-j5"``.
        calib_images: loads the calibration images autoq's statistics came from, prepared at the
            trial's size (uint8 NHWC, the model's colour order, no mean/std), for formats that ship
            their own calibration inputs (``rknn``).
        qdq_model: builds the trial's QDQ ONNX (serialized) on demand; only ``onnx-qdq`` needs it.
        toolchain_decides: nodes whose precision the target's toolchain fixes by itself (one precision in
            its capability table, e.g. an op it always runs on the CPU): exporters need not list them.
    """

    config: QuantConfig
    model_path: Path
    input_name: str
    input_shape: tuple[int, ...]
    node_names: tuple[str, ...]
    node_ops: Mapping[str, str]
    preprocess: Preprocess
    study: str
    trial: int | None
    map_drop: float | None
    latency_ms: float | None
    target: str
    calib_images: Callable[[], np.ndarray] | None = None
    qdq_model: Callable[[], bytes] | None = None
    toolchain_decides: frozenset[str] = frozenset()
    map_drop_ci: tuple[float, float] | None = None  # 95% paired bootstrap interval of map_drop (0..1)

    def assignment(self) -> dict[str, Precision]:
        """Precision of every quantizable node, in graph order."""
        return self.config.assignment(self.node_names)

    def overrides_outside_model(self) -> list[str]:
        """Nodes the config overrides that the model does not have (a config from another variant)."""
        known = set(self.node_names) | set(self.node_ops)
        return sorted(n for n in self.config.nodes if n not in known)

    def label(self) -> str:
        """A file-name-safe name for this trial, e.g. ``yolox_s_trial12``."""
        base = self.study or Path(self.model_path).stem or "model"
        if self.trial is not None:
            base = f"{base}_trial{self.trial}"
        return safe_stem(base)


def safe_stem(text: str) -> str:
    """``text`` reduced to characters every file system and compiler accepts in a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "model"


# --------------------------------------------------------------------------- helpers shared by exporters


def join_names(names: list[str] | tuple[str, ...], limit: int = 8) -> str:
    """``a, b, c`` (the first ``limit`` names, then a count) for error messages and comments."""
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} ... ({len(names)} in all)"


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


def check_choice(option: str, value: object, allowed: tuple[str, ...]) -> None:
    """``ConfigError`` naming the export option when ``value`` is not one of ``allowed``."""
    if value not in allowed:
        raise ConfigError(f"export option {option} must be one of {', '.join(allowed)}, got {value!r}")


def check_model_nodes(ctx: ExportContext) -> None:
    """``ExportError`` when the config overrides nodes the exported model does not have."""
    stray = ctx.overrides_outside_model()
    if stray:
        raise ExportError(
            f"the config overrides nodes that {ctx.model_path} does not have: {join_names(stray)}; "
            "export the trial together with the model variant it was searched on"
        )


def percentile_fraction(percentile: float | None) -> float | None:
    """autoq's percentile (99.99 or 0.9999) as a fraction in (0, 1]; ``None`` stays ``None``."""
    if percentile is None:
        return None
    p = float(percentile)
    p = p / 100.0 if p > 1.0 else p
    if not 0.0 < p <= 1.0:
        raise ExportError(f"calibration percentile {percentile!r} is not in (0, 100]; fix calibration.percentile")
    return round(p, 10)


def out_file(ctx: ExportContext, out: Path, suffix: str) -> Path:
    """The file to write: ``out`` itself, or ``out/<label><suffix>`` when ``out`` is a directory
    (an existing one, or a path without a file suffix). Parent directories are created."""
    out = Path(out)
    if out.is_dir() or not out.suffix:
        out.mkdir(parents=True, exist_ok=True)
        out = out / f"{ctx.label()}{suffix}"
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def header_lines(
    ctx: ExportContext,
    title: str,
    *,
    counts: str,
    assumptions: list[str],
    run: str,
) -> list[str]:
    """The provenance every export starts with: study, trial, predicted drop and latency, the
    per-precision node counts, the assumptions and the vendor command to run next."""
    drop = "unknown" if ctx.map_drop is None else f"{100 * ctx.map_drop:.2f} pt"
    if ctx.map_drop is not None and ctx.map_drop_ci is not None:
        drop += f" (95% interval {100 * ctx.map_drop_ci[0]:.2f} .. {100 * ctx.map_drop_ci[1]:.2f} pt)"
    latency = "unknown" if ctx.latency_ms is None else f"{ctx.latency_ms:.4g} ms"
    lines = [
        f"{title} written by autoq",
        f"study: {ctx.study or '-'}",
        f"trial: {'-' if ctx.trial is None else ctx.trial}",
        f"predicted mAP drop: {drop} (vs the float model at the same resolution, on autoq's eval set)",
        f"predicted latency: {latency} (autoq cost model for target {ctx.target}, not a board measurement)",
        f"model: {ctx.model_path} (input {ctx.input_name} {'x'.join(str(int(d)) for d in ctx.input_shape)})",
        f"nodes: {counts}",
        "assumptions:",
        *(f"  - {one_line(a)}" for a in assumptions),
        f"run next: {one_line(run)}",
    ]
    return lines


def comment_block(lines: list[str], prefix: str = "#") -> str:
    """``lines`` as comment lines (leading indentation kept, the rest on one line each)."""
    out = []
    for line in lines:
        lead = line[: len(line) - len(line.lstrip(" "))]
        out.append(f"{prefix} {lead}{one_line(line)}".rstrip() + "\n")
    return "".join(out)


def provenance_sidecar(path: Path, lines: list[str]) -> Path:
    """Writes ``lines`` to ``<path>.autoq.txt`` (for formats without comments, such as JSON read
    into strict schemas); returns the sidecar path."""
    side = path.with_name(path.name + ".autoq.txt")
    side.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return side


def precision_counts(ctx: ExportContext) -> dict[str, int]:
    """How many quantizable nodes run in each precision, e.g. ``{"int8": 90, "int16": 3, "float": 1}``."""
    return ctx.config.counts(ctx.node_names)


# --------------------------------------------------------------------------- bundles


def bundle_dir(out: Path, fmt: str) -> Path:
    """The folder a bundle is written into: ``out`` (created); ``ExportError`` when it is a file."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"{folder} is a file; the {fmt} export is a bundle folder: pass -o DIR")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # read-only place, a file where a parent folder should be
        raise ExportError(f"cannot create the {fmt} bundle folder {folder} ({exc.strerror or exc}); "
                          "pass -o a writable folder") from None
    return folder


def calibration_images(ctx: ExportContext, fmt: str) -> np.ndarray:
    """The calibration images a bundle ships (the tool calibrates itself from them); one line when there are none."""
    if ctx.calib_images is None:
        raise ExportError(f"{fmt} ships the calibration data its tool calibrates from, and this export has no "
                          "calibration images; export from a project (autoq export)")
    images = ctx.calib_images()
    if len(images) == 0:
        raise ExportError(f"{fmt}: no calibration images to ship; check data.calib_images in autoq.yaml")
    return images


def copy_model(ctx: ExportContext, folder: Path, name: str = "model.onnx") -> Path:
    """The model the config names, copied into the bundle (configs then refer to it relatively)."""
    path = Path(folder) / name
    shutil.copyfile(ctx.model_path, path)
    return path


def write_run_script(folder: Path, commands: list[str], *, comment: list[str] = (), name: str = "run.sh") -> Path:
    """An executable ``run.sh`` that runs ``commands`` from the bundle folder (the vendor's next step)."""
    lines = ["#!/usr/bin/env bash", *(f"# {one_line(c)}" for c in comment), "set -euo pipefail",
             'cd "$(dirname "$0")"', *commands]
    path = Path(folder) / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o755)
    return path
