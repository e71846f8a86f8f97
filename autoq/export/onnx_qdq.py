"""The trial's QDQ ONNX itself (``onnx-qdq``): what autoq evaluated, for ONNX Runtime, TensorRT
(explicit quantization) or any toolchain that imports QDQ models.

The model comes from ``ExportContext.qdq_model`` (built lazily by `autoq.export.run`); without it
the export fails with an ``ExportError``. ONNX has no comments, so provenance goes into the model's
``metadata_props`` (``autoq.study``, ``autoq.trial``, ``autoq.map_drop`` (0..1), ``autoq.map_drop_pt``, ``autoq.latency_ms``,
``autoq.target``, ``autoq.assumptions``) together with the per-node decision (``autoq.nodes``: node ->
precision, JSON, for the quantizable nodes) and ``autoq.calibration`` (JSON), which `read_onnx_qdq`
reads back and checks against the graph.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autoq.errors import ConfigError, ExportError
from autoq.export.base import (
    EXPORTERS,
    ExportContext,
    check_model_nodes,
    header_lines,
    out_file,
    precision_counts,
)
from autoq.plan import Precision

__all__ = ["read_onnx_qdq", "write_onnx_qdq"]

PREFIX = "autoq."


@EXPORTERS.register("onnx-qdq")
def write_onnx_qdq(ctx: ExportContext, out: Path) -> list[Path]:
    """Writes ``<label>_qdq.onnx`` with autoq's provenance in ``metadata_props``; returns ``[path]``."""
    import onnx

    if ctx.qdq_model is None:
        raise ExportError(
            "format onnx-qdq needs the trial's QDQ model, and this export context cannot build it; "
            "export through `autoq export` (which builds it from the project)"
        )
    check_model_nodes(ctx)
    try:
        model = onnx.load_from_string(ctx.qdq_model())
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken build is reported as one sentence
        raise ExportError(f"building the trial's QDQ model failed ({exc}); fix the trial or export another format") from None

    counts = precision_counts(ctx)
    cal = ctx.config.calibration
    lines = header_lines(
        ctx,
        "QDQ ONNX",
        counts=f"{counts['int8']} int8, {counts['int16']} int16, {counts['float']} float",
        assumptions=[
            "Q/DQ ranges are autoq's cached calibration ranges; no re-calibration is needed",
            "int16 activations use com.microsoft QuantizeLinear/DequantizeLinear before opset 21",
            "weights are int8 symmetric" + (", per channel" if cal.granularity == "per_channel" else ", per tensor"),
        ],
        run="python -c \"import onnxruntime as ort; ort.InferenceSession('<this file>')\"  or  "
            "trtexec --onnx=<this file> --int8 --fp16",
    )
    meta = {
        "study": ctx.study or "",
        "trial": "" if ctx.trial is None else str(ctx.trial),
        "map_drop": "" if ctx.map_drop is None else repr(float(ctx.map_drop)),
        "map_drop_pt": "" if ctx.map_drop is None else f"{100 * float(ctx.map_drop):.4f}",
        "latency_ms": "" if ctx.latency_ms is None else repr(float(ctx.latency_ms)),
        "target": ctx.target,
        "header": "\n".join(lines),
        "nodes": json.dumps({n: p.value for n, p in ctx.assignment().items()}, ensure_ascii=False),
        "calibration": json.dumps(
            {"granularity": cal.granularity, "method": cal.method, "percentile": cal.percentile}
        ),
    }
    kept = [p for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = PREFIX + key, value
    path = out_file(ctx, out, "_qdq.onnx")
    path.write_bytes(model.SerializeToString())
    return [path]


def read_onnx_qdq(path: Path) -> tuple[dict[str, Precision], dict[str, Any]]:
    """Loads an exported QDQ ONNX (checked with ``onnx.checker``) and reads autoq's metadata.

    Returns (node -> precision from ``autoq.nodes``, calibration from ``autoq.calibration`` plus
    ``qdq_nodes``: the number of QuantizeLinear/DequantizeLinear nodes). Every listed node must be
    in the graph.
    """
    import onnx

    path = Path(path)
    where = f"QDQ model {path}"
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"{where}: not a valid ONNX model ({exc})") from None
    meta = {p.key: p.value for p in model.metadata_props}
    if PREFIX + "nodes" not in meta:
        raise ConfigError(f"{where}: no autoq.nodes metadata; it was not exported by autoq")
    try:
        raw = json.loads(meta[PREFIX + "nodes"])
        calibration = json.loads(meta.get(PREFIX + "calibration", "{}"))
        nodes = {str(n): Precision(v) for n, v in raw.items()}
    except (json.JSONDecodeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{where}: malformed autoq metadata ({exc})") from None
    names = {n.name for n in model.graph.node}
    missing = sorted(set(nodes) - names)
    if missing:
        raise ConfigError(f"{where}: autoq.nodes names nodes the graph does not have: {missing[:8]}")
    calibration["qdq_nodes"] = sum(
        1 for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
    )
    return nodes, calibration
