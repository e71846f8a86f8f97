"""Strict checker of an hb_mapper ``makertbin`` bundle (X3 bernoulli2 / J5 bayes / X5 bayes-e).

Written from the vendor's documented rules, independent of autoq's exporter:

[RD]  D-Robotics/rdk_doc docs/07_Advanced_development/04_toolchain_development/intermediate/ptq_process.md
      (yaml template and parameter tables; "准备校准数据"; "转换内部过程解读"; int16 / node_info notes)
[MZ]  D-Robotics/rdk_model_zoo demos/detect/YOLO11/ptq_yamls/yolo11_detect_bayese_640x640_nchw.yaml and the
      model zoo's calibration script (raw float32 NCHW ``.rgbchw`` via ``tofile``, no mean/scale applied)
[CF]  /work/shared/docs/compiler-formats.md ("What the tools enforce": hb_mapper)

``check(bundle_dir) -> list[str]``: every violation as one line, ``[]`` when the bundle is valid.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import yaml

GROUPS_REQUIRED = ("model_parameters", "input_parameters", "calibration_parameters", "compiler_parameters")  # [RD]
GROUPS = (*GROUPS_REQUIRED, "custom_op")
MODEL_KEYS = {"prototxt", "caffe_model", "onnx_model", "march", "output_model_file_prefix", "working_dir",
              "layer_out_dump", "output_nodes", "remove_node_type", "remove_node_name", "set_node_data_type",
              "debug_mode", "node_info"}
INPUT_KEYS = {"input_name", "input_type_train", "input_layout_train", "input_type_rt", "input_layout_rt",
              "input_space_and_range", "input_shape", "input_batch", "norm_type", "mean_value", "scale_value"}
CALIB_KEYS = {"cal_data_dir", "cal_data_type", "preprocess_on", "calibration_type", "max_percentile",
              "per_channel", "run_on_cpu", "run_on_bpu", "optimization"}
COMPILER_KEYS = {"compile_mode", "debug", "core_num", "optimize_level", "input_source", "max_time_per_fc", "jobs"}
MARCHES = {"bernoulli2", "bayes", "bayes-e"}
TARGET_MARCH = {"horizon-x3": "bernoulli2", "horizon-j5": "bayes", "horizon-x5": "bayes-e"}
TYPES_TRAIN = {"rgb", "bgr", "yuv444", "gray", "featuremap"}
TYPES_RT = {"rgb", "bgr", "yuv444", "nv12", "gray", "featuremap"}
# [RD] "input_type_train \\ input_type_rt" table: the combinations hb_mapper opens
TRAIN_RT = {"yuv444": {"nv12", "yuv444"}, "rgb": {"nv12", "yuv444", "rgb", "bgr"},
            "bgr": {"nv12", "yuv444", "rgb", "bgr"}, "gray": {"gray"}, "featuremap": {"featuremap"}}
LAYOUTS = {"NCHW", "NHWC"}
NORM_TYPES = {"data_mean_and_scale", "data_mean", "data_scale", "no_preprocess"}
CAL_DATA_TYPES = {"float32": np.float32, "uint8": np.uint8}
CALIBRATION_TYPES = {"default", "mix", "kl", "max", "load", "skip"}
OPTIMIZATIONS = {"bernoulli2": {"set_model_output_int8"},
                 "bayes": {"set_model_output_int8", "set_model_output_int16"},
                 "bayes-e": {"set_model_output_int8", "set_model_output_int16"}}
ONNX_OPSETS = {10, 11}  # [RD] "ir_version≤7, opset=10、opset=11"
NODE_INFO_TYPES = {"int8", "int16"}
_INFO_KEY = re.compile(r"^(ON|InputType\d*|OutputType)$")


def check(bundle_dir: Path, *, target: str | None = None) -> list[str]:
    """Every rule the bundle breaks, one line each. ``target`` (e.g. ``horizon-x3``) defaults to the
    ``target:`` the config's header comment names, if any."""
    bundle = Path(bundle_dir)
    errors: list[str] = []
    yamls = sorted(p for p in bundle.glob("*.yaml"))
    if len(yamls) != 1:
        return [f"bundle: expected exactly one .yaml config in {bundle}, found {len(yamls)}"]
    cfg_path = yamls[0]
    text = cfg_path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return [f"{cfg_path.name}: not valid YAML ({exc})"]
    if not isinstance(data, dict):
        return [f"{cfg_path.name}: top level must be a mapping of parameter groups"]
    for g in GROUPS_REQUIRED:
        if not isinstance(data.get(g), dict):
            errors.append(f"{g}: required group missing or not a mapping [RD: all four groups must exist]")
    for g in data:
        if g not in GROUPS:
            errors.append(f"{g}: unknown group (allowed: {', '.join(GROUPS)}) [RD]")
    model_p = data.get("model_parameters") or {}
    input_p = data.get("input_parameters") or {}
    calib_p = data.get("calibration_parameters") or {}
    comp_p = data.get("compiler_parameters") or {}
    for group, keys, allowed in (("model_parameters", model_p, MODEL_KEYS), ("input_parameters", input_p, INPUT_KEYS),
                                 ("calibration_parameters", calib_p, CALIB_KEYS),
                                 ("compiler_parameters", comp_p, COMPILER_KEYS)):
        for k in keys if isinstance(keys, dict) else {}:
            if k not in allowed:
                errors.append(f"{group}.{k}: unknown key [RD parameter tables]")

    # ---- model_parameters
    march = model_p.get("march")
    if march not in MARCHES:
        errors.append(f"model_parameters.march: {march!r} is not one of {sorted(MARCHES)} [RD]")
    if target is None:
        m = re.search(r"^#.*\btarget:\s*([\w.-]+)", text, re.MULTILINE)
        target = m.group(1).rstrip(";") if m else None
    if target in TARGET_MARCH and march != TARGET_MARCH[target]:
        errors.append(f"model_parameters.march: {march!r} does not match target {target} ({TARGET_MARCH[target]})")
    if not model_p.get("output_model_file_prefix"):
        errors.append("model_parameters.output_model_file_prefix: required [RD]")
    model = None
    onnx_rel = model_p.get("onnx_model")
    if not isinstance(onnx_rel, str) or not onnx_rel:
        errors.append("model_parameters.onnx_model: required for --model-type onnx [RD]")
    else:
        onnx_path = _inside(bundle, onnx_rel)
        if onnx_path is None:
            errors.append(f"model_parameters.onnx_model: {onnx_rel!r} must be a relative path inside the bundle")
        elif not onnx_path.is_file():
            errors.append(f"model_parameters.onnx_model: {onnx_rel} does not exist in the bundle")
        else:
            import onnx

            try:
                model = onnx.load(str(onnx_path))
            except Exception as exc:  # noqa: BLE001
                errors.append(f"model_parameters.onnx_model: {onnx_rel} is not a loadable ONNX model ({exc})")
    names: set[str] = set()
    graph_inputs: dict[str, list[int]] = {}
    if model is not None:
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        if opset not in ONNX_OPSETS:
            errors.append(f"onnx_model: opset {opset} is not accepted (hb_mapper: opset 10 or 11) [RD]")
        if model.ir_version > 7:
            errors.append(f"onnx_model: ir_version {model.ir_version} > 7 [RD]")
        names = {n.name for n in model.graph.node}
        inits = {t.name for t in model.graph.initializer}
        graph_inputs = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim]
                        for i in model.graph.input if i.name not in inits}
    info = model_p.get("node_info")
    if info is not None:
        if march == "bernoulli2":
            errors.append("model_parameters.node_info: not supported on bernoulli2 (X3); use run_on_cpu/run_on_bpu [RD]")
        errors += _check_node_info(info, names, model is not None)

    # ---- input_parameters
    t_train = input_p.get("input_type_train")
    t_rt = input_p.get("input_type_rt")
    if t_train not in TYPES_TRAIN:
        errors.append(f"input_parameters.input_type_train: {t_train!r} is not one of {sorted(TYPES_TRAIN)} [RD]")
    if t_rt not in TYPES_RT:
        errors.append(f"input_parameters.input_type_rt: {t_rt!r} is not one of {sorted(TYPES_RT)} [RD]")
    elif t_train in TRAIN_RT and t_rt not in TRAIN_RT[t_train]:
        errors.append(f"input_parameters: input_type_rt {t_rt} cannot feed input_type_train {t_train} [RD table]")
    layout_train = input_p.get("input_layout_train")
    if layout_train not in LAYOUTS:
        errors.append(f"input_parameters.input_layout_train: {layout_train!r} is not NCHW or NHWC (required) [RD]")
    if "input_layout_rt" in input_p and input_p["input_layout_rt"] not in LAYOUTS:
        errors.append(f"input_parameters.input_layout_rt: {input_p['input_layout_rt']!r} is not NCHW or NHWC [RD]")
    if t_rt != "nv12" and "input_layout_rt" not in input_p:
        errors.append("input_parameters.input_layout_rt: needed unless input_type_rt is nv12 [RD]")
    if march == "bernoulli2" and t_rt == "yuv444" and input_p.get("input_layout_rt") == "NCHW":
        errors.append("input_parameters: X3 does not support input_type_rt yuv444 with input_layout_rt NCHW [RD]")
    if "input_space_and_range" in input_p and input_p["input_space_and_range"] not in ("regular", "bt601_video"):
        errors.append("input_parameters.input_space_and_range: must be regular or bt601_video [RD]")
    in_name = input_p.get("input_name")
    if graph_inputs and in_name not in (None, "") and in_name not in graph_inputs:
        errors.append(f"input_parameters.input_name: {in_name!r} is not an input of the model")
    shape = _shape(input_p.get("input_shape"))
    if input_p.get("input_shape") is not None and shape is None:
        errors.append(f"input_parameters.input_shape: {input_p.get('input_shape')!r} is not 'NxCxHxW' [RD]")
    model_shape = graph_inputs.get(in_name) if in_name else next(iter(graph_inputs.values()), None)
    if shape is not None and model_shape and all(d > 0 for d in model_shape) and list(shape) != model_shape:
        errors.append(f"input_parameters.input_shape: {'x'.join(map(str, shape))} does not match the model's "
                      f"{'x'.join(map(str, model_shape))}")
    if shape is None:
        shape = tuple(model_shape) if model_shape and all(d > 0 for d in model_shape) else None
    if shape is not None:
        if len(shape) != 4 or shape[0] != 1:
            errors.append(f"input shape {shape}: hb_mapper takes fixed 4-D inputs with N=1 [RD]")
        elif t_rt in ("nv12", "yuv444"):
            hw = shape[2:] if layout_train == "NCHW" else shape[1:3]
            if any(d % 2 for d in hw):
                errors.append(f"input_parameters: input_type_rt {t_rt} needs even H and W, got {hw} [RD]")
    norm = input_p.get("norm_type")
    if norm not in NORM_TYPES:
        errors.append(f"input_parameters.norm_type: {norm!r} is not one of {sorted(NORM_TYPES)} (required) [RD]")
    channels = shape[1] if shape is not None and layout_train == "NCHW" else shape[3] if shape is not None else None
    for key, needed in (("mean_value", norm in ("data_mean_and_scale", "data_mean")),
                        ("scale_value", norm in ("data_mean_and_scale", "data_scale"))):
        value = input_p.get(key)
        if needed and value is None:
            errors.append(f"input_parameters.{key}: required with norm_type {norm} [RD]")
        if not needed and value is not None:
            errors.append(f"input_parameters.{key}: set although norm_type {norm} does not use it [RD]")
        if value is not None:
            nums = _numbers(value)
            if nums is None:
                errors.append(f"input_parameters.{key}: {value!r} is not space-separated numbers [RD]")
            elif channels and len(nums) not in (1, channels):
                errors.append(f"input_parameters.{key}: {len(nums)} values; need 1 or {channels} [RD]")

    # ---- calibration_parameters
    cal_type = calib_p.get("calibration_type")
    if cal_type not in CALIBRATION_TYPES:
        errors.append(f"calibration_parameters.calibration_type: {cal_type!r} is not one of "
                      f"{sorted(CALIBRATION_TYPES)} (required) [RD]")
    if "max_percentile" in calib_p:
        mp = calib_p["max_percentile"]
        if not isinstance(mp, (int, float)) or isinstance(mp, bool) or not 0.0 <= float(mp) <= 1.0:
            errors.append(f"calibration_parameters.max_percentile: {mp!r} is not a number in 0.0..1.0 [RD]")
        if cal_type != "max":
            errors.append("calibration_parameters.max_percentile: only used with calibration_type max [RD]")
    for key in ("per_channel", "preprocess_on"):
        if key in calib_p and not isinstance(calib_p[key], bool):
            errors.append(f"calibration_parameters.{key}: must be True or False [RD]")
    for key in ("run_on_cpu", "run_on_bpu"):
        if key in calib_p:
            value = calib_p[key]
            if not isinstance(value, str):
                errors.append(f"calibration_parameters.{key}: multiple values are one ';'-joined string [RD]")
            elif model is not None:
                missing = [n.strip() for n in value.split(";") if n.strip() and n.strip() not in names]
                if missing:
                    errors.append(f"calibration_parameters.{key}: not nodes of the model: {', '.join(missing[:5])}")
            if march in ("bayes", "bayes-e"):
                pass  # still accepted on bayes, documented as merged into node_info
    if "optimization" in calib_p:
        allowed = OPTIMIZATIONS.get(march, set())
        for item in str(calib_p["optimization"]).replace(",", ";").split(";"):
            if item.strip() and item.strip() not in allowed:
                errors.append(f"calibration_parameters.optimization: {item.strip()} not allowed on {march} [RD]")
    cal_data_type = calib_p.get("cal_data_type")
    if cal_data_type is not None and cal_data_type not in CAL_DATA_TYPES:
        errors.append(f"calibration_parameters.cal_data_type: {cal_data_type!r} is not float32 or uint8 [RD]")
    if cal_type not in ("load", "skip"):
        errors += _check_cal_data(bundle, calib_p, cal_data_type, shape, t_train)

    # ---- compiler_parameters
    if comp_p.get("compile_mode") not in ("latency", "bandwidth"):
        errors.append(f"compiler_parameters.compile_mode: {comp_p.get('compile_mode')!r} is not latency or "
                      "bandwidth (required) [RD]")
    if comp_p.get("optimize_level") not in ("O0", "O1", "O2", "O3"):
        errors.append(f"compiler_parameters.optimize_level: {comp_p.get('optimize_level')!r} is not O0..O3 "
                      "(required) [RD]")
    if "core_num" in comp_p:
        if comp_p["core_num"] not in (1, 2):
            errors.append("compiler_parameters.core_num: must be 1 or 2 [RD]")
        if march == "bayes":
            errors.append("compiler_parameters.core_num: not supported on bayes (RDK Ultra/J5) [RD]")
    if "debug" in comp_p and not isinstance(comp_p["debug"], bool):
        errors.append("compiler_parameters.debug: must be True or False [RD]")

    errors += _check_run_script(bundle, cfg_path.name)
    return errors


