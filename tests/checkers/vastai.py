"""Strict checker of a vastai bundle (vamc build YAML + model + calibration + run.sh).

Rules (sources):
- top-level / frontend / backend / dataset keys and enums: Vastai/VastModelZOO build_in/build/*.yaml
  (342 public build YAMLs), e.g. cv/detection/yolov8/build_in/build/ultralytics_yolov8.yaml;
- calibrate_mode in max, percentile, mse, kl_divergence: the values used across those YAMLs;
- skip_conv_layers: indices of conv layers (cv/detection/yolov12/.../official_yolov12_int8.yaml),
  skip_matmul_layers: indices of matmul layers (cv/text_recognition/ppocr_v4_rec/.../ppocr_v4_rec.yaml);
  exclude_layers only together with quantize_mode: manual (cv/image_colorization/gpen/.../official_gpen.yaml);
- dataset: type tvm; npz samples keyed by the frontend.shape input names, no process_ops
  (cv/detection_3d/center_point/.../official_kitti_center_point.yaml); image samples need process_ops;
- run command: ``vamc compile <yaml>`` (VastModelZOO READMEs; ``vamc build`` also appears).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import numpy as np
import onnx
import yaml

TOP = {"name", "frontend", "graph", "backend", "dataset", "workspace"}
FRONTEND = {"shape", "type", "checkpoint", "dtype"}
BACKEND = {"type", "dtype", "compile", "quantize"}
QUANTIZE = {"calibrate_mode", "quantize_per_channel", "skip_conv_layers", "skip_matmul_layers", "exclude_layers",
            "quantize_mode", "quantize_operators", "weight_scale", "calibrate_range", "overflow_adaptive",
            "calibrate_chunk_by", "requant_suppress", "output_ddr"}
MODES = {"max", "percentile", "mse", "kl_divergence"}
PROCESS_OPS = {"DecodeImage", "Resize", "Pad", "CenterCrop", "CvtColor", "Normalize", "ToTensor", "ChannelSplit"}
IMAGE_SUFFIXES = {"jpg", "jpeg", "png", "bmp"}


def check(bundle_dir: Path) -> list[str]:
    bundle = Path(bundle_dir)
    errs: list[str] = []
    configs = sorted(bundle.glob("*.yaml"))
    if len(configs) != 1:
        return [f"expected one vamc YAML in {bundle}, found {len(configs)}"]
    cfg_path = configs[0]
    try:
        data = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        return [f"{cfg_path.name}: not YAML ({exc})"]
    if not isinstance(data, dict):
        return [f"{cfg_path.name}: top level is not a mapping"]
    errs += [f"unknown top-level key {k!r}" for k in data if k not in TOP]
    errs += [f"missing top-level key {k!r}" for k in ("name", "frontend", "backend", "workspace") if k not in data]
    fe = data.get("frontend") or {}
    errs += [f"unknown frontend key {k!r}" for k in fe if k not in FRONTEND]
    if fe.get("type") != "onnx":
        errs.append(f"frontend.type {fe.get('type')!r} is not onnx")
    if fe.get("dtype") != "fp32":
        errs.append(f"frontend.dtype {fe.get('dtype')!r} is not fp32")
    model = None
    ckpt = fe.get("checkpoint")
    if not isinstance(ckpt, str) or os.path.isabs(ckpt) or not (bundle / ckpt).is_file():
        errs.append(f"frontend.checkpoint {ckpt!r} is not a file inside the bundle")
    else:
        model = onnx.load(str(bundle / ckpt), load_external_data=False)
    shapes = fe.get("shape") or {}
    if model is not None:
        inits = {t.name for t in model.graph.initializer}
        inputs = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input
                  if i.name not in inits}
        for name, dims in shapes.items():
            if name not in inputs:
                errs.append(f"frontend.shape input {name!r} is not a model input")
            elif not isinstance(dims, list) or any(a and a != b for a, b in zip(inputs[name], dims)) \
                    or len(dims) != len(inputs[name]):
                errs.append(f"frontend.shape {name} {dims} does not match the model's {inputs[name]}")
        errs += [f"model input {n!r} missing from frontend.shape" for n in inputs if n not in shapes]
    be = data.get("backend") or {}
    errs += [f"unknown backend key {k!r}" for k in be if k not in BACKEND]
    if be.get("type") != "tvm_vacc":
        errs.append(f"backend.type {be.get('type')!r} is not tvm_vacc")
    if be.get("dtype") not in ("int8", "fp16"):
        errs.append(f"backend.dtype {be.get('dtype')!r} is not int8 or fp16")
    q = be.get("quantize") or {}
    errs += [f"unknown backend.quantize key {k!r}" for k in q if k not in QUANTIZE]
    if be.get("dtype") == "int8":
        if q.get("calibrate_mode") not in MODES:
            errs.append(f"calibrate_mode {q.get('calibrate_mode')!r} is not one of {sorted(MODES)}")
        if not isinstance(q.get("quantize_per_channel", False), bool):
            errs.append("quantize_per_channel is not a boolean")
    if "exclude_layers" in q and q.get("quantize_mode") != "manual":
        errs.append("exclude_layers without quantize_mode: manual")
    if model is not None:
        for key, op in (("skip_conv_layers", "Conv"), ("skip_matmul_layers", "MatMul")):
            ids = q.get(key, [])
            count = sum(1 for n in model.graph.node if n.op_type == op)
            if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                errs.append(f"{key} is not a list of integers")
                continue
            if len(set(ids)) != len(ids):
                errs.append(f"{key} has duplicate ids")
            errs += [f"{key} id {i} is outside the model's {count} {op} layers" for i in ids if not 0 <= i < count]
    if be.get("dtype") == "int8":
        errs += _check_dataset(bundle, data.get("dataset"), shapes)
    errs += _check_run(bundle, cfg_path)
    return errs


def _check_dataset(bundle: Path, ds, shapes) -> list[str]:
    if not isinstance(ds, dict):
        return ["an int8 build needs a dataset section"]
    errs = [f"unknown dataset key {k!r}" for k in ds if k not in {"type", "path", "sampler", "process_ops"}]
    if ds.get("type") != "tvm":
        errs.append(f"dataset.type {ds.get('type')!r} is not tvm")
    path = ds.get("path")
    folder = bundle / str(path)
    if not isinstance(path, str) or os.path.isabs(path) or not folder.is_dir():
        return [*errs, f"dataset.path {path!r} is not a folder inside the bundle"]
    sampler = ds.get("sampler") or {}
    errs += [f"unknown sampler key {k!r}" for k in sampler if k not in {"suffix", "get_data_num"}]
    suffix = sampler.get("suffix")
    num = sampler.get("get_data_num")
    files = sorted(p for p in folder.iterdir() if p.suffix[1:] == suffix)
    others = [p.name for p in folder.iterdir() if p.suffix[1:] != suffix]
    if others:
        errs.append(f"dataset folder holds files without suffix {suffix!r}: {others[:3]}")
    if not isinstance(num, int) or num < 1 or num > len(files):
        errs.append(f"sampler.get_data_num {num!r} does not fit the {len(files)} .{suffix} files")
    if suffix == "npz":
        if "process_ops" in ds:
            errs.append("npz samples are model inputs already: process_ops must be absent")
        for f in files:
            with np.load(f) as z:
                if set(z.files) != set(shapes):
                    errs.append(f"{f.name}: keys {z.files} are not the inputs {sorted(shapes)}")
                    continue
                for k in z.files:
                    if list(z[k].shape) != list(shapes[k]) or z[k].dtype != np.float32:
                        errs.append(f"{f.name}: {k} is {z[k].dtype} {list(z[k].shape)}, expected float32 {shapes[k]}")
    elif suffix in IMAGE_SUFFIXES:
        ops = ds.get("process_ops")
        if not isinstance(ops, list) or not ops:
            errs.append("image samples need process_ops")
        else:
            errs += [f"unknown process op {o.get('type')!r}" for o in ops if o.get("type") not in PROCESS_OPS]
    else:
        errs.append(f"sampler.suffix {suffix!r} is neither npz nor an image type")
    return errs


def _check_run(bundle: Path, cfg: Path) -> list[str]:
    run = bundle / "run.sh"
    if not run.is_file() or not os.access(run, os.X_OK):
        return ["run.sh missing or not executable"]
    words = shlex.split(run.read_text(encoding="utf-8"), comments=True)
    if "vamc" not in words:
        return ["run.sh does not run vamc"]
    i = words.index("vamc")
    if words[i + 1: i + 3] not in (["compile", cfg.name], ["build", cfg.name]):
        return [f"run.sh runs {' '.join(words[i:i + 3])!r}, expected 'vamc compile {cfg.name}'"]
    return []
