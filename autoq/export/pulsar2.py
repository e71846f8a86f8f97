"""Axera Pulsar2 (AX650 / AX620E / AX615 / ...): the bundle ``autoq export --format axera-pulsar2 -o DIR`` writes.

The folder holds everything ``pulsar2 build`` reads, with paths relative to it (``run.sh`` runs
from the folder):

* ``<label>_pulsar2.json``: the build config (strict JSON; ``"input": "model.onnx"``), and
  ``<label>_pulsar2.json.autoq.txt``: provenance and assumptions (Pulsar2 reads the config into its
  protobuf ``BuildConfig``, so nothing else may go into it);
* ``model.onnx``: the model the layer names belong to;
* ``calibration.tar``: ``quant.input_configs[0].calibration_dataset``. With the default
  ``calibration_format="Image"``: the calibration images autoq used, as lossless PNG, already
  resized/letterboxed to the input size (Pulsar2's own resize is then a no-op), true colours
  (Pulsar2 converts them to ``input_processors.tensor_format``), and ``calibration_mean/std``
  (0..255 units, model colour order) do the normalisation, as in autoq. With ``"Numpy"``: one
  ``.npy`` per image holding exactly autoq's model input (float32 ``(1, 3, H, W)``, mean/std
  applied; pulsar2-docs: Numpy data is fed to the model as is, no preprocessing), and mean/std go
  to ``input_processors`` only (the runtime's normalisation);
* ``run.sh``: ``pulsar2 build --input model.onnx --config <cfg> --output_dir output
  --output_name <label>.axmodel --target_hardware <hw>``.

What a trial decides maps onto ``quant`` like this (pulsar2-docs
``source/user_guides_advanced/advanced_build_guides.md`` "混合精度量化详解"):

* every node whose precision is not Pulsar2's default is one ``layer_configs`` item
  ``{"layer_name": "<ONNX node name>", "data_type": "U16" | "U8" | "FP32"}``; ``layer_name``
  items take precedence over ``op_type`` and subgraph (``start/end_tensor_names``) items;
* int8 (U8) is Pulsar2's default; a trial whose default is int16 gets the documented whole-graph
  item ``start_tensor_names = end_tensor_names = ["DEFAULT"]`` at U16 and its int8 nodes listed as
  U8. A float default never becomes a whole-graph FP32 item (that would put every Conv in FP32,
  which Pulsar2 does not run): its float nodes are listed one by one;
* Conv does not take ``data_type: FP32`` (``output_data_type`` only changes a Conv's output): a
  float Conv / ConvTranspose is refused (``ExportError`` naming the nodes and the option) unless
  ``float_conv="U16"`` writes it as U16, the most accurate thing Pulsar2 runs;
* nodes of op types whose setting has no effect (Reshape, Transpose: "their type follows the next
  compute op", pulsar2-docs ``appendix/precision_debug_guides.md`` Q&A) are not listed;
* names: Pulsar2 matches ``layer_name`` against the nodes of its float-optimised graph
  (``output/frontend/optimized.onnx``, same Q&A), which its onnxslim pass may rename or fuse; so
  the config sets ``onnx_opt.disable_onnx_optimization: true`` whenever it lists layers
  (``disable_onnx_optimization`` option), keeping model.onnx's node names. Subgraph items name
  tensors but have the lowest precedence, so they cannot override the whole-graph item;
* the range method -> ``calibration_method`` MinMax | Percentile | MSE | KL.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from autoq.data.preprocess import to_input
from autoq.errors import ConfigError, ExportError
from autoq.export.base import (
    EXPORTERS,
    ExportContext,
    bundle_dir,
    calibration_images,
    check_choice,
    check_model_nodes,
    copy_model,
    header_lines,
    join_names,
    precision_counts,
    provenance_sidecar,
    write_run_script,
)
from autoq.export.pulsar import write_calibration_tar
from autoq.plan import Precision

__all__ = ["read_pulsar2", "write_pulsar2"]

TARGETS = ("AX650", "AX620E", "AX615", "AX637", "M57", "M76H")
NPU_MODES = ("NPU1", "NPU2", "NPU3")
#: npu modes per target (pulsar2-docs config.md "npu_mode"; targets not named there: NPU1 only)
_TARGET_NPU = {"AX650": ("NPU1", "NPU2", "NPU3"), "AX620E": ("NPU1", "NPU2")}
CALIBRATION_FORMATS = ("Image", "Numpy")
FLOAT_CONV = ("refuse", "U16")
METHODS = ("MinMax", "Percentile", "MSE", "KL")
CALIBRATION_TAR = "calibration.tar"
#: op types that take no ``data_type: FP32`` (pulsar2-docs "Conv 类型算子，不支持配置 data_type 为 FP32")
CONV_TYPES = ("Conv", "ConvTranspose")
#: op types whose precision setting has no effect (their type follows the next compute op)
NO_EFFECT_TYPES = ("Reshape", "Transpose")
#: op types Axera lists as verified in FP32 ("已经验证过的算子")
FP32_VERIFIED = ("LeakyRelu", "Sigmoid", "Relu", "Add", "Mul", "Div", "Sub", "Concat", "Softmax")
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
    calibration_format: str = "Image",
    calibration_size: int | None = None,
    float_conv: str = "refuse",
    disable_onnx_optimization: bool = True,
    output_dir: str = "output",
    output_name: str | None = None,
) -> list[Path]:
    """Writes the bundle (config + sidecar, model.onnx, calibration.tar, run.sh) into the folder ``out``.

    ``target_hardware``: AX650, AX620E, AX615, AX637, M57 or M76H. ``npu_mode``: NPU1..NPU3 (AX650),
    NPU1/NPU2 (AX620E). ``calibration_format``: Image (PNG images, Pulsar2 normalises with
    calibration_mean/std) or Numpy (autoq's exact float32 model inputs). ``calibration_size``:
    images used (default: all written). ``float_conv``: a float Conv is refused (``refuse``) or
    written as U16 (``U16``); Pulsar2 runs no FP32 Conv. ``disable_onnx_optimization``: skip
    Pulsar2's onnxslim pass when layers are listed, so their names stay model.onnx's.
    ``output_dir`` / ``output_name``: where ``pulsar2 build`` writes the ``.axmodel``.
    Returns the files written, the config first.
    """
    check_choice("target_hardware", target_hardware, TARGETS)
    check_choice("npu_mode", npu_mode, _TARGET_NPU.get(target_hardware, ("NPU1",)))
    check_choice("calibration_format", calibration_format, CALIBRATION_FORMATS)
    check_choice("float_conv", float_conv, FLOAT_CONV)
    if calibration_size is not None and calibration_size < 1:
        raise ConfigError("export option calibration_size must be >= 1")
    check_model_nodes(ctx)

    assignment = ctx.assignment()
    ops = ctx.node_ops
    float_convs = [n for n, p in assignment.items() if p is Precision.FLOAT and ops.get(n) in CONV_TYPES]
    if float_convs and float_conv == "refuse":
        raise ExportError(
            f"Pulsar2 runs no Conv in FP32 (Conv does not take data_type FP32): float Conv nodes "
            f"{join_names(float_convs)}; pick a trial without float Conv or set the export option float_conv=U16"
        )

    default = Precision.INT16 if ctx.config.default is Precision.INT16 else Precision.INT8
    layer_configs: list[dict[str, Any]] = []
    if default is Precision.INT16:
        layer_configs.append({"start_tensor_names": ["DEFAULT"], "end_tensor_names": ["DEFAULT"], "data_type": "U16"})
    skipped: list[str] = []
    unverified: list[str] = []
    for name, p in assignment.items():
        op = ops.get(name, "")
        if op in NO_EFFECT_TYPES:
            if p is not default:
                skipped.append(name)
            continue
        if p is Precision.FLOAT and op in CONV_TYPES:
            p = Precision.INT16  # float_conv == "U16"
        if p is default:
            continue
        if p is Precision.FLOAT and op not in FP32_VERIFIED:
            unverified.append(f"{name} ({op or '?'})")
        layer_configs.append({"layer_name": name, "data_type": _DATA_TYPE[p]})

    folder = bundle_dir(out, "axera-pulsar2")
    images = calibration_images(ctx, "axera-pulsar2")
    n_images = len(images)
    size = n_images if calibration_size is None else min(int(calibration_size), n_images)

    cal = ctx.config.calibration
    method, note = _method(cal.method)
    pre = ctx.preprocess
    mean = [float(m) for m in pre.mean]
    std = [float(s) for s in pre.std]
    input_config: dict[str, Any] = {
        "tensor_name": ctx.input_name,
        "calibration_dataset": CALIBRATION_TAR,
        "calibration_format": calibration_format,
        "calibration_size": size,
    }
    processor: dict[str, Any] = {
        "tensor_name": ctx.input_name,
        "tensor_format": pre.color.upper(),
        "tensor_layout": "NCHW",
        "src_format": pre.color.upper(),
        "src_layout": "NHWC",
        "src_dtype": "U8",
    }
    if calibration_format == "Image":
        input_config["calibration_mean"] = mean
        input_config["calibration_std"] = std
    else:  # Numpy: the data is the model input; the runtime still normalises U8 pixels
        processor["mean"] = mean
        processor["std"] = std
    quant: dict[str, Any] = {"input_configs": [input_config], "calibration_method": method}
    if layer_configs:
        quant["layer_configs"] = layer_configs
    name = output_name or f"{ctx.label()}.axmodel"
    data: dict[str, Any] = {
        "model_type": "ONNX",
        "target_hardware": target_hardware,
        "npu_mode": npu_mode,
        "input": "model.onnx",
        "output_dir": output_dir,
        "output_name": name,
    }
    if layer_configs and disable_onnx_optimization:
        data["onnx_opt"] = {"disable_onnx_optimization": True}
    data["quant"] = quant
    data["input_processors"] = [processor]

    _, _, h, w = (tuple(ctx.input_shape) + (0, 0, 0, 0))[:4]
    counts = precision_counts(ctx)
    path = folder / f"{ctx.label()}_pulsar2.json"
    command = (f"pulsar2 build --input model.onnx --config {path.name} --output_dir {output_dir} "
               f"--output_name {name} --target_hardware {target_hardware}")
    if layer_configs and disable_onnx_optimization:
        names_note = ("layer_name values are the ONNX node names of model.onnx; Pulsar2 matches them against its "
                      "float-optimised graph (output/frontend/optimized.onnx), so onnx_opt.disable_onnx_optimization "
                      "is set to keep them; check the Layer Config Table in the build log")
    else:
        names_note = ("layer_name values are the ONNX node names of model.onnx; Pulsar2's onnxslim pass may rename or "
                      "fuse nodes (check output/frontend/optimized.onnx and the Layer Config Table)")
    if calibration_format == "Image":
        calib_note = (f"{CALIBRATION_TAR}: {n_images} PNG images, {pre.color} content in true colours, already at "
                      f"{h}x{w} ({pre.resize}) as autoq calibrated (Pulsar2's resize is then a no-op); "
                      f"calibration_mean/std {mean}/{std} (0..255 units, model colour order) applied by Pulsar2 as "
                      "autoq does")
    else:
        calib_note = (f"{CALIBRATION_TAR}: {n_images} .npy files, each autoq's exact model input float32 "
                      f"(1, 3, {h}, {w}) with mean/std applied (Pulsar2 feeds Numpy data unchanged); input_processors "
                      f"mean/std {mean}/{std} are the runtime normalisation of U8 NHWC input")
    assumptions = [
        names_note,
        ("int8 (U8) is Pulsar2's default and is not listed; layer_name items take precedence over the whole-graph "
         "(DEFAULT) item (pulsar2-docs: 指定算子 > 一类算子 > 某个子图)"),
        calib_note,
        f"weights: Pulsar2 chooses weight granularity itself; the trial's ({cal.granularity}) is not expressible",
    ]
    if default is Precision.INT16:
        assumptions.append("default int16: one whole-graph U16 item (start/end_tensor_names DEFAULT)")
    if ctx.config.default is Precision.FLOAT:
        assumptions.append("default float: written node by node (a whole-graph FP32 item would also cover Conv, "
                           "which Pulsar2 runs in no FP32)")
    if float_convs:
        assumptions.append(f"float_conv=U16: float Conv nodes written as U16: {join_names(float_convs)}")
    if skipped:
        assumptions.append(f"not listed (Reshape/Transpose take the type of the next compute op): {join_names(skipped)}")
    if unverified:
        assumptions.append(f"FP32 on op types outside Axera's verified FP32 list ({', '.join(FP32_VERIFIED)}): "
                           f"{join_names(unverified)}")
    if note:
        assumptions.append(f"calibration_method: {note}")
    if cal.method and cal.method.lower() == "percentile" and cal.percentile is not None:
        assumptions.append(f"calibration_method Percentile: Pulsar2 picks its own percentile; autoq used {cal.percentile}")
    if size < n_images:
        assumptions.append(f"calibration_size {size} of {n_images} images")
    header = header_lines(
        ctx,
        "Pulsar2 build config (JSON)",
        counts=f"{counts['int8']} int8, {counts['int16']} int16 (U16), {counts['float']} float (FP32)",
        assumptions=assumptions,
        run=f"./run.sh  ({command})",
    )
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    side = provenance_sidecar(path, header)
    model = copy_model(ctx, folder)
    if calibration_format == "Image":
        tar = write_calibration_tar(images, folder / CALIBRATION_TAR, pre.color)
    else:
        tar = _write_npy_tar(to_input(np.asarray(images), pre), folder / CALIBRATION_TAR)
    script = write_run_script(folder, [command], comment=[f"Pulsar2 build of {ctx.label()} (written by autoq)"])
    return [path, side, model, tar, script]


def _write_npy_tar(inputs: np.ndarray, path: Path) -> Path:
    """One ``.npy`` member per model input ``(1, 3, H, W)`` float32, fixed mtimes."""
    with tarfile.open(path, "w") as tar:
        for k, x in enumerate(inputs):
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(x[None], dtype=np.float32))
            raw = buf.getvalue()
            info = tarfile.TarInfo(f"{k:04d}.npy")
            info.size = len(raw)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(raw))
    return path


def read_pulsar2(path: Path) -> tuple[dict[str, Precision], dict[str, Any]]:
    """Parses a Pulsar2 JSON config strictly.

    Returns (layer_name -> precision of the ``layer_configs`` items naming one layer, calibration)
    where calibration has ``default`` (from a whole-graph ``DEFAULT`` item, else int8),
    ``calibration_method``, ``calibration_dataset``, ``calibration_format``, ``calibration_size``,
    ``mean`` and ``std`` (from ``input_processors`` when the input config has none).
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
    procs = data.get("input_processors") or [{}]
    proc = procs[0] if isinstance(procs[0], Mapping) else {}
    calibration = {
        "default": default,
        "calibration_method": method,
        "calibration_dataset": first.get("calibration_dataset"),
        "calibration_format": first.get("calibration_format", "Image"),
        "calibration_size": first.get("calibration_size"),
        "mean": first.get("calibration_mean", proc.get("mean")),
        "std": first.get("calibration_std", proc.get("std")),
    }
    return nodes, calibration


def _method(method: str) -> tuple[str, str]:
    m = (method or "minmax").lower()
    exact = {"minmax": "MinMax", "max": "MinMax", "percentile": "Percentile", "mse": "MSE", "kl": "KL",
             "entropy": "KL"}
    if m in exact:
        return exact[m], "" if m != "entropy" else "entropy -> KL"
    return "MinMax", f"nearest equivalent: autoq method {method!r} has no Pulsar2 counterpart; MinMax"
