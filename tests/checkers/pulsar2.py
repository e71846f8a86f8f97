"""Strict checker for an Axera Pulsar2 bundle (``pulsar2 build`` JSON config + model + calibration + run.sh).

Written from the vendor's documentation, independent of autoq's exporter:

* R1 keys and enums: every key must be a field of the documented proto ``BuildConfig`` (and its
  messages ``QuantConfig``, ``InputQuantConfig``, ``LayerConfig``, ``InputProcessor``, ...);
  enum values as listed there (pulsar2-docs ``source/user_guides_config/config.md``, "proto 配置定义").
* R2 ``npu_mode``: AX650 NPU1/2/3, AX620E NPU1/2 (config.md comment on ``npu_mode``).
* R3 ``layer_configs`` items: exactly one of ``layer_name`` / ``op_type`` / ``layer_names`` /
  ``op_types`` / (``start_tensor_names`` + ``end_tensor_names``) ("must choose between ...";
  "layer_name 及 op_type 选项不可以同时配置"); ``weight_data_type`` S8 | FP32.
* R4 Conv takes no ``data_type: FP32`` (advanced_build_guides.md "混合精度量化详解": "Conv 类型算子，
  不支持配置 data_type 为 FP32"); a whole-graph FP32 item needs every Conv overridden by a
  layer or op_type item that is not FP32 (priority 指定算子 > 一类算子 > 某个子图).
* R5 ``output_data_type`` only on Conv ("该配置目前只对Conv算子生效").
* R6 no items on Reshape/Transpose (precision_debug_guides.md Q&A: "设置该类算子的类型不会生效").
* R7 every ``layer_name(s)`` is a node of the bundled model, every ``op_type(s)`` an op type in
  it, every start/end tensor a tensor of it (or ``DEFAULT``).
* R8 ``input`` names a model inside the bundle; ``input_configs`` / ``input_processors``
  ``tensor_name`` is ``DEFAULT`` or a model input (advanced_config_examples.md warning "tensor_name
  必须与 ONNX 模型中的实际输入名称一致").
* R9 ``calibration_dataset`` is a tar/tar.gz/zip inside the bundle ("limitation: tar, tar.gz,
  zip"); Image: every member decodes as an image of the model's H x W (3 channels); Numpy: every
  member is a ``.npy`` of exactly the model input's shape, float32 ("数据类型和形状与模型输入完全一致");
  ``calibration_size`` is -1 or 1..members; mean/std have one value per channel.
* R10 ``run.sh`` exists, is executable and runs ``pulsar2 build`` with ``--input`` = config
  ``input`` and ``--config`` = the config file.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import tarfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import onnx

DATA_TYPES = ("U8", "S8", "U16", "S16", "U32", "S32", "U64", "S64", "FP16", "FP32", "BF16")
LAYER_DATA_TYPES = ("U8", "S8", "U16", "S16", "FP32")
ENUMS = {
    "model_type": ("ONNX", "QuantAxModel", "QuantONNX", "OptimizedQuantAxModel"),
    # config.md enum HardwareType; quick-start guides also build for AX615 / AX637
    "target_hardware": ("AX650", "AX620E", "M76H", "M57", "AX615", "AX637"),
    "npu_mode": ("NPU1", "NPU2", "NPU3"),
    "calibration_method": ("MinMax", "Percentile", "MSE", "KL"),
    "calibration_format": ("Image", "Numpy", "Binary", "NumpyObject"),
    "precision_analysis_method": ("PerLayer", "EndToEnd"),
    "precision_analysis_mode": ("Reference", "NPUBackend"),
    "tensor_format": ("AutoColorSpace", "BGR", "RGB", "GRAY"),
    "src_format": ("AutoColorSpace", "GRAY", "BGR", "RGB", "YUYV422", "UYVY422", "YUV420SP", "YVU420SP", "RAW"),
    "tensor_layout": ("NHWC", "NCHW"),
    "src_layout": ("NHWC", "NCHW"),
    "src_dtype": ("U8", "S8", "U16", "S16", "U32", "S32", "FP16", "FP32"),
    "csc_mode": ("NoCSC", "Matrix", "FullRange", "LimitedRange"),
    "conv_bias_data_type": ("S32", "FP32"),
    "ln_scale_data_type": ("FP32", "S32", "U32"),
    "output_dtype": ("FP32", "U8"),
    "check_mode": ("CheckOutput", "CheckPerLayer"),
}
KEYS = {
    "": {"input", "output_dir", "output_name", "work_dir", "model_type", "target_hardware", "npu_mode",
         "input_shapes", "onnx_opt", "quant", "input_processors", "output_processors", "const_processors",
         "op_processors", "quant_op_processors", "compiler"},
    "onnx_opt": {"disable_onnx_optimization", "enable_onnxsim", "model_check", "disable_transformation_check",
                 "save_tensors_data"},
    "quant": {"input_configs", "layer_configs", "calibration_method", "precision_analysis",
              "precision_analysis_method", "precision_analysis_mode", "highest_mix_precision", "conv_bias_data_type",
              "refine_weight_threshold", "enable_smooth_quant", "smooth_quant_threshold", "smooth_quant_strength",
              "transformer_opt_level", "input_sample_dir", "ln_scale_data_type", "check",
              "disable_auto_refine_scale", "enable_easy_quant", "disable_quant_optimization", "enable_brecq",
              "enable_lsq", "enable_adaround", "finetune_epochs", "finetune_block_size", "finetune_batch_size",
              "finetune_lr", "device"},
    "input_configs": {"tensor_name", "calibration_dataset", "calibration_format", "calibration_size",
                      "calibration_mean", "calibration_std"},
    "layer_configs": {"layer_name", "op_type", "start_tensor_names", "end_tensor_names", "data_type",
                      "weight_data_type", "layer_names", "op_types", "output_data_type"},
    "input_processors": {"tensor_name", "tensor_format", "tensor_layout", "src_format", "src_layout", "src_dtype",
                         "src_extra_shapes", "csc_mode", "csc_mat", "mean", "std", "padding", "padding_mode",
                         "padding_constant_value", "slicing"},
    "output_processors": {"tensor_name", "tensor_layout", "dst_perm", "output_dtype"},
}
CONV_TYPES = ("Conv", "ConvTranspose")
NO_EFFECT = ("Reshape", "Transpose")
_NPU = {"AX650": ("NPU1", "NPU2", "NPU3"), "AX620E": ("NPU1", "NPU2")}
_SELECTORS = ("layer_name", "op_type", "layer_names", "op_types", "start_tensor_names")


def check(bundle_dir: Path) -> list[str]:
    """Every violation of the documented rules in the bundle ``bundle_dir``, one line each; [] when valid."""
    bundle = Path(bundle_dir)
    configs = sorted(p for p in bundle.glob("*.json") if p.is_file())
    if len(configs) != 1:
        return [f"expected exactly one .json config in {bundle}, found {[p.name for p in configs]}"]
    cfg_path = configs[0]
    try:
        data = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"{cfg_path.name}: not JSON ({exc})"]
    if not isinstance(data, dict):
        return [f"{cfg_path.name}: top level must be an object"]
    v: list[str] = []
    _keys(data, "", "", v)
    for key in ("input", "output_dir"):
        if not isinstance(data.get(key), str) or not data.get(key):
            v.append(f"R1 {key} is required (a string)")
    hw = data.get("target_hardware", "AX650")
    npu = data.get("npu_mode", "NPU1")
    if hw in ENUMS["target_hardware"] and npu not in _NPU.get(hw, ("NPU1",)):
        v.append(f"R2 npu_mode {npu} is not available on {hw}")

    model = _model(bundle, data.get("input"), v)
    quant = data.get("quant") if isinstance(data.get("quant"), dict) else {}
    node_ops = {n.name: n.op_type for n in model.graph.node} if model is not None else None
    _layers(quant.get("layer_configs") or [], model, node_ops, v)
    inputs = _inputs(model)
    for section, items in (("quant.input_configs", quant.get("input_configs") or []),
                           ("input_processors", data.get("input_processors") or [])):
        for i, item in enumerate(items):
            name = item.get("tensor_name") if isinstance(item, dict) else None
            if not isinstance(name, str) or not name:
                v.append(f"R8 {section}[{i}].tensor_name is required")
            elif inputs is not None and name != "DEFAULT" and name not in inputs:
                v.append(f"R8 {section}[{i}].tensor_name {name!r} is not an input of the model ({sorted(inputs)})")
    if not quant.get("input_configs") and data.get("model_type", "ONNX") == "ONNX":
        v.append("R9 quant.input_configs is required to calibrate an ONNX model")
    for i, item in enumerate(quant.get("input_configs") or []):
        if isinstance(item, dict):
            _calibration(bundle, item, i, inputs, v)
    _run_script(bundle, cfg_path, data, v)
    return v


def _keys(obj: dict, section: str, where: str, v: list[str]) -> None:
    allowed = KEYS.get(section)
    for key, value in obj.items():
        path = f"{where}.{key}" if where else key
        if allowed is not None and key not in allowed:
            v.append(f"R1 unknown key {path}")
            continue
        if key in ENUMS and value not in ENUMS[key]:
            v.append(f"R1 {path} {value!r} is not one of {', '.join(ENUMS[key])}")
        if key in ("data_type", "output_data_type") and value not in LAYER_DATA_TYPES:
            v.append(f"R1 {path} {value!r} is not one of {', '.join(LAYER_DATA_TYPES)}")
        if key == "weight_data_type" and value not in ("S8", "FP32"):
            v.append(f"R3 {path} {value!r} is not S8 or FP32")
        if isinstance(value, dict) and key in KEYS:
            _keys(value, key, path, v)
        elif isinstance(value, list) and key in KEYS:
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    _keys(item, key, f"{path}[{i}]", v)
                else:
                    v.append(f"R1 {path}[{i}] must be an object")


def _model(bundle: Path, name: object, v: list[str]):
    if not isinstance(name, str) or not name:
        return None
    path = Path(name)
    if path.is_absolute() or ".." in path.parts:
        v.append(f"R8 input {name!r} is not a path inside the bundle")
        return None
    if not (bundle / path).is_file():
        v.append(f"R8 input {name!r} does not exist in the bundle")
        return None
    try:
        return onnx.load(str(bundle / path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001
        v.append(f"R8 input {name!r} is not a readable ONNX model ({exc})")
        return None


def _inputs(model) -> dict[str, tuple] | None:
    if model is None:
        return None
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for i in model.graph.input:
        if i.name in inits:
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim)
        out[i.name] = dims
    return out


def _layers(items: list, model, node_ops: dict[str, str] | None, v: list[str]) -> None:
    tensors = None
    if model is not None:
        tensors = {t for n in model.graph.node for t in (*n.input, *n.output) if t} | {i.name for i in model.graph.input}
    op_types = set(node_ops.values()) if node_ops is not None else None
    whole_fp32 = False
    covered: dict[str, str] = {}  # conv node -> data_type from a layer / op_type item
    type_cover: dict[str, str] = {}
    for i, item in enumerate(items):
        where = f"quant.layer_configs[{i}]"
        if not isinstance(item, dict):
            continue
        chosen = [k for k in _SELECTORS if item.get(k) not in (None, "", [])]
        if "end_tensor_names" in item and "start_tensor_names" not in item:
            chosen.append("end_tensor_names")
        if len(chosen) != 1:
            v.append(f"R3 {where} must choose exactly one of layer_name, op_type, layer_names, op_types, "
                     f"start/end_tensor_names; has {chosen or 'none'}")
            continue
        dtype = item.get("data_type", "U8")
        kind = chosen[0]
        names = [item[kind]] if kind in ("layer_name", "op_type") else list(item[kind])
        if kind in ("layer_name", "layer_names"):
            for name in names:
                op = node_ops.get(name) if node_ops is not None else None
                if node_ops is not None and name not in node_ops:
                    v.append(f"R7 {where} layer {name!r} is not a node of the model")
                    continue
                _op_rules(where, f"layer {name!r}", op, item, dtype, v)
                if op in CONV_TYPES:
                    covered[name] = dtype
        elif kind in ("op_type", "op_types"):
            for op in names:
                if op_types is not None and op not in op_types:
                    v.append(f"R7 {where} op_type {op!r} does not occur in the model")
                _op_rules(where, f"op_type {op!r}", op, item, dtype, v)
                if op in CONV_TYPES:
                    type_cover[op] = dtype
        else:
            start, end = item.get("start_tensor_names") or [], item.get("end_tensor_names") or []
            if not start or not end:
                v.append(f"R3 {where} needs both start_tensor_names and end_tensor_names")
            if (start == ["DEFAULT"]) != (end == ["DEFAULT"]):
                v.append(f"R3 {where} DEFAULT must be used for both start and end tensor names")
            if start == ["DEFAULT"] and end == ["DEFAULT"]:
                whole_fp32 = whole_fp32 or dtype == "FP32"
            elif tensors is not None:
                for t in [*start, *end]:
                    if t not in tensors:
                        v.append(f"R7 {where} tensor {t!r} is not a tensor of the model")
            if "output_data_type" in item:
                v.append(f"R5 {where} output_data_type applies to Conv only, not to a subgraph item")
    if whole_fp32 and node_ops is not None:
        bad = [n for n, op in node_ops.items() if op in CONV_TYPES
               and covered.get(n, type_cover.get(op, "FP32")) == "FP32"]
        if bad:
            v.append(f"R4 a whole-graph FP32 item puts Conv nodes in FP32 (no layer/op_type item overrides them): "
                     f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")


def _op_rules(where: str, what: str, op: str | None, item: dict, dtype: str, v: list[str]) -> None:
    if op in CONV_TYPES and dtype == "FP32":
        v.append(f"R4 {where} {what}: Conv does not take data_type FP32 (use output_data_type)")
    if "output_data_type" in item and op is not None and op not in CONV_TYPES:
        v.append(f"R5 {where} {what}: output_data_type only applies to Conv, not {op}")
    if op in NO_EFFECT:
        v.append(f"R6 {where} {what}: settings on {op} have no effect (its type follows the next compute op)")


def _calibration(bundle: Path, item: dict, i: int, inputs: dict | None, v: list[str]) -> None:
    where = f"quant.input_configs[{i}]"
    name = item.get("calibration_dataset")
    if not isinstance(name, str) or not name:
        v.append(f"R9 {where}.calibration_dataset is required")
        return
    path = Path(name)
    if path.is_absolute() or ".." in path.parts or not (bundle / path).is_file():
        v.append(f"R9 {where}.calibration_dataset {name!r} is not a file inside the bundle")
        return
    if not re.search(r"\.(tar|tar\.gz|tgz|zip)$", name):
        v.append(f"R9 {where}.calibration_dataset {name!r} is not a tar, tar.gz or zip")
        return
    fmt = item.get("calibration_format", "Image")
    shape = None
    if inputs:
        tname = item.get("tensor_name")
        shape = inputs.get(tname) if tname in inputs else (next(iter(inputs.values())) if len(inputs) == 1 else None)
    members = _members(bundle / path, v, where)
    if members is None:
        return
    if not members:
        v.append(f"R9 {where}.calibration_dataset {name!r} holds no files")
    for member, raw in members:
        if fmt == "Image":
            img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
            if img is None:
                v.append(f"R9 {where} member {member} does not decode as an image")
            elif shape is not None and len(shape) == 4 and (img.ndim != 3 or img.shape[2] != shape[1]
                                                            or img.shape[:2] != tuple(shape[2:])):
                v.append(f"R9 {where} member {member} is {img.shape}, the model input is {shape} (NCHW)")
        elif fmt == "Numpy":
            try:
                arr = np.load(io.BytesIO(raw), allow_pickle=False)
            except Exception as exc:  # noqa: BLE001
                v.append(f"R9 {where} member {member} is not a .npy array ({exc})")
                continue
            if shape is not None and tuple(arr.shape) != tuple(shape):
                v.append(f"R9 {where} member {member} has shape {arr.shape}, the model input is {shape}")
            if arr.dtype != np.float32:
                v.append(f"R9 {where} member {member} is {arr.dtype}, the model input is float32")
    size = item.get("calibration_size", 32)
    if not isinstance(size, int) or (size != -1 and not 1 <= size <= len(members)):
        v.append(f"R9 {where}.calibration_size {size!r} must be -1 or 1..{len(members)} (files in the archive)")
    channels = shape[1] if shape is not None and len(shape) == 4 else None
    for key in ("calibration_mean", "calibration_std"):
        values = item.get(key)
        if values is None or values == []:
            continue
        if not isinstance(values, list) or (channels and len(values) not in (1, channels)):
            v.append(f"R9 {where}.{key} must have one value per channel ({channels})")
        elif key == "calibration_std" and any(float(s) == 0 for s in values):
            v.append(f"R9 {where}.calibration_std must not contain 0")


def _members(path: Path, v: list[str], where: str) -> list[tuple[str, bytes]] | None:
    try:
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as z:
                return [(n, z.read(n)) for n in z.namelist() if not n.endswith("/")]
        with tarfile.open(path) as tar:
            return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    except Exception as exc:  # noqa: BLE001
        v.append(f"R9 {where}.calibration_dataset {path.name} cannot be read as an archive ({exc})")
        return None


def _run_script(bundle: Path, cfg_path: Path, data: dict, v: list[str]) -> None:
    script = bundle / "run.sh"
    if not script.is_file():
        v.append("R10 run.sh is missing")
        return
    if not os.access(script, os.X_OK):
        v.append("R10 run.sh is not executable")
    lines = [ln for ln in script.read_text(encoding="utf-8").splitlines() if ln.strip().startswith("pulsar2 build")]
    if len(lines) != 1:
        v.append("R10 run.sh must run `pulsar2 build` once")
        return
    args = shlex.split(lines[0])[2:]
    opts = dict(zip(args[::2], args[1::2]))
    if opts.get("--config") != cfg_path.name:
        v.append(f"R10 run.sh --config {opts.get('--config')!r} is not {cfg_path.name!r}")
    if "--input" in opts and opts["--input"] != data.get("input"):
        v.append(f"R10 run.sh --input {opts['--input']!r} differs from the config's input {data.get('input')!r}")
    known = {"--config", "--input", "--output_dir", "--output_name", "--work_dir", "--model_type",
             "--target_hardware", "--npu_mode", "--input_shapes"}
    for opt in opts:
        if opt.startswith("--") and opt not in known and not opt.startswith(("--quant.", "--onnx_opt.", "--compiler.")):
            v.append(f"R10 run.sh passes {opt}, not a documented pulsar2 build option")
    if opts.get("--target_hardware", data.get("target_hardware")) != data.get("target_hardware", "AX650"):
        v.append("R10 run.sh --target_hardware differs from the config's target_hardware")
