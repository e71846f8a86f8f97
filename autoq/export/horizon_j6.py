"""Horizon J6 (nash) ``hb_compile`` bundle: config YAML + quant_config JSON + model + calibration.

``autoq export --format horizon-j6 -o DIR`` writes:

* ``<label>_quant_config.json``: what the trial decides, in hb_compile's quant_config::

    {"model_config": {"all_node_type": "int8", "model_output_type": "int8",
                      "activation": {"calibration_type": "max", "max_percentile": 0.9999}},
     "op_config": {},
     "node_config": {"<node>": {"qtype": "int16"}, "<node>": {"qtype": "float32"}}}

  the trial's default precision -> ``all_node_type``; every node whose precision differs ->
  ``node_config`` ``qtype`` (float nodes ``float32``, or ``float16`` with ``float_type="float16"``);
  ``model_output_type`` int8/int16/float32 only; the range method -> ``activation.calibration_type``
  (max, kl; + ``max_percentile``);
* ``<label>_hb_compile.yaml``: model/input/calibration/compiler parameters, with
  ``calibration_parameters.quant_config`` naming the JSON and ``cal_data_dir`` the tensors;
* ``model.onnx`` (the model's own opset) and ``calibration_data/NNNN.npy``: float32 1x3xHxW NCHW,
  the model's colour order, raw 0..255 pixels after autoq's resize (hb_compile applies mean/std
  from ``norm_type``);
* ``run.sh``: ``hb_compile --config <yaml>``; ``<json>.autoq.txt``: the provenance (JSON has no comments).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from autoq.errors import ConfigError
from autoq.export.base import (
    EXPORTERS,
    ExportContext,
    bundle_dir,
    calibration_images,
    check_choice,
    check_model_nodes,
    comment_block,
    header_lines,
    precision_counts,
    provenance_sidecar,
    write_run_script,
)
from autoq.export.horizon import (
    calibration_type,
    load_model,
    model_opset,
    norm_parameters,
    write_calibration_tensors,
)
from autoq.plan import Precision

__all__ = ["MARCHES", "read_horizon_j6", "write_horizon_j6"]

QTYPES = ("int8", "int16", "float16", "float32")
FLOAT_TYPES = ("float32", "float16")
OUTPUT_TYPES = ("int8", "int16", "float32")  # model_output_type: float16 is not accepted
CALIBRATION_TYPES = ("max", "kl", "load")  # Horizon's listed activation calibration types
MARCHES = ("nash-e", "nash-m", "nash-p", "nash-b", "nash-h")
MARCH_BY_TARGET = {"horizon-j6e": "nash-e", "horizon-j6m": "nash-m", "horizon-j6p": "nash-p",
                   "horizon-j6b": "nash-b", "horizon-j6h": "nash-h"}
INPUT_TYPES_RT = ("rgb", "bgr", "yuv444", "nv12")
OPTIMIZE_LEVELS = ("O0", "O1", "O2")


@EXPORTERS.register("horizon-j6")
def write_horizon_j6(
    ctx: ExportContext,
    out: Path,
    *,
    float_type: str = "float32",
    model_output_type: str | None = None,
    march: str | None = None,
    input_type_rt: str | None = None,
    optimize_level: str = "O2",
) -> list[Path]:
    """Writes the hb_compile bundle into the folder ``out``; returns its files, the JSON first.

    ``float_type`` is the qtype of float nodes (``float32`` = CPU, ``float16`` = nash BPU).
    ``model_output_type`` (int8, int16 or float32) defaults to ``all_node_type``, float32 for a float default.
    ``march`` defaults from ``ctx.target`` (horizon-j6e/m/p/b/h -> nash-e/m/p/b/h, else nash-e).
    ``input_type_rt`` defaults to the training colour order; ``optimize_level`` is O0..O2.
    """
    check_choice("float_type", float_type, FLOAT_TYPES)
    march = march or MARCH_BY_TARGET.get(ctx.target, "nash-e")
    check_choice("march", march, MARCHES)
    pre = ctx.preprocess
    type_rt = input_type_rt or pre.color
    check_choice("input_type_rt", type_rt, INPUT_TYPES_RT)
    check_choice("optimize_level", optimize_level, OPTIMIZE_LEVELS)
    check_model_nodes(ctx)
    qtype = {Precision.INT8: "int8", Precision.INT16: "int16", Precision.FLOAT: float_type}
    default = ctx.config.default
    all_type = qtype[default]
    output_type = model_output_type or (all_type if all_type in OUTPUT_TYPES else "float32")
    check_choice("model_output_type", output_type, OUTPUT_TYPES)
    model = load_model(ctx)
    images = calibration_images(ctx, "horizon-j6")

    assignment = ctx.assignment()
    node_config = {name: {"qtype": qtype[p]} for name, p in assignment.items() if p is not default}
    cal = ctx.config.calibration
    cal_type, max_percentile, note = calibration_type(cal.method, cal.percentile, "hb_compile")
    activation: dict[str, Any] = {"calibration_type": cal_type}
    if max_percentile is not None:
        activation["max_percentile"] = max_percentile
    data = {
        "model_config": {
            "all_node_type": all_type,
            "model_output_type": output_type,
            "activation": activation,
        },
        "op_config": {},
        "node_config": node_config,
    }

    folder = bundle_dir(out, "horizon-j6")
    label = ctx.label()
    model_path = folder / "model.onnx"
    model_path.write_bytes(model.SerializeToString())
    cal_files = write_calibration_tensors(images, pre, folder / "calibration_data", ".npy", npy=True)
    json_path = folder / f"{label}_quant_config.json"
    json_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    inputs: dict[str, Any] = {
        "input_name": ctx.input_name,
        "input_type_train": pre.color,
        "input_layout_train": "NCHW",
        "input_type_rt": type_rt,
    }
    if type_rt != "nv12":
        inputs["input_layout_rt"] = "NCHW"
    inputs["input_shape"] = "x".join(str(int(d)) for d in ctx.input_shape)
    inputs.update(norm_parameters(pre))
    config = {
        "model_parameters": {
            "onnx_model": f"./{model_path.name}",
            "march": march,
            "working_dir": "model_output",
            "output_model_file_prefix": label,
        },
        "input_parameters": inputs,
        "calibration_parameters": {"cal_data_dir": "./calibration_data", "quant_config": f"./{json_path.name}"},
        "compiler_parameters": {"optimize_level": optimize_level},
    }
    yaml_path = folder / f"{label}_hb_compile.yaml"
    command = f"hb_compile --config {yaml_path.name}"
    counts = precision_counts(ctx)
    _, _, h, w = (tuple(int(d) for d in ctx.input_shape) + (0, 0, 0, 0))[:4]
    assumptions = [
        f"march: {march}" + ("" if ctx.target in MARCH_BY_TARGET else f" (default; target {ctx.target} is not a J6)"),
        ("node names are those of model.onnx; hb_compile reports node_config names it cannot find (names of nodes "
        "it splits or fuses are those of its optimized_float_model.onnx)"),
        (f"all_node_type is the trial's default ({default.value}); node_config lists the "
        f"{len(node_config)} nodes that differ from it"),
        f"float nodes use qtype {float_type}" + (" (CPU)" if float_type == "float32" else " (nash BPU)"),
        f"model_output_type: {output_type} (hb_compile accepts int8, int16, float32)",
        ("weights: hb_compile quantizes weights itself; the trial's weight granularity "
        f"({cal.granularity}) has no quant_config key; activation.per_channel is left at hb_compile's default "
        "(false, per tensor, as autoq calibrated)"),
        (f"calibration_data/ holds {len(cal_files)} float32 1x3x{h}x{w} NCHW {pre.color} .npy tensors of autoq's "
        "calibration images after the same resize, before mean/std (applied by norm_type)"),
        f"model.onnx is ONNX opset {model_opset(model)}, as the trial's model",
    ]
    if note:
        assumptions.append(f"calibration_type: {note}")
    header = header_lines(
        ctx,
        "hb_compile (J6) config + quant_config",
        counts=f"{counts['int8']} int8, {counts['int16']} int16, {counts['float']} float",
        assumptions=assumptions,
        run=f"./run.sh   ({command})",
    )
    body = yaml.safe_dump(config, sort_keys=False, default_flow_style=False, allow_unicode=True, width=4096)
    yaml_path.write_text(comment_block(header) + "\n" + body, encoding="utf-8")
    side = provenance_sidecar(json_path, header)
    script = write_run_script(folder, [command], comment=[f"hb_compile {march} build of {label} written by autoq"])
    return [json_path, yaml_path, model_path, script, side, *cal_files]


def read_horizon_j6(path: Path) -> tuple[dict[str, Precision], dict[str, Any]]:
    """Parses a quant_config JSON (or the bundle folder holding one) strictly (only model_config,
    op_config and node_config).

    Returns (node -> precision of the nodes in ``node_config``, calibration) where calibration has
    ``default`` (the Precision of ``all_node_type``), ``model_output_type``, ``calibration_type`` and
    ``max_percentile``. float16/float32 read as float.
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*_quant_config.json"))
        if not found:
            raise ConfigError(f"hb_compile bundle {path}: no *_quant_config.json in it")
        path = found[0]
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"quant_config {path}: cannot read it ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"quant_config {path}: not valid JSON ({exc})") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"quant_config {path}: expected an object with model_config, op_config, node_config")
    unknown = set(data) - {"model_config", "op_config", "node_config"}
    if unknown:
        raise ConfigError(f"quant_config {path}: unknown keys {sorted(unknown)}")
    model = data.get("model_config") or {}
    all_type = model.get("all_node_type", "int8")
    default = _precision(all_type, path, "model_config.all_node_type")
    output_type = model.get("model_output_type", all_type)
    if output_type not in OUTPUT_TYPES:
        raise ConfigError(f"quant_config {path}: model_output_type {output_type!r} is not one of "
                          f"{', '.join(OUTPUT_TYPES)}")
    activation = model.get("activation") or {}
    cal_type = activation.get("calibration_type")
    candidates = cal_type if isinstance(cal_type, list) else [] if cal_type is None else [cal_type]
    bad = [c for c in candidates if c not in CALIBRATION_TYPES]
    if bad:
        raise ConfigError(f"quant_config {path}: calibration_type {bad[0]!r} is not one of {CALIBRATION_TYPES}")
    if isinstance(cal_type, list) and len(cal_type) == 1:
        cal_type = cal_type[0]
    nodes: dict[str, Precision] = {}
    node_config = data.get("node_config") or {}
    if not isinstance(node_config, Mapping):
        raise ConfigError(f"quant_config {path}: node_config must be an object")
    for name, spec in node_config.items():
        if not isinstance(spec, Mapping):
            raise ConfigError(f"quant_config {path}: node_config[{name!r}] must be an object")
        if "qtype" in spec:
            nodes[str(name)] = _precision(spec["qtype"], path, f"node_config[{name!r}].qtype")
        elif str(spec.get("ON", "")).upper() == "CPU":
            nodes[str(name)] = Precision.FLOAT
        else:
            raise ConfigError(f"quant_config {path}: node_config[{name!r}] has neither qtype nor ON")
    mp = activation.get("max_percentile")
    calibration = {
        "default": default,
        "model_output_type": output_type,
        "calibration_type": cal_type,
        "max_percentile": float(mp) if mp is not None else None,
    }
    return nodes, calibration


def _precision(qtype: object, path: Path, where: str) -> Precision:
    if qtype not in QTYPES:
        raise ConfigError(f"quant_config {path}: {where} {qtype!r} is not one of {', '.join(QTYPES)}")
    return {"int8": Precision.INT8, "int16": Precision.INT16}.get(str(qtype), Precision.FLOAT)