def _check_node_info(info: Any, names: set[str], have_model: bool) -> list[str]:
    errors = []
    if isinstance(info, str):
        for item in info.split(";"):
            if not item.strip():
                continue
            name, sep, kind = item.strip().rpartition(":")
            if not sep or kind.strip() not in NODE_INFO_TYPES:
                errors.append(f"model_parameters.node_info: {item.strip()!r} is not 'node:int16' [RD]")
            elif have_model and name.strip() not in names:
                errors.append(f"model_parameters.node_info: {name.strip()!r} is not a node of the model")
        return errors
    if not isinstance(info, dict):
        return ["model_parameters.node_info: must be a mapping or a 'n1:int16;n2:int16' string [RD]"]
    for name, spec in info.items():
        if have_model and name not in names:
            errors.append(f"model_parameters.node_info: {name!r} is not a node of the model")
        if not isinstance(spec, dict) or not spec:
            errors.append(f"model_parameters.node_info[{name!r}]: must be a mapping such as {{ON: BPU}} [RD]")
            continue
        for key, value in spec.items():
            if not _INFO_KEY.match(str(key)):
                errors.append(f"model_parameters.node_info[{name!r}]: unknown key {key!r} (ON, InputType[N], "
                              "OutputType; no OutputType0) [RD]")
            elif key == "ON" and value not in ("BPU", "CPU"):
                errors.append(f"model_parameters.node_info[{name!r}].ON: {value!r} is not BPU or CPU [RD]")
            elif key != "ON" and value not in NODE_INFO_TYPES:
                errors.append(f"model_parameters.node_info[{name!r}].{key}: {value!r} is not int8 or int16 [RD]")
        if spec.get("ON") == "CPU" and any(k != "ON" for k in spec):
            errors.append(f"model_parameters.node_info[{name!r}]: a CPU node takes no int16 types")
    return errors


