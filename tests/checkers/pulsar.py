"""Strict checker for an Axera Pulsar (AX620A / AX630A) bundle: config.prototxt + model + calibration tar + run.sh.

Written from the vendor's documentation, independent of autoq's exporter. The config is parsed by
protobuf's own text-format parser against a schema of the documented fields only, so an unknown
field, an unknown enum value or a wrong type is a violation:

* P1 schema: fields and enum values of pulsar-docs ``source/test_configs/config.rst`` (input/output,
  ``target_hardware``, tensor_conf, ``cpu_backend_settings``, ``neuwizard_conf.operator_conf``
  ``input_conf_items`` / ``output_conf_items``, ``dataset_conf_calibration``, ``pulsar_conf``), plus
  ``operator_conf_items`` (``input_feature_type``, ``weight_type``, ``lstm_mode``) and
  ``calibration_strategy`` / ``observer_method`` from ``user_guides_advanced/advanced_guides.rst``
  ("16bit 量化", mixbit) and ``appendix/precision_debug_guides.rst``.
* P2 ``input_type: INPUT_TYPE_ONNX``; ``input_path`` is relative to the config's folder
  (config.rst "路径是配置文件所在目录的相对路径") and names a model inside the bundle.
* P3 ``operator_conf_items``: a selector ``op_name`` names a tensor (or node) of the bundled model;
  an empty selector means the whole model; ``input_feature_type`` UINT4/UINT8/UINT16 and
  ``weight_type`` INT4/INT8 (mixbit: features 4/8/16 bit, weights 4/8 bit); a 16-bit feature type
  goes with ``weight_type: INT8`` as documented.
* P4 ``dataset_conf_calibration``: ``type: DATASET_TYPE_TAR``, ``path`` a tar inside the bundle whose
  members all decode as images of the model input's H x W with its channel count; ``size`` 1..members
  (Pulsar samples ``size`` images from the set); ``batch_size`` >= 1.
* P5 tensor names in ``src_input_tensors`` / ``dst_input_tensors`` and the ``input_conf_items``
  selector are model inputs.
* P6 ``input_normalization``: one mean/std per channel (or one), std not 0.
* P7 ``run.sh`` exists, is executable and runs ``pulsar build`` with ``--config`` = the config file,
  ``--input`` = ``input_path``, only options of ``pulsar build -h`` (advanced_guides.rst), and a
  ``--target_hardware`` that agrees with the config.
"""

from __future__ import annotations

import os
import shlex
import tarfile
from pathlib import Path

import cv2
import numpy as np
import onnx
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
)

_F = descriptor_pb2.FieldDescriptorProto
_S, _I, _E, _M, _FL, _B = _F.TYPE_STRING, _F.TYPE_INT32, _F.TYPE_ENUM, _F.TYPE_MESSAGE, _F.TYPE_FLOAT, _F.TYPE_BOOL
DATA_TYPES = ("DATA_TYPE_UNKNOWN", "UINT2", "INT2", "MINT2", "UINT4", "MINT4", "UINT8", "INT8", "MINT8", "UINT16",
              "INT16", "FLOAT32", "INT4")
FEATURE_TYPES = ("UINT4", "UINT8", "UINT16")
WEIGHT_TYPES = ("INT4", "INT8")
BUILD_OPTIONS = {"--config", "--output_config", "--input", "--output", "--calibration_batch_size",
                 "--compile_batch_size", "--batch_size_option", "--output_dir", "--virtual_npu",
                 "--input_tensor_color", "--output_tensor_color", "--output_tensor_layout", "--color_std",
                 "--target_hardware"}


