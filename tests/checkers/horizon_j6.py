"""Strict checker of an hb_compile (J6, nash) bundle: YAML config + quant_config JSON + model + data.

Written from the vendor's documented rules, independent of autoq's exporter:

[QC]  J6/S100 OE doc "The quant_config Introduction" (hb_compile/quant_config.html): levels model_config,
      op_config, subgraph_config, node_config; computation types int8/int16/float16
[OE]  HorizonRobotics/OE-Skills horizon/skills/hmct/j6-hmct-cosine-similarity-tuning/SKILL.md and
      horizon/docs/oe_code_chunk_hmct.md: model_config {all_node_type, model_output_type, activation
      {calibration_type (max, kl, load), max_percentile, per_channel, asymmetric}, weight, search}; qtypes
[CF]  /work/shared/docs/compiler-formats.md ("What the tools enforce": hb_compile quant_config (J6):
      model_output_type int8/int16/float32, qtype int8/int16/float16/float32)
[MZ]  D-Robotics/rdk_model_zoo (S100 hb_compile calibration: float32 .npy tensors)
[RD]  the hb_mapper YAML groups, which hb_compile's YAML keeps (model/input/calibration/compiler_parameters)

``check(bundle_dir) -> list[str]``: every violation as one line, ``[]`` when the bundle is valid.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import yaml

TOP_KEYS = {"model_config", "op_config", "subgraph_config", "node_config"}  # [QC]
MODEL_CONFIG_KEYS = {"all_node_type", "model_output_type", "activation", "weight", "search"}  # [OE]
ACTIVATION_KEYS = {"calibration_type", "max_percentile", "per_channel", "asymmetric"}  # [OE]
QTYPES = {"int8", "int16", "float16", "float32"}  # [CF]
OUTPUT_TYPES = {"int8", "int16", "float32"}  # [CF]: float16 is not accepted
CALIBRATION_TYPES = {"max", "kl", "load"}  # [OE] "可选值参考 HMCT：max、kl、load"
NODE_KEYS = re.compile(r"^(qtype|ON|input\d+|InputType\d*|OutputType)$")
GROUPS = {"model_parameters", "input_parameters", "calibration_parameters", "compiler_parameters"}
MARCHES = {"nash-e", "nash-m", "nash-p", "nash-b", "nash-h"}
NORM_TYPES = {"data_mean_and_scale", "data_mean", "data_scale", "no_preprocess"}


def check(bundle_dir: Path) -> list[str]:
    bundle = Path(bundle_dir)
    errors: list[str] = []
    yamls = sorted(bundle.glob("*.yaml"))
    if len(yamls) != 1:
        return [f"bundle: expected exactly one hb_compile .yaml in {bundle}, found {len(yamls)}"]
    cfg_path = yamls[0]
    try:
        cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        return [f"{cfg_path.name}: not valid YAML ({exc})"]
    if not isinstance(cfg, dict):
        return [f"{cfg_path.name}: top level must be a mapping of parameter groups"]
    for g in cfg:
        if g not in GROUPS:
            errors.append(f"{cfg_path.name}: unknown group {g!r} [RD]")
    for g in ("model_parameters", "input_parameters", "calibration_parameters"):
        if not isinstance(cfg.get(g), dict):
            errors.append(f"{cfg_path.name}: group {g} missing [RD]")
    model_p = cfg.get("model_parameters") or {}
    input_p = cfg.get("input_parameters") or {}
    calib_p = cfg.get("calibration_parameters") or {}

    if model_p.get("march") not in MARCHES:
        errors.append(f"model_parameters.march: {model_p.get('march')!r} is not a nash march {sorted(MARCHES)}")
    model = None
    onnx_rel = model_p.get("onnx_model")
    onnx_path = _inside(bundle, onnx_rel) if isinstance(onnx_rel, str) else None
    if onnx_path is None or not onnx_path.is_file():
        errors.append(f"model_parameters.onnx_model: {onnx_rel!r} is not a model file inside the bundle")
    else:
        import onnx

        try:
            model = onnx.load(str(onnx_path))
        except Exception as exc:  # noqa: BLE001
            errors.append(f"model_parameters.onnx_model: not loadable ({exc})")
    names: set[str] = set()
    op_types: set[str] = set()
    model_shape = None
    if model is not None:
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        if opset < 10:
            errors.append(f"onnx_model: opset {opset} is below 10")
        names = {n.name for n in model.graph.node}
        op_types = {n.op_type for n in model.graph.node}
        inits = {t.name for t in model.graph.initializer}
        shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim]
                  for i in model.graph.input if i.name not in inits}
        name = input_p.get("input_name")
        if name and name not in shapes:
            errors.append(f"input_parameters.input_name: {name!r} is not an input of the model")
        model_shape = shapes.get(name) if name else next(iter(shapes.values()), None)
    shape_text = input_p.get("input_shape")
    shape = [int(v) for v in shape_text.split("x")] if isinstance(shape_text, str) and re.fullmatch(
        r"\d+(x\d+)*", shape_text) else None
    if shape_text is not None and shape is None:
        errors.append(f"input_parameters.input_shape: {shape_text!r} is not 'NxCxHxW'")
    if shape and model_shape and all(d > 0 for d in model_shape) and shape != model_shape:
        errors.append(f"input_parameters.input_shape: {shape_text} does not match the model's {model_shape}")
    shape = shape or model_shape
    if input_p.get("norm_type") not in NORM_TYPES:
        errors.append(f"input_parameters.norm_type: {input_p.get('norm_type')!r} is not one of {sorted(NORM_TYPES)}")

    # ---- quant_config JSON
    qc_rel = calib_p.get("quant_config")
    qc_path = _inside(bundle, qc_rel) if isinstance(qc_rel, str) else None
    if qc_path is None or not qc_path.is_file():
        errors.append(f"calibration_parameters.quant_config: {qc_rel!r} is not a JSON file inside the bundle")
    else:
        try:
            qc = json.loads(qc_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            errors.append(f"{qc_path.name}: not valid JSON ({exc})")
        else:
            errors += _check_quant_config(qc, names, op_types, model is not None, qc_path.name)

    # ---- calibration data
    if "cal_data_type" in calib_p:
        errors.append("calibration_parameters.cal_data_type: hb_compile reads .npy tensors (no cal_data_type)")
    rel = calib_p.get("cal_data_dir")
    folder = _inside(bundle, rel) if isinstance(rel, str) else None
    if folder is None or not folder.is_dir():
        errors.append(f"calibration_parameters.cal_data_dir: {rel!r} is not a folder inside the bundle")
    else:
        files = sorted(p for p in folder.iterdir() if p.is_file())
        if not files:
            errors.append(f"calibration_parameters.cal_data_dir: {rel} holds no tensors")
        for f in files:
            if f.suffix != ".npy":
                errors.append(f"cal_data_dir/{f.name}: not a .npy tensor [MZ]")
                continue
            x = np.load(f)
            if x.dtype != np.float32:
                errors.append(f"cal_data_dir/{f.name}: dtype {x.dtype}, expected float32 [MZ]")
            if shape and list(x.shape) != list(shape):
                errors.append(f"cal_data_dir/{f.name}: shape {list(x.shape)} is not the input shape {shape}")
            if input_p.get("input_type_train") in ("rgb", "bgr") and x.size and (x.min() < 0 or x.max() > 255):
                errors.append(f"cal_data_dir/{f.name}: values outside 0..255; mean/scale belong to norm_type")

    script = bundle / "run.sh"
    if not script.is_file() or not os.access(script, os.X_OK):
        errors.append("run.sh: missing or not executable")
    else:
        line = next((ln.split() for ln in script.read_text().splitlines() if ln.strip().startswith("hb_compile")), [])
        cfg_arg = next((line[i + 1] for i, w in enumerate(line[:-1]) if w in ("--config", "-c")), None)
        if not line or cfg_arg is None or Path(cfg_arg).name != cfg_path.name:
            errors.append(f"run.sh: needs 'hb_compile --config {cfg_path.name}'")
    return errors


def _check_quant_config(qc: Any, names: set[str], op_types: set[str], have_model: bool, where: str) -> list[str]:
    if not isinstance(qc, dict):
        return [f"{where}: top level must be an object"]
    errors = [f"{where}: unknown top-level key {k!r} (allowed: {sorted(TOP_KEYS)}) [QC]" for k in qc if k not in TOP_KEYS]
    mc = qc.get("model_config") or {}
    if not isinstance(mc, dict):
        return [*errors, f"{where}: model_config must be an object"]
    errors += [f"{where}: model_config.{k}: unknown key [OE]" for k in mc if k not in MODEL_CONFIG_KEYS]
    if "all_node_type" in mc and mc["all_node_type"] not in QTYPES:
        errors.append(f"{where}: all_node_type {mc['all_node_type']!r} is not one of {sorted(QTYPES)} [CF]")
    if "model_output_type" in mc and mc["model_output_type"] not in OUTPUT_TYPES:
        errors.append(f"{where}: model_output_type {mc['model_output_type']!r} is not one of "
                      f"{sorted(OUTPUT_TYPES)} [CF]")
    act = mc.get("activation") or {}
    if not isinstance(act, dict):
        errors.append(f"{where}: model_config.activation must be an object")
        act = {}
    errors += [f"{where}: activation.{k}: unknown key [OE]" for k in act if k not in ACTIVATION_KEYS]
    if "calibration_type" in act:
        ct = act["calibration_type"]
        for c in ct if isinstance(ct, list) else [ct]:
            if c not in CALIBRATION_TYPES:
                errors.append(f"{where}: activation.calibration_type {c!r} is not one of "
                              f"{sorted(CALIBRATION_TYPES)} [OE]")
    if "max_percentile" in act:
        mp = act["max_percentile"]
        if not isinstance(mp, float) or not 0.0 < mp <= 1.0:
            errors.append(f"{where}: activation.max_percentile {mp!r} is not a float in (0, 1] [CF]")
    for key in ("per_channel", "asymmetric"):
        v = act.get(key)
        if v is not None and not (isinstance(v, bool) or (isinstance(v, list) and all(isinstance(b, bool) for b in v))):
            errors.append(f"{where}: activation.{key} must be true/false (or a list of them) [OE]")
    oc = qc.get("op_config") or {}
    if not isinstance(oc, dict):
        errors.append(f"{where}: op_config must be an object")
        oc = {}
    for op, spec in oc.items():
        if have_model and op not in op_types:
            errors.append(f"{where}: op_config[{op!r}]: the model has no op of that type")
        errors += _check_spec(spec, f"op_config[{op!r}]", where)
    nc = qc.get("node_config") or {}
    if not isinstance(nc, dict):
        return [*errors, f"{where}: node_config must be an object"]
    for name, spec in nc.items():
        if have_model and name not in names:
            errors.append(f"{where}: node_config[{name!r}]: not a node of the model")
        errors += _check_spec(spec, f"node_config[{name!r}]", where)
    return errors


def _check_spec(spec: Any, what: str, where: str) -> list[str]:
    if not isinstance(spec, dict) or not spec:
        return [f"{where}: {what} must be a non-empty object"]
    errors = []
    for k, v in spec.items():
        if not NODE_KEYS.match(str(k)):
            errors.append(f"{where}: {what}.{k}: unknown key")
        elif k == "ON" and v not in ("BPU", "CPU"):
            errors.append(f"{where}: {what}.ON {v!r} is not BPU or CPU")
        elif k != "ON" and v not in QTYPES | {"dual-int16"}:
            errors.append(f"{where}: {what}.{k} {v!r} is not one of {sorted(QTYPES)} [CF]")
    return errors


def _inside(bundle: Path, rel: str) -> Path | None:
    if os.path.isabs(rel):
        return None
    path = (bundle / rel).resolve()
    try:
        path.relative_to(bundle.resolve())
    except ValueError:
        return None
    return path
