"""TensorRT: a shell script with the ``trtexec`` command that builds the trial's mixed-precision engine.

What a trial decides maps onto trtexec like this::

    trtexec --onnx=<model> --int8 --fp16 --precisionConstraints=obey \\
            --layerPrecisions=<node>:fp32,<node>:fp16,*:int8 --saveEngine=<label>.engine

* float nodes -> ``<node>:fp32``;
* int16 nodes -> ``<node>:fp16``: TensorRT has no int16, and fp16 is the nearest more-accurate
  precision (stated in a comment); read back, fp16 means int16;
* the trial's default precision -> ``*:<precision>`` (last); nodes equal to it are not listed;
* ``calib_cache`` adds ``--calib=<cache>``: implicit int8 needs a calibration cache for accurate
  results (without one trtexec uses placeholder scales, fine for timing only) — or export
  ``onnx-qdq`` and build that instead.

The script quotes every argument for ``sh``; the header comment has provenance and assumptions.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from autoq.errors import ConfigError, ExportError
from autoq.export.base import (
    EXPORTERS,
    ExportContext,
    check_model_nodes,
    comment_block,
    header_lines,
    join_names,
    out_file,
    precision_counts,
)
from autoq.plan import Precision

__all__ = ["read_tensorrt", "write_tensorrt"]

_TRT = {Precision.INT8: "int8", Precision.INT16: "fp16", Precision.FLOAT: "fp32"}
_FROM_TRT = {"int8": Precision.INT8, "fp16": Precision.INT16, "fp32": Precision.FLOAT}


@EXPORTERS.register("tensorrt")
def write_tensorrt(
    ctx: ExportContext,
    out: Path,
    *,
    engine: str | None = None,
    calib_cache: str | None = None,
    precision_constraints: str = "obey",
) -> list[Path]:
    """Writes ``<label>_trtexec.sh``; returns ``[path]``."""
    if precision_constraints not in ("obey", "prefer"):
        raise ConfigError(f"export option precision_constraints must be obey or prefer, got {precision_constraints!r}")
    check_model_nodes(ctx)
    assignment = ctx.assignment()
    bad = [n for n in assignment if "," in n]
    if bad:
        raise ExportError(f"trtexec --layerPrecisions cannot name layers containing ',': {join_names(bad)}")
    default = ctx.config.default
    specs = [f"{n}:{_TRT[p]}" for n, p in assignment.items() if p is not default]
    specs.append(f"*:{_TRT[default]}")
    engine = engine or f"{ctx.label()}.engine"
    args = [
        "trtexec",
        f"--onnx={ctx.model_path}",
        "--int8",
        "--fp16",
        f"--precisionConstraints={precision_constraints}",
        "--layerPrecisions=" + ",".join(specs),
        f"--saveEngine={engine}",
    ]
    if calib_cache:
        args.append(f"--calib={calib_cache}")

    counts = precision_counts(ctx)
    assumptions = [
        "TensorRT has no int16: int16 nodes are built fp16 (the nearest more-accurate precision)",
        "float nodes are built fp32 on the GPU (autoq measured them as unquantized)",
        f"layer names are the ONNX node names of {ctx.model_path}; layers TensorRT fuses get new names and are "
        "then not matched (see trtexec --verbose / --exportLayerInfo)",
        "a layer name containing ':' is assumed to be split at its last ':'",
    ]
    if not calib_cache:
        assumptions.append("no --calib cache: int8 scales are placeholders (timing only); pass calib_cache or "
                           "build the onnx-qdq export for accuracy")
    header = header_lines(
        ctx,
        "trtexec command",
        counts=f"{counts['int8']} int8, {counts['int16']} int16 (-> fp16), {counts['float']} float (-> fp32)",
        assumptions=assumptions,
        run="sh <this file>",
    )
    command = " \\\n  ".join(shlex.quote(a) for a in args)
    path = out_file(ctx, out, "_trtexec.sh")
    path.write_text("#!/bin/sh\n" + comment_block(header) + "set -e\n" + command + "\n", encoding="utf-8")
    path.chmod(0o755)
    return [path]


def read_tensorrt(path: Path) -> tuple[dict[str, Precision], dict[str, Any]]:
    """Parses the trtexec script strictly (the one ``trtexec`` command, ``sh`` quoting).

    Returns (layer -> precision of ``--layerPrecisions``: fp32 -> float, fp16 -> int16, int8 -> int8;
    calibration) where calibration has ``default`` (from ``*:``), ``calib`` (the cache or ``None``),
    ``precision_constraints``, ``onnx`` and ``flags`` (the other ``--`` options).
    """
    path = Path(path)
    where = f"trtexec script {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc})") from None
    try:
        words = shlex.split(text.replace("\\\n", " "), comments=True)
    except ValueError as exc:
        raise ConfigError(f"{where}: bad shell quoting ({exc})") from None
    if words.count("trtexec") != 1:
        raise ConfigError(f"{where}: expected exactly one trtexec command")
    args = words[words.index("trtexec") + 1 :]
    options: dict[str, str] = {}
    flags: list[str] = []
    for arg in args:
        if not arg.startswith("--"):
            raise ConfigError(f"{where}: unexpected argument {arg!r}")
        key, sep, value = arg[2:].partition("=")
        if sep:
            if key in options:
                raise ConfigError(f"{where}: --{key} given twice")
            options[key] = value
        else:
            flags.append(key)
    nodes: dict[str, Precision] = {}
    default = Precision.FLOAT
    for spec in filter(None, options.get("layerPrecisions", "").split(",")):
        name, sep, prec = spec.rpartition(":")
        if not sep or prec not in _FROM_TRT:
            raise ConfigError(f"{where}: layer precision {spec!r} is not <layer>:int8|fp16|fp32")
        if name == "*":
            default = _FROM_TRT[prec]
        else:
            nodes[name] = _FROM_TRT[prec]
    calibration = {
        "default": default,
        "calib": options.get("calib"),
        "precision_constraints": options.get("precisionConstraints"),
        "onnx": options.get("onnx"),
        "flags": flags,
    }
    return nodes, calibration