def _schema():
    fdp = descriptor_pb2.FileDescriptorProto(name="pulsar_documented.proto", package="pd", syntax="proto2")

    def enum(name: str, *values: str) -> None:
        e = fdp.enum_type.add(name=name)
        for i, value in enumerate(values):
            e.value.add(name=value, number=i)

    def message(name: str, *fields: tuple) -> None:
        m = fdp.message_type.add(name=name)
        for i, (fname, ftype, type_name, repeated) in enumerate(fields, start=1):
            f = m.field.add(name=fname, number=i, type=ftype, label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
            if type_name:
                f.type_name = f".pd.{type_name}"

    enum("InputType", "INPUT_TYPE_AUTO", "INPUT_TYPE_ONNX")
    enum("OutputType", "OUTPUT_TYPE_AUTO", "OUTPUT_TYPE_JOINT", "OUTPUT_TYPE_SUPERNET")
    enum("Hardware", "TARGET_HARDWARE_UNSPECIFIED", "TARGET_HARDWARE_AX630", "TARGET_HARDWARE_AX620")
    enum("ColorSpace", *(f"TENSOR_COLOR_SPACE_{c}" for c in ("AUTO", "BGR", "RGB", "GRAY", "NV12", "NV21", "BGR0")))
    enum("DataType", *DATA_TYPES)
    enum("ColorStandard", "CSC_LEGACY", "CSS_ITU_BT601_STUDIO_SWING", "CSS_ITU_BT601_FULL_SWING")
    enum("Layout", "NATIVE", "NHWC", "NCHW")
    enum("Mode", "DEFAULT", "ENABLED", "DISABLED")
    enum("DatasetType", "DATASET_TYPE_UNSPECIFIED", "DATASET_TYPE_TAR")
    enum("Strategy", "CALIB_STRATEGY_UNSPECIFIED", "CALIB_STRATEGY_PER_CHANNEL", "CALIB_STRATEGY_PER_TENSOR")
    enum("Observer", "OBSVR_METHOD_UNSPECIFIED", "OBSVR_METHOD_MIN_MAX", "OBSVR_METHOD_MSE_CLIPPING")
    enum("LstmMode", "LSTM_MODE_UNSPECIFIED", "LSTM_MODE_CPU")
    enum("VirtualNpu", *(f"VIRTUAL_NPU_MODE_{m}" for m in ("AUTO", "0", "311", "312", "221", "222")))
    enum("Ax620VirtualNpu", *(f"AX620_VIRTUAL_NPU_MODE_{m}" for m in ("AUTO", "0", "111", "112")))
    enum("BatchOption", "BSO_AUTO", "BSO_STATIC", "BSO_DYNAMIC")
    message("Tensor", ("tensor_name", _S, None, False), ("color_space", _E, "ColorSpace", False),
            ("data_type", _E, "DataType", False), ("quantization_value", _I, None, False),
            ("color_standard", _E, "ColorStandard", False), ("tensor_layout", _E, "Layout", False))
    message("AxeParam", ("optimize_slim_model", _B, None, False))
    message("Setting", ("mode", _E, "Mode", False), ("axe_param", _M, "AxeParam", False))
    message("CpuBackend", ("onnx_setting", _M, "Setting", False), ("axe_setting", _M, "Setting", False))
    message("Selector", ("op_name", _S, None, True), ("op_name_regex", _S, None, False))
    message("Normalization", ("mean", _FL, None, True), ("std", _FL, None, True))
    message("Affine", ("slope", _FL, None, True), ("slope_divisor", _FL, None, True), ("bias", _FL, None, True),
            ("bias_divisor", _FL, None, True))
    message("Modification", ("input_normalization", _M, "Normalization", False),
            ("affine_preprocess", _M, "Affine", False))
    message("IOAttributes", ("type", _E, "DataType", False), ("input_modifications", _M, "Modification", True),
            ("output_modifications", _M, "Modification", True))
    message("IOItem", ("selector", _M, "Selector", False), ("attributes", _M, "IOAttributes", False))
    message("OpAttributes", ("input_feature_type", _E, "DataType", False), ("weight_type", _E, "DataType", False),
            ("lstm_mode", _E, "LstmMode", False))
    message("OpItem", ("selector", _M, "Selector", False), ("attributes", _M, "OpAttributes", False))
    message("OperatorConf", ("input_conf_items", _M, "IOItem", True), ("output_conf_items", _M, "IOItem", True),
            ("operator_conf_items", _M, "OpItem", True))
    message("DatasetItem", ("selector", _M, "Selector", False), ("path", _S, None, False))
    message("Dataset", ("path", _S, None, False), ("type", _E, "DatasetType", False), ("size", _I, None, False),
            ("batch_size", _I, None, False), ("calibration_strategy", _E, "Strategy", False),
            ("observer_method", _E, "Observer", False), ("dataset_conf_items", _M, "DatasetItem", True))
    message("Neuwizard", ("operator_conf", _M, "OperatorConf", False),
            ("dataset_conf_calibration", _M, "Dataset", False),
            ("dataset_conf_error_measurement", _M, "Dataset", False))
    message("PulsarConf", ("virtual_npu", _E, "VirtualNpu", False), ("ax620_virtual_npu", _E, "Ax620VirtualNpu", False),
            ("batch_size_option", _E, "BatchOption", False), ("batch_size", _I, None, True))
    message("Config", ("input_path", _S, None, False), ("input_type", _E, "InputType", False),
            ("output_path", _S, None, False), ("output_type", _E, "OutputType", False),
            ("target_hardware", _E, "Hardware", False), ("input_tensors", _M, "Tensor", True),
            ("output_tensors", _M, "Tensor", True), ("src_input_tensors", _M, "Tensor", True),
            ("src_output_tensors", _M, "Tensor", True), ("dst_input_tensors", _M, "Tensor", True),
            ("dst_output_tensors", _M, "Tensor", True), ("cpu_backend_settings", _M, "CpuBackend", False),
            ("neuwizard_conf", _M, "Neuwizard", False), ("pulsar_conf", _M, "PulsarConf", False))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("pd.Config"))