def _check_cal_data(bundle: Path, calib_p: dict, cal_data_type: Any, shape: Any, t_train: Any) -> list[str]:
    rel = calib_p.get("cal_data_dir")
    if not isinstance(rel, str) or not rel:
        return ["calibration_parameters.cal_data_dir: required unless calibration_type is load or skip [RD]"]
    folder = _inside(bundle, rel)
    if folder is None:
        return [f"calibration_parameters.cal_data_dir: {rel!r} must be a relative path inside the bundle"]
    if not folder.is_dir():
        return [f"calibration_parameters.cal_data_dir: {rel} does not exist in the bundle"]
    files = sorted(p for p in folder.iterdir() if p.is_file())
    if not files:
        return [f"calibration_parameters.cal_data_dir: {rel} holds no calibration files"]
    if calib_p.get("preprocess_on"):
        return []  # image files, resized by hb_mapper [RD]
    if cal_data_type is None:  # [RD]: the folder suffix decides: _f32 -> float32, else uint8
        cal_data_type = "float32" if folder.name.endswith("_f32") else "uint8"
    dtype = CAL_DATA_TYPES.get(cal_data_type)
    if dtype is None or shape is None:
        return []
    errors = []
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    for f in files:
        size = f.stat().st_size
        if size != expected:
            errors.append(f"cal_data_dir/{f.name}: {size} bytes; one {'x'.join(map(str, shape))} {cal_data_type} "
                          f"tensor is {expected} [RD: binary tensor of input_shape at cal_data_type]")
            continue
        x = np.fromfile(f, dtype=dtype)
        if dtype == np.float32 and not np.all(np.isfinite(x)):
            errors.append(f"cal_data_dir/{f.name}: holds NaN/inf")
        elif t_train in ("rgb", "bgr", "yuv444", "gray") and (x.min() < 0 or x.max() > 255):
            errors.append(f"cal_data_dir/{f.name}: values {float(x.min()):.3g}..{float(x.max()):.3g} outside 0..255; "
                          "calibration data stops at input_type_train, mean/scale are norm_type's [RD]")
    return errors


