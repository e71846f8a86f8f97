"""Rockchip RKNN-Toolkit2 hybrid quantization: the ``<name>.quantization.cfg`` layers section.

``rknn.hybrid_quantization_step1`` writes ``<name>.quantization.cfg`` (YAML) with
``custom_quantize_layers`` (edited by the user) and ``quantize_parameters`` (the ranges step1
computed); ``hybrid_quantization_step2`` builds from it. autoq writes the same file shape:

* ``custom_quantize_layers: {<output tensor name>: int16 | float16}`` — keyed by the OUTPUT tensor
  names of each node (a node with several outputs lists each); int16 -> ``int16``, float ->
  ``float16`` (RKNN has no float32 layers); int8 is RKNN's default (``quantized_dtype`` w8a8) and is
  not listed;
* ``quantize_parameters: {}`` — left empty: only step1 can fill it. Copy the
  ``custom_quantize_layers`` block into the cfg step1 wrote (or run step2 on this file after
  pasting step1's ``quantize_parameters`` into it).

The range method / granularity are ``rknn.config()`` arguments, not cfg fields: they are written in
the header as ``# rknn.config: quantized_algorithm=<a> quantized_method=<m>``, which `read_rknn` reads.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
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

__all__ = ["node_output_tensors", "read_rknn", "write_rknn"]

_TYPE = {Precision.INT16: "int16", Precision.FLOAT: "float16", Precision.INT8: "int8"}
_FROM_TYPE = {"int8": Precision.INT8, "int16": Precision.INT16, "float16": Precision.FLOAT}
_CONFIG_LINE = re.compile(r"^#\s*rknn\.config:\s*quantized_algorithm=(\S+)\s+quantized_method=(\S+)\s*$")


@EXPORTERS.register("rknn")
def write_rknn(ctx: ExportContext, out: Path, *, name: str | None = None) -> list[Path]:
    """Writes ``<name>.quantization.cfg`` (``name`` defaults to the trial label); returns ``[path]``."""
    import yaml

    check_model_nodes(ctx)
    outputs = node_output_tensors(ctx)
    assignment = ctx.assignment()
    layers: dict[str, str] = {}
    for node, p in assignment.items():
        if p is Precision.INT8:
            continue
        for tensor in outputs[node]:
            layers[tensor] = _TYPE[p]

    cal = ctx.config.calibration
    m = (cal.method or "minmax").lower()
    algorithm = {"minmax": "normal", "max": "normal", "mse": "mmse", "entropy": "kl_divergence",
                 "kl": "kl_divergence"}.get(m, "normal")
    note = "" if m in ("minmax", "max", "mse", "entropy", "kl") else (
        f"nearest equivalent: autoq method {cal.method!r} -> normal (min/max)")
    qmethod = "channel" if cal.granularity == "per_channel" else "layer"

    counts = precision_counts(ctx)
    label = name or ctx.label()
    assumptions = [
        f"keys are output tensor names of the nodes of {ctx.model_path}; RKNN's own graph optimisation may rename "
        "tensors: compare with the cfg step1 writes",
        "float nodes are written float16 (RKNN runs no float32 layers)",
        "int8 is the default (rknn.config quantized_dtype w8a8) and is not listed",
        "quantize_parameters is empty: only hybrid_quantization_step1 computes it; copy "
        "custom_quantize_layers into the cfg step1 wrote",
    ]
    if ctx.config.default is not Precision.INT8:
        assumptions.append(f"the trial's default is {ctx.config.default.value}: every such node is listed")
    if note:
        assumptions.append(f"quantized_algorithm: {note}")
    header = header_lines(
        ctx,
        "RKNN-Toolkit2 hybrid quantization cfg",
        counts=f"{counts['int8']} int8, {counts['int16']} int16, {counts['float']} float (float16)",
        assumptions=assumptions,
        run=(f"rknn.hybrid_quantization_step2(model_input='{label}.model', data_input='{label}.data', "
             f"model_quantization_cfg='{label}.quantization.cfg')"),
    )
    header.append(f"rknn.config: quantized_algorithm={algorithm} quantized_method={qmethod}")
    body = yaml.safe_dump({"custom_quantize_layers": layers}, sort_keys=False, default_flow_style=False,
                          allow_unicode=True, width=4096)
    body += "# filled by rknn.hybrid_quantization_step1; autoq leaves it empty (see the header)\n"
    body += "quantize_parameters: {}\n"
    out = Path(out)
    if out.is_dir() or not out.suffix:
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{label}.quantization.cfg"
    else:
        path = out_file(ctx, out, ".quantization.cfg")
    path.write_text(comment_block(header) + "\n" + body, encoding="utf-8")
    return [path]


def node_output_tensors(ctx: ExportContext) -> dict[str, tuple[str, ...]]:
    """Node -> output tensor names, from ``ctx.node_outputs`` or else read from ``ctx.model_path``."""
    if ctx.node_outputs is not None:
        outputs = {n: tuple(o) for n, o in ctx.node_outputs.items()}
    else:
        try:
            import onnx

            model = onnx.load(str(ctx.model_path), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - any load failure means "cannot name tensors"
            raise ExportError(
                f"rknn keys layers by output tensor names, and {ctx.model_path} cannot be read to find them ({exc})"
            ) from None
        outputs = {n.name: tuple(o for o in n.output if o) for n in model.graph.node}
    missing = [n for n in ctx.node_names if not outputs.get(n)]
    if missing:
        raise ExportError(f"no output tensor names for nodes {join_names(missing)} in {ctx.model_path}")
    return outputs


def read_rknn(
    path: Path, *, node_outputs: Mapping[str, tuple[str, ...]] | None = None
) -> tuple[dict[str, Precision], dict[str, Any]]:
    """Parses a ``.quantization.cfg`` strictly.

    Returns (key -> precision of ``custom_quantize_layers``, calibration). Keys are the tensor
    names as written, or node names when ``node_outputs`` (node -> output tensors) is given (every
    output of a node must then agree). Calibration has ``quantized_algorithm`` and
    ``quantized_method`` from the autoq header line (``None`` when absent) and
    ``quantize_parameters`` (the section as read).
    """
    import yaml

    path = Path(path)
    where = f"rknn cfg {path}"
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{where}: cannot read it as YAML ({exc})") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("custom_quantize_layers", {}), Mapping):
        raise ConfigError(f"{where}: expected custom_quantize_layers (a mapping) and quantize_parameters")
    unknown = set(data) - {"custom_quantize_layers", "quantize_parameters"}
    if unknown:
        raise ConfigError(f"{where}: unknown sections {sorted(unknown)}")
    tensors: dict[str, Precision] = {}
    for key, value in (data.get("custom_quantize_layers") or {}).items():
        if value not in _FROM_TYPE:
            raise ConfigError(f"{where}: layer {key!r} has type {value!r}, expected int8, int16 or float16")
        tensors[str(key)] = _FROM_TYPE[value]
    nodes: dict[str, Precision] = tensors
    if node_outputs is not None:
        nodes = {}
        by_tensor = {t: n for n, outs in node_outputs.items() for t in outs}
        for tensor, p in tensors.items():
            node = by_tensor.get(tensor)
            if node is None:
                raise ConfigError(f"{where}: tensor {tensor!r} is not an output of any node")
            if nodes.setdefault(node, p) is not p:
                raise ConfigError(f"{where}: outputs of node {node!r} have different types")
    algorithm = method = None
    for line in text.splitlines():
        m = _CONFIG_LINE.match(line.strip())
        if m:
            algorithm, method = m.group(1), m.group(2)
    calibration = {
        "quantized_algorithm": algorithm,
        "quantized_method": method,
        "quantize_parameters": data.get("quantize_parameters"),
    }
    return nodes, calibration