_CONFIG = _schema()


def _enum(msg, field: str) -> str:
    return msg.DESCRIPTOR.fields_by_name[field].enum_type.values_by_number[getattr(msg, field)].name


def check(bundle_dir: Path) -> list[str]:
    """Every violation of the documented rules in the bundle ``bundle_dir``, one line each; [] when valid."""
    bundle = Path(bundle_dir)
    configs = sorted(p for p in bundle.glob("*.prototxt") if p.name != "output_config.prototxt")
    if len(configs) != 1:
        return [f"expected exactly one .prototxt config in {bundle}, found {[p.name for p in configs]}"]
    cfg_path = configs[0]
    cfg = _CONFIG()
    try:
        text_format.Parse(cfg_path.read_text(encoding="utf-8"), cfg)
    except (OSError, text_format.ParseError) as exc:
        return [f"P1 {cfg_path.name}: not valid under the documented schema ({exc})"]
    v: list[str] = []
    if not cfg.HasField("input_type") or _enum(cfg, "input_type") != "INPUT_TYPE_ONNX":
        v.append("P2 input_type must be INPUT_TYPE_ONNX")
    model = _model(bundle, cfg.input_path, v)
    inputs = _inputs(model)
    names = None
    if model is not None:
        names = {t for n in model.graph.node for t in n.output if t} | {n.name for n in model.graph.node if n.name}
    nw = cfg.neuwizard_conf
    for i, item in enumerate(nw.operator_conf.operator_conf_items):
        where = f"operator_conf_items[{i}]"
        for name in item.selector.op_name:
            if names is not None and name not in names:
                v.append(f"P3 {where} op_name {name!r} is neither a tensor nor a node of the model")
        attrs = item.attributes
        if attrs.HasField("input_feature_type") or attrs.HasField("weight_type"):
            feature = _enum(attrs, "input_feature_type") if attrs.HasField("input_feature_type") else None
            weight = _enum(attrs, "weight_type") if attrs.HasField("weight_type") else None
            if feature not in FEATURE_TYPES:
                v.append(f"P3 {where} input_feature_type {feature} is not one of {', '.join(FEATURE_TYPES)}")
            if weight not in WEIGHT_TYPES:
                v.append(f"P3 {where} weight_type {weight} is not one of {', '.join(WEIGHT_TYPES)}")
            if feature == "UINT16" and weight != "INT8":
                v.append(f"P3 {where} 16-bit features go with weight_type INT8")
        elif not attrs.HasField("lstm_mode"):
            v.append(f"P3 {where} sets nothing (no input_feature_type/weight_type/lstm_mode)")
    _dataset(bundle, nw, inputs, v)
    for field in ("src_input_tensors", "dst_input_tensors", "input_tensors", "output_tensors"):
        for t in getattr(cfg, field):
            if t.tensor_name and inputs is not None and t.tensor_name not in inputs:
                v.append(f"P5 {field}.tensor_name {t.tensor_name!r} is not a model input")
    channels = _channels(inputs)
    for i, item in enumerate(nw.operator_conf.input_conf_items):
        for name in item.selector.op_name:
            if inputs is not None and name not in inputs:
                v.append(f"P5 input_conf_items[{i}] op_name {name!r} is not a model input")
        for mod in item.attributes.input_modifications:
            if mod.HasField("input_normalization"):
                norm = mod.input_normalization
                for key in ("mean", "std"):
                    n = len(getattr(norm, key))
                    if channels and n not in (1, channels):
                        v.append(f"P6 input_normalization {key} has {n} values for {channels} channels")
                if any(s == 0 for s in norm.std):
                    v.append("P6 input_normalization std must not contain 0")
    _run_script(bundle, cfg_path, cfg, v)
    return v


