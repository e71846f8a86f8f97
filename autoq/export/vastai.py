"""Vastai ``vamc`` build YAML (VastModelZOO style): int8 with float nodes kept as fp16.

What a trial decides maps onto vamc like this:

* int8 -> ``backend.dtype: int8``; float nodes -> ``backend.quantize.exclude_layers`` (kept fp16);
* int16 has no vamc counterpart: such a trial is refused (``ExportError`` naming the nodes);
* an all-float trial -> ``backend.dtype: fp16`` without a quantize section;
* weight granularity -> ``quantize_per_channel``; the range method -> ``calibrate_mode``
  (minmax -> max, everything else -> percentile, noted in a comment).

``exclude_layers`` takes vamc's integer layer ids, not names. **Indexing assumption**: autoq writes
the 0-based index of the node among the model's quantizable nodes (``ExportContext.node_names``:
Conv, ConvTranspose, Gemm, MatMul, ... that take a float input) in ONNX graph order. Each index is
followed by a ``# autoq-layer <i>: <node name>`` comment so `read_vastai` (and a person) can map it
back; check vamc's layer listing before trusting the ids.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
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
    one_line,
    out_file,
    precision_counts,
)
from autoq.plan import Precision

__all__ = ["INDEXING", "read_vastai", "write_vastai"]

INDEXING = "0-based index among the model's quantizable nodes in ONNX graph order"
_LAYER_COMMENT = re.compile(r"^\s*#\s*autoq-layer\s+(\d+):\s?(.*)$")


@EXPORTERS.register("vastai")
def write_vastai(
    ctx: ExportContext,
    out: Path,
    *,
    calibration_dir: str | None = None,
    image_suffix: str = "jpg",
    calibration_size: int = 32,
    workspace: str = "./deploy_weights",
) -> list[Path]:
    """Writes ``<label>_vamc.yaml``; returns ``[path]``."""
    import yaml

    if calibration_size < 1:
        raise ConfigError("export option calibration_size must be >= 1")
    check_model_nodes(ctx)
    assignment = ctx.assignment()
    int16s = [n for n, p in assignment.items() if p is Precision.INT16]
    if int16s:
        raise ExportError(
            f"vamc has no int16: nodes {join_names(int16s)}; pick a trial without int16 nodes "
            "(or search with space.precisions [int8, float] for Vastai)"
        )
    names = list(ctx.node_names)
    excluded = [i for i, n in enumerate(names) if assignment[n] is Precision.FLOAT]
    all_float = len(excluded) == len(names) and bool(names) or (not names and ctx.config.default is Precision.FLOAT)

    cal = ctx.config.calibration
    method = (cal.method or "minmax").lower()
    calibrate_mode = "max" if method in ("minmax", "max") else "percentile"
    note = "" if method in ("minmax", "max", "percentile") else f"nearest equivalent of autoq method {cal.method!r}"
    backend: dict[str, Any] = {"type": "tvm_vacc", "dtype": "fp16" if all_float else "int8"}
    if not all_float:
        backend["quantize"] = {
            "calibrate_mode": calibrate_mode,
            "quantize_per_channel": cal.granularity == "per_channel",
            "exclude_layers": excluded,
        }
    _, _, h, w = (tuple(ctx.input_shape) + (0, 0, 0, 0))[:4]
    data = {
        "name": ctx.label(),
        "frontend": {
            "shape": {ctx.input_name: [int(d) for d in ctx.input_shape]},
            "type": "onnx",
            "checkpoint": str(ctx.model_path),
            "dtype": "fp32",
        },
        "backend": backend,
        "dataset": {
            "path": calibration_dir or (str(ctx.calib_dir) if ctx.calib_dir is not None else "./calibration_data"),
            "sampler": {"suffix": image_suffix, "get_data_num": int(calibration_size)},
            "process_ops": [],
        },
        "workspace": {"path": workspace},
    }
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True, width=4096)
    body = _annotate(body, names, excluded, note)

    pre = ctx.preprocess
    counts = precision_counts(ctx)
    assumptions = [
        f"exclude_layers ids: {INDEXING} ({len(names)} nodes); each id is followed by an "
        "'# autoq-layer <i>: <node>' comment; check them against vamc's layer listing",
        "float nodes are kept fp16 by vamc (not fp32 on a CPU as autoq measured them)",
        f"dataset.process_ops is left empty: fill in vamc's ops for {pre.resize} to {h}x{w}, {pre.color}, "
        f"mean {list(pre.mean)} std {list(pre.std)}",
    ]
    if note:
        assumptions.append(f"calibrate_mode: {note}")
    if method == "percentile" and cal.percentile is not None:
        assumptions.append(f"vamc picks its own percentile; autoq used {cal.percentile}")
    header = header_lines(
        ctx,
        "Vastai vamc build config",
        counts=f"{counts['int8']} int8, {counts['float']} float (fp16 in exclude_layers)",
        assumptions=assumptions,
        run="vamc compile <this file>",
    )
    path = out_file(ctx, out, "_vamc.yaml")
    path.write_text(comment_block(header) + "\n" + body, encoding="utf-8")
    return [path]


def read_vastai(
    path: Path, *, node_names: Sequence[str] | None = None
) -> tuple[dict[str, Precision], dict[str, Any]]:
    """Parses a vamc YAML strictly.

    Returns (node -> float for each ``exclude_layers`` id, calibration). Ids are mapped to names by
    ``node_names`` (the quantizable nodes in graph order, see `INDEXING`) when given, else by the
    ``# autoq-layer`` comments; an id neither can name is an error. An all-fp16 backend yields
    ``{"default": float}`` and no nodes. Calibration has ``default``, ``calibrate_mode``,
    ``granularity`` and ``exclude_layers`` (the raw ids).
    """
    import yaml

    path = Path(path)
    where = f"vamc config {path}"
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{where}: cannot read it as YAML ({exc})") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("backend"), Mapping):
        raise ConfigError(f"{where}: expected name, frontend, backend, dataset")
    backend = data["backend"]
    dtype = backend.get("dtype")
    if dtype not in ("int8", "fp16"):
        raise ConfigError(f"{where}: backend.dtype {dtype!r} is not int8 or fp16")
    if dtype == "fp16":
        return {}, {"default": Precision.FLOAT, "calibrate_mode": None, "granularity": None, "exclude_layers": []}
    quantize = backend.get("quantize") or {}
    mode = quantize.get("calibrate_mode", "percentile")
    if mode not in ("percentile", "max"):
        raise ConfigError(f"{where}: calibrate_mode {mode!r} is not percentile or max")
    ids = quantize.get("exclude_layers") or []
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ConfigError(f"{where}: exclude_layers must be a list of integer layer ids")
    by_comment: dict[int, str] = {}
    for line in text.splitlines():
        m = _LAYER_COMMENT.match(line)
        if m:
            by_comment[int(m.group(1))] = m.group(2)
    nodes: dict[str, Precision] = {}
    for i in ids:
        if node_names is not None:
            if not 0 <= i < len(node_names):
                raise ConfigError(f"{where}: exclude_layers id {i} is outside the model's {len(node_names)} nodes")
            nodes[node_names[i]] = Precision.FLOAT
        elif i in by_comment:
            nodes[by_comment[i]] = Precision.FLOAT
        else:
            raise ConfigError(f"{where}: exclude_layers id {i} has no '# autoq-layer' comment; pass node_names")
    calibration = {
        "default": Precision.INT8,
        "calibrate_mode": mode,
        "granularity": "per_channel" if quantize.get("quantize_per_channel") else "per_tensor",
        "exclude_layers": list(ids),
    }
    return nodes, calibration


def _annotate(body: str, names: list[str], excluded: list[int], note: str) -> str:
    """Adds the index -> node comments after each exclude_layers item and the calibrate_mode note."""
    out: list[str] = []
    in_exclude = False
    for line in body.split("\n"):
        stripped = line.strip()
        if note and stripped.startswith("calibrate_mode:"):
            line = f"{line}  # {one_line(note)}"
        if stripped.startswith("exclude_layers:"):
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}# ids: {INDEXING}")
            out.append(line)
            in_exclude = True
            continue
        if in_exclude and re.match(r"^\s*-\s+\d+\s*$", line):
            i = int(stripped[1:].strip())
            out.append(line)
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}# autoq-layer {i}: {one_line(names[i])}")
            continue
        in_exclude = False
        out.append(line)
    return "\n".join(out)
