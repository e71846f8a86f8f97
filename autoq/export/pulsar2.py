"""Axera Pulsar2 (AX650 / AX620E / AX630C) build config, written as JSON for ``pulsar2 build``.

What a trial decides maps onto Pulsar2's ``quant`` section like this:

* int16 nodes -> ``layer_configs: [{"layer_name": "<node>", "data_type": "U16"}]``;
* float nodes -> ``{"layer_name": "<node>", "data_type": "FP32"}``;
* int8 is Pulsar2's default (U8) and is not listed; a trial whose default is int16 or float gets a
  first item over the whole graph (``start_tensor_names``/``end_tensor_names`` ``["DEFAULT"]``) with
  that type, and its int8 nodes are listed as U8;
* the range method -> ``calibration_method`` MinMax | Percentile | MSE | KL;
* the preprocessing mean/std -> ``input_configs[0].calibration_mean/std`` (0..255 pixel units, the
  model's colour order).

Pulsar2 reads its config into a protobuf schema, so unknown keys are errors: provenance and
assumptions go to a sidecar ``<file>.autoq.txt``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autoq.errors import ConfigError
from autoq.export.base import (
    EXPORTERS,
    ExportContext,
    check_choice,
    check_model_nodes,
    header_lines,
    out_file,
    precision_counts,
    provenance_sidecar,
)
from autoq.plan import Precision

__all__ = ["read_pulsar2", "write_pulsar2"]

TARGETS = ("AX650", "AX620E", "AX615")
NPU_MODES = ("NPU1", "NPU2", "NPU3")
CALIBRATION_FORMATS = ("Image", "Numpy", "Binary", "NumpyObject")
METHODS = ("MinMax", "Percentile", "MSE", "KL")
_DATA_TYPE = {Precision.INT8: "U8", Precision.INT16: "U16", Precision.FLOAT: "FP32"}
_FROM_TYPE = {"U8": Precision.INT8, "S8": Precision.INT8, "U16": Precision.INT16, "S16": Precision.INT16,
              "FP32": Precision.FLOAT}


@EXPORTERS.register("axera-pulsar2")
def write_pulsar2(
    ctx: ExportContext,
    out: Path,
    *,
    target_hardware: str = "AX650",
    npu_mode: str = "NPU1",
    calibration_dataset: str | None = None,
    calibration_format: str = "Image",
    calibration_size: int = 32,
    output_dir: str = "output",
    output_name: str | None = None,
) -> list[Path]:
    """Writes ``<label>_pulsar2.json`` and its ``.autoq.txt`` sidecar; returns both paths.

    ``calibration_dataset`` defaults to ``<calib_dir>.tar`` (Pulsar2 reads a tar of images).
    """
    check_choice("target_hardware", target_hardware, TARGETS)
    check_choice("npu_mode", npu_mode, NPU_MODES)
    check_choice("calibration_format", calibration_format, CALIBRATION_FORMATS)
    if calibration_size < 1:
        raise ConfigError("export option calibration_size must be >= 1")
    check_model_nodes(ctx)

    default = ctx.config.default
    layer_configs: list[dict[str, Any]] = []
    if default is not Precision.INT8:
        layer_configs.append(
            {"start_tensor_names": ["DEFAULT"], "end_tensor_names": ["DEFAULT"], "data_type": _DATA_TYPE[default]}
        )
    for name, p in ctx.assignment().items():
        if p is not default:
            layer_configs.append({"layer_name": name, "data_type": _DATA_TYPE[p]})

    cal = ctx.config.calibration
    method, note = _method(cal.method)
    pre = ctx.preprocess
    dataset = calibration_dataset or (f"{ctx.calib_dir}.tar" if ctx.calib_dir is not None else "./calibration.tar")
    quant: dict[str, Any] = {
        "input_configs": [
            {
                "tensor_name": "DEFAULT",
                "calibration_dataset": dataset,
                "calibration_format": calibration_format,
                "calibration_size": int(calibration_size),
                "calibration_mean": [float(m) for m in pre.mean],
                "calibration_std": [float(s) for s in pre.std],
            }
        ],
        "calibration_method": method,
    }
    if cal.method.lower() == "percentile" and cal.percentile is not None:
        note = (note + "; " if note else "") + (
            f"Pulsar2 picks its own percentile; autoq used {cal.percentile}")
    if layer_configs:
        quant["layer_configs"] = layer_configs
    name = output_name or f"{ctx.label()}.axmodel"
    data = {
        "model_type": "ONNX",
        "npu_mode": npu_mode,
        "target_hardware": target_hardware,
        "input": str(ctx.model_path),
        "output_dir": output_dir,
        "output_name": name,
        "quant": quant,
        "input_processors": [
            {"tensor_name": "DEFAULT", "tensor_format": pre.color.upper(), "src_format": pre.color.upper(),
             "src_dtype": "U8"}
        ],
    }

    _, _, h, w = (tuple(ctx.input_shape) + (0, 0, 0, 0))[:4]
    counts = precision_counts(ctx)
    assumptions = [
        f"layer_name values are node names of {ctx.model_path}",
        "int8 (U8) is Pulsar2's default and is not listed; per-layer items follow any whole-graph item "
        "and are assumed to take precedence over it",
        f"calibration images in {dataset} are {pre.color} {h}x{w} after autoq's {pre.resize}; Pulsar2 applies "
        "calibration_mean/std (0..255 units, model colour order) before feeding them",
        "weights: Pulsar2 chooses weight granularity itself; the trial's "
        f"({cal.granularity}) is not expressible here",
        "float nodes run as FP32 layers on the NPU (Pulsar2 has no CPU fallback per layer)",
    ]
    if note:
        assumptions.append(f"calibration_method: {note}")
    header = header_lines(
        ctx,
        "Pulsar2 build config (JSON)",
        counts=f"{counts['int8']} int8, {counts['int16']} int16 (U16), {counts['float']} float (FP32)",
        assumptions=assumptions,
        run=f"pulsar2 build --input {ctx.model_path} --output_dir {output_dir} --config <this file>",
    )
    path = out_file(ctx, out, "_pulsar2.json")
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return [path, provenance_sidecar(path, header)]


def read_pulsar2(path: Path) -> tuple[dict[str, Precision], dict[str, Any]]:
    """Parses a Pulsar2 JSON config strictly.

    Returns (layer_name -> precision of the ``layer_configs`` items naming one layer, calibration)
    where calibration has ``default`` (from a whole-graph ``DEFAULT`` item, else int8),
    ``calibration_method``, ``calibration_dataset``, ``calibration_size``, ``mean`` and ``std``.
    """
    path = Path(path)
    where = f"pulsar2 config {path}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read it as JSON ({exc})") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("quant"), Mapping):
        raise ConfigError(f"{where}: expected an object with a 'quant' section")
    if data.get("model_type", "ONNX") != "ONNX":
        raise ConfigError(f"{where}: model_type must be ONNX")
    quant = data["quant"]
    method = quant.get("calibration_method", "MinMax")
    if method not in METHODS:
        raise ConfigError(f"{where}: calibration_method {method!r} is not one of {', '.join(METHODS)}")
    nodes: dict[str, Precision] = {}
    default = Precision.INT8
    for i, item in enumerate(quant.get("layer_configs") or []):
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where}: quant.layer_configs[{i}] must be an object")
        dtype = item.get("data_type")
        if dtype not in _FROM_TYPE:
            raise ConfigError(f"{where}: quant.layer_configs[{i}].data_type {dtype!r} is not one of "
                              f"{', '.join(_FROM_TYPE)}")
        p = _FROM_TYPE[dtype]
        if item.get("start_tensor_names") == ["DEFAULT"] and item.get("end_tensor_names") == ["DEFAULT"]:
            default = p
        elif "layer_name" in item:
            nodes[str(item["layer_name"])] = p
        elif "layer_names" in item:
            for name in item["layer_names"]:
                nodes[str(name)] = p
    inputs = quant.get("input_configs") or [{}]
    first = inputs[0] if isinstance(inputs[0], Mapping) else {}
    calibration = {
        "default": default,
        "calibration_method": method,
        "calibration_dataset": first.get("calibration_dataset"),
        "calibration_size": first.get("calibration_size"),
        "mean": first.get("calibration_mean"),
        "std": first.get("calibration_std"),
    }
    return nodes, calibration


def _method(method: str) -> tuple[str, str]:
    m = (method or "minmax").lower()
    exact = {"minmax": "MinMax", "max": "MinMax", "percentile": "Percentile", "mse": "MSE", "kl": "KL",
             "entropy": "KL"}
    if m in exact:
        return exact[m], "" if m != "entropy" else "entropy -> KL"
    return "MinMax", f"nearest equivalent: autoq method {method!r} has no Pulsar2 counterpart; MinMax"