def _model(bundle: Path, name: str, v: list[str]):
    if not name:
        v.append("P2 input_path is required (the bundle's model)")
        return None
    path = Path(name)
    if path.is_absolute() or ".." in path.parts or not (bundle / path).is_file():
        v.append(f"P2 input_path {name!r} is not a model inside the bundle (relative to the config's folder)")
        return None
    try:
        return onnx.load(str(bundle / path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001
        v.append(f"P2 input_path {name!r} is not a readable ONNX model ({exc})")
        return None


def _inputs(model) -> dict[str, tuple] | None:
    if model is None:
        return None
    inits = {t.name for t in model.graph.initializer}
    return {i.name: tuple(d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim)
            for i in model.graph.input if i.name not in inits}


def _channels(inputs: dict | None) -> int | None:
    if inputs and len(inputs) == 1:
        shape = next(iter(inputs.values()))
        return shape[1] if len(shape) == 4 else None
    return None


def _dataset(bundle: Path, nw, inputs: dict | None, v: list[str]) -> None:
    if not nw.HasField("dataset_conf_calibration"):
        v.append("P4 neuwizard_conf.dataset_conf_calibration is required (Pulsar calibrates from it)")
        return
    ds = nw.dataset_conf_calibration
    if _enum(ds, "type") != "DATASET_TYPE_TAR":
        v.append("P4 dataset_conf_calibration.type must be DATASET_TYPE_TAR")
    path = Path(ds.path)
    if not ds.path or path.is_absolute() or ".." in path.parts or not (bundle / path).is_file():
        v.append(f"P4 dataset_conf_calibration.path {ds.path!r} is not a tar inside the bundle")
        return
    try:
        with tarfile.open(bundle / path) as tar:
            members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    except (tarfile.TarError, OSError) as exc:
        v.append(f"P4 dataset_conf_calibration.path {ds.path!r} is not a tar ({exc})")
        return
    if not members:
        v.append(f"P4 {ds.path} holds no images")
    shape = next(iter(inputs.values())) if inputs and len(inputs) == 1 else None
    for name, raw in members:
        img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None:
            v.append(f"P4 {ds.path} member {name} does not decode as an image")
        elif shape is not None and len(shape) == 4:
            c = 1 if img.ndim == 2 else img.shape[2]
            if c != shape[1] or img.shape[:2] != tuple(shape[2:]):
                v.append(f"P4 {ds.path} member {name} is {img.shape}, the model input is {shape} (NCHW)")
    if ds.HasField("size") and not 1 <= ds.size <= len(members):
        v.append(f"P4 dataset_conf_calibration.size {ds.size} must be 1..{len(members)} (images in the tar)")
    if ds.HasField("batch_size") and ds.batch_size < 1:
        v.append("P4 dataset_conf_calibration.batch_size must be >= 1")


def _run_script(bundle: Path, cfg_path: Path, cfg, v: list[str]) -> None:
    script = bundle / "run.sh"
    if not script.is_file():
        v.append("P7 run.sh is missing")
        return
    if not os.access(script, os.X_OK):
        v.append("P7 run.sh is not executable")
    lines = [ln for ln in script.read_text(encoding="utf-8").splitlines() if ln.strip().startswith("pulsar build")]
    if len(lines) != 1:
        v.append("P7 run.sh must run `pulsar build` once")
        return
    args = shlex.split(lines[0])[2:]
    opts = dict(zip(args[::2], args[1::2]))
    for opt in opts:
        if opt not in BUILD_OPTIONS:
            v.append(f"P7 run.sh passes {opt}, not an option of `pulsar build -h`")
    if opts.get("--config") != cfg_path.name:
        v.append(f"P7 run.sh --config {opts.get('--config')!r} is not {cfg_path.name!r}")
    if "--input" in opts and opts["--input"] != cfg.input_path:
        v.append(f"P7 run.sh --input {opts['--input']!r} differs from input_path {cfg.input_path!r}")
    hw = opts.get("--target_hardware")
    if hw is not None:
        if hw not in ("AX630", "AX620", "AX170"):
            v.append(f"P7 run.sh --target_hardware {hw} is not AX630, AX620 or AX170")
        elif cfg.HasField("target_hardware") and _enum(cfg, "target_hardware") != f"TARGET_HARDWARE_{hw}":
            v.append("P7 run.sh --target_hardware differs from the config's target_hardware")