def _check_run_script(bundle: Path, cfg_name: str) -> list[str]:
    script = bundle / "run.sh"
    if not script.is_file():
        return ["run.sh: missing"]
    errors = []
    if not os.access(script, os.X_OK):
        errors.append("run.sh: not executable")
    text = script.read_text(encoding="utf-8")
    commands = [ln for ln in text.splitlines() if ln.strip().startswith("hb_mapper")]
    if not commands:
        return [*errors, "run.sh: no hb_mapper command"]
    words = commands[0].split()
    if words[:2] != ["hb_mapper", "makertbin"]:
        errors.append("run.sh: the command is not 'hb_mapper makertbin' [RD]")
    cfg = next((words[i + 1] for i, w in enumerate(words[:-1]) if w in ("--config", "-c")), None)
    if cfg is None or Path(cfg).name != cfg_name:
        errors.append(f"run.sh: --config must name {cfg_name} [RD]")
    mt = next((words[i + 1] for i, w in enumerate(words[:-1]) if w == "--model-type"), None)
    if mt != "onnx":
        errors.append("run.sh: --model-type onnx missing [RD]")
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


def _shape(value: Any) -> tuple[int, ...] | None:
    if not isinstance(value, str) or not re.fullmatch(r"\d+(x\d+)*", value.strip()):
        return None
    return tuple(int(v) for v in value.strip().split("x"))


def _numbers(value: Any) -> list[float] | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)]
    if not isinstance(value, str):
        return None
    try:
        return [float(v) for v in value.split()]
    except ValueError:
        return None
