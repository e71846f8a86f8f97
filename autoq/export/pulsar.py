"""Axera Pulsar (AX620A / AX630A): the bundle ``autoq export --format axera-pulsar -o DIR`` writes.

The folder holds everything ``pulsar build`` reads, with paths relative to it:

* ``<label>_pulsar.prototxt``: the config (``input_path: "model.onnx"``; Pulsar resolves it from
  the config's folder, pulsar-docs ``source/test_configs/config.rst`` "input_path");
* ``model.onnx``: the model the selectors name (the trial's resolution and variant);
* ``calibration.tar``: the calibration images autoq calibrated on, as PNG (lossless), already
  resized/letterboxed to the model's input size (Pulsar's own resize is then a no-op), in true
  colours (a standard PNG reader sees them as they are; Pulsar converts to ``src_input_tensors``'
  colour space); ``dataset_conf_calibration { path type: DATASET_TYPE_TAR size }`` names it;
* ``run.sh``: ``pulsar build --input model.onnx --output <label>.joint --config <cfg>
  --output_config output_config.prototxt --target_hardware AX620``.

What a trial decides maps onto the config like this:

* int16 nodes -> ``neuwizard_conf.operator_conf.operator_conf_items`` with
  ``selector { op_name: "<name>" } attributes { input_feature_type: UINT16 weight_type: INT8 }``
  (pulsar-docs ``user_guides_advanced/advanced_guides.rst`` "16bit 量化");
* ``op_name`` is the node's *output tensor* name by default (``op_name_from="output_tensor"``):
  the selectors Pulsar itself writes (mixbit search output, same guide) are tensor names
  (``op_name: "192"``), and the selector of ``input_conf_items`` is documented as "the full name
  of the tensor"; ``op_name_from="node"`` writes ONNX node names instead;
* int8 is Pulsar's default and is not listed; a trial whose default is int16 gets one item with an
  empty selector (= the whole model) at UINT16 and per-node UINT8 items for its int8 nodes;
* float nodes: Pulsar's config has no per-node CPU fallback, so they are refused
  (``ExportError`` naming them and the option) unless ``float_as_uint16=True``, which writes them
  as UINT16 (the most accurate thing the NPU can do) with a comment on each item; read back they
  are int16;
* weight granularity -> ``calibration_strategy`` CALIB_STRATEGY_PER_CHANNEL | PER_TENSOR;
* the range method -> ``observer_method``: minmax -> OBSVR_METHOD_MIN_MAX, anything else ->
  OBSVR_METHOD_MSE_CLIPPING (nearest equivalent, noted in a comment);
* colours: ``src_input_tensors`` describes model.onnx's input (the model's colour order),
  ``dst_input_tensors`` what the built ``.joint`` is fed (``runtime_color_space``, default the same);
* mean/std -> ``input_conf_items { attributes { input_modifications { input_normalization
  { mean std } } } }`` (0..255 units, the order of ``src_input_tensors``' colour space = the
  model's), when the model does not take raw pixels.

Written with `autoq.export.prototxt`; the header comment has provenance and assumptions.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx

from autoq.errors import ConfigError, ExportError
from autoq.export.base import (
    EXPORTERS,
    ExportContext,
    bundle_dir,
    calibration_images,
    check_choice,
    check_model_nodes,
    comment_block,
    copy_model,
    header_lines,
    join_names,
    precision_counts,
    write_run_script,
)
from autoq.export.prototxt import Ident, dump_prototxt, parse_prototxt
from autoq.plan import Precision

__all__ = ["node_output_names", "read_pulsar", "write_calibration_tar", "write_pulsar"]

TARGETS = ("AX620", "AX630")
COLOR_SPACES = ("BGR", "RGB", "GRAY", "NV12", "NV21")
OP_NAME_FROM = ("output_tensor", "node")
CALIBRATION_TAR = "calibration.tar"
_FEATURE = {Precision.INT8: "UINT8", Precision.INT16: "UINT16"}


@EXPORTERS.register("axera-pulsar")
def write_pulsar(
    ctx: ExportContext,
    out: Path,
    *,
    target_hardware: str = "AX620",
    runtime_color_space: str | None = None,
    float_as_uint16: bool = False,
    op_name_from: str = "output_tensor",
    calibration_size: int | None = None,
    batch_size: int = 1,
    output_path: str | None = None,
) -> list[Path]:
    """Writes the bundle (config, model.onnx, calibration.tar, run.sh) into the folder ``out``.

    ``target_hardware``: AX620 or AX630. ``runtime_color_space``: what the built model is fed
    (``dst_input_tensors``; default: the model's colour order; NV12/NV21 allowed). ``float_as_uint16``: write float nodes as UINT16
    (Pulsar has no per-node float fallback; without it a trial with float nodes is refused).
    ``op_name_from``: operator_conf_items selectors name the node's output tensor
    (``output_tensor``, default) or the ONNX node (``node``). ``calibration_size``: images Pulsar
    samples (default: all images written). ``batch_size``: calibration batch size.
    ``output_path``: the ``.joint`` to build (default ``<label>.joint``).
    Returns the files written, the config first.
    """
    check_choice("target_hardware", target_hardware, TARGETS)
    check_choice("op_name_from", op_name_from, OP_NAME_FROM)
    model_color = ctx.preprocess.color.upper()
    runtime_color = (runtime_color_space or model_color).upper()
    check_choice("runtime_color_space", runtime_color, COLOR_SPACES)
    if batch_size < 1 or (calibration_size is not None and calibration_size < 1):
        raise ConfigError("export options calibration_size and batch_size must be >= 1")
    check_model_nodes(ctx)

    assignment = ctx.assignment()
    floats = [n for n, p in assignment.items() if p is Precision.FLOAT and n not in ctx.toolchain_decides]
    if floats and not float_as_uint16:
        raise ExportError(
            f"Pulsar has no per-node float (CPU) fallback: float nodes {join_names(floats)}; pick a trial "
            "without float nodes or set the export option float_as_uint16 (runs them as UINT16 on the NPU)"
        )
    outputs = node_output_names(ctx.model_path) if op_name_from == "output_tensor" else {}

    def selector_name(node: str) -> str:
        if op_name_from == "node":
            return node
        names = outputs.get(node)
        if not names:
            raise ExportError(f"node {node!r} is not in {ctx.model_path}; export the trial with its own model")
        return names[0]

    def as_npu(p: Precision) -> Precision:
        return Precision.INT16 if p is Precision.FLOAT else p

    default = as_npu(ctx.config.default)
    items: list[dict[str, Any]] = []
    if default is not Precision.INT8:
        whole: dict[str, Any] = {}
        if ctx.config.default is Precision.FLOAT:
            whole["#"] = "autoq: the trial's default is float; Pulsar has no float, so the whole model runs UINT16"
        whole["selector"] = {}
        whole["attributes"] = {"input_feature_type": Ident("UINT16"), "weight_type": Ident("INT8")}
        items.append(whole)
    multi = []
    for name, p in assignment.items():
        if as_npu(p) is default or name in ctx.toolchain_decides:  # Pulsar places those itself
            continue
        item: dict[str, Any] = {}
        if p is Precision.FLOAT:
            item["#"] = "autoq: float node, written as UINT16 (Pulsar has no per-node float fallback)"
        if op_name_from == "output_tensor" and len(outputs.get(name, ())) > 1:
            multi.append(name)
        if op_name_from == "output_tensor":
            item["#node"] = f"node: {name}"
        item["selector"] = {"op_name": selector_name(name)}
        item["attributes"] = {"input_feature_type": Ident(_FEATURE[as_npu(p)]), "weight_type": Ident("INT8")}
        items.append(item)

    folder = bundle_dir(out, "axera-pulsar")
    images = calibration_images(ctx, "axera-pulsar")
    n_images = len(images)
    size = n_images if calibration_size is None else min(int(calibration_size), n_images)

    cal = ctx.config.calibration
    method = (cal.method or "minmax").lower()
    observer = "OBSVR_METHOD_MIN_MAX" if method in ("minmax", "max") else "OBSVR_METHOD_MSE_CLIPPING"
    dataset: dict[str, Any] = {
        "path": CALIBRATION_TAR,
        "type": Ident("DATASET_TYPE_TAR"),
        "size": size,
        "batch_size": int(batch_size),
        "calibration_strategy": Ident(
            "CALIB_STRATEGY_PER_CHANNEL" if cal.granularity == "per_channel" else "CALIB_STRATEGY_PER_TENSOR"
        ),
    }
    if observer != "OBSVR_METHOD_MIN_MAX":
        dataset["#"] = f"autoq: nearest equivalent of range method {cal.method!r}"
    dataset["observer_method"] = Ident(observer)

    pre = ctx.preprocess
    operator_conf: dict[str, Any] = {}
    if not pre.is_raw():
        operator_conf["input_conf_items"] = {
            "#": "autoq: the model takes (pixel - mean) / std, mean/std in 0..255 units and the model's colour order",
            "selector": {"op_name": ctx.input_name},
            "attributes": {"input_modifications": {"input_normalization": {
                "mean": [float(m) for m in pre.mean], "std": [float(s) for s in pre.std]}}},
        }
    if items:
        operator_conf["operator_conf_items"] = items
    neuwizard: dict[str, Any] = {}
    if operator_conf:
        neuwizard["operator_conf"] = operator_conf
    neuwizard["dataset_conf_calibration"] = dataset
    joint = output_path or f"{ctx.label()}.joint"
    body = {
        "input_path": "model.onnx",
        "input_type": Ident("INPUT_TYPE_ONNX"),
        "output_path": joint,
        "output_type": Ident("OUTPUT_TYPE_JOINT"),
        "target_hardware": Ident(f"TARGET_HARDWARE_{target_hardware}"),
        "src_input_tensors": {"tensor_name": ctx.input_name, "color_space": Ident(f"TENSOR_COLOR_SPACE_{model_color}")},
        "dst_input_tensors": {"tensor_name": ctx.input_name,
                              "color_space": Ident(f"TENSOR_COLOR_SPACE_{runtime_color}")},
        "neuwizard_conf": neuwizard,
    }

    _, _, h, w = (tuple(ctx.input_shape) + (0, 0, 0, 0))[:4]
    counts = precision_counts(ctx)
    path = folder / f"{ctx.label()}_pulsar.prototxt"
    command = (f"pulsar build --input model.onnx --output {joint} --config {path.name} "
               f"--output_config output_config.prototxt --target_hardware {target_hardware}")
    if op_name_from == "output_tensor":
        names_note = ("op_name selectors are the output tensor names of the nodes in model.onnx (Pulsar's own mixbit "
                      "output names tensors); pass op_name_from=node for ONNX node names; check pulsar's log for "
                      "names it cannot match")
    else:
        names_note = "op_name selectors are the ONNX node names of model.onnx; check pulsar's log for names it cannot match"
    calib_note = (f"{CALIBRATION_TAR} holds {n_images} PNG images, {pre.color} content stored in true colours, already "
                  f"at {h}x{w} ({pre.resize}) exactly as autoq calibrated (Pulsar's resize is then a no-op); "
                  f"dataset size {size} (Pulsar samples that many at random)")
    assumptions = [names_note, "int8 (UINT8 features, INT8 weights) is Pulsar's default and is not listed", calib_note]
    if not pre.is_raw():
        assumptions.append(f"input_normalization mean {list(pre.mean)} std {list(pre.std)} (0..255 units, "
                           f"{model_color} order, the order of src_input_tensors' colour space)")
    if floats:
        assumptions.append(f"float_as_uint16: {len(floats)} float nodes run as UINT16 on the NPU, not in float "
                           "as autoq measured them")
    if multi:
        assumptions.append(f"nodes with several outputs are selected by their first output: {join_names(multi)}")
    header = header_lines(
        ctx,
        "Axera Pulsar config.prototxt",
        counts=f"{counts['int8']} int8, {counts['int16']} int16, {counts['float']} float",
        assumptions=assumptions,
        run=f"./run.sh  ({command})",
    )
    path.write_text(comment_block(header) + "\n" + dump_prototxt(body), encoding="utf-8")
    model = copy_model(ctx, folder)
    tar = write_calibration_tar(images, folder / CALIBRATION_TAR, pre.color)
    script = write_run_script(folder, [command], comment=[f"Axera Pulsar build of {ctx.label()} (written by autoq)"])
    return [path, model, tar, script]


def node_output_names(model_path: Path) -> dict[str, list[str]]:
    """ONNX node name -> its output tensor names (``ExportError`` when the model cannot be read)."""
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any load failure means "cannot name tensors"
        raise ExportError(f"cannot read {model_path} to name the nodes' tensors ({exc}); pass op_name_from=node "
                          "or export from a project") from None
    return {n.name: [o for o in n.output if o] for n in model.graph.node}


def write_calibration_tar(images: np.ndarray, path: Path, color: str) -> Path:
    """``images`` (uint8 NHWC in the model's colour order ``color``) as lossless PNG members
    ``0000.png``... of the tar ``path``, stored in true colours (a PNG reader sees RGB as RGB).
    Deterministic (fixed mtimes) so re-exports are byte-identical."""
    with tarfile.open(path, "w") as tar:
        for k, image in enumerate(images):
            bgr = image[..., ::-1] if color == "rgb" else image
            ok, data = cv2.imencode(".png", np.ascontiguousarray(bgr))
            if not ok:
                raise ExportError(f"cannot encode calibration image {k} as PNG")
            raw = data.tobytes()
            info = tarfile.TarInfo(f"{k:04d}.png")
            info.size = len(raw)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(raw))
    return path


def read_pulsar(path: Path) -> tuple[dict[str, Precision], dict[str, Any]]:
    """Parses a Pulsar config.prototxt strictly.

    Returns (op_name -> precision of the listed operator_conf_items: UINT16 -> int16, UINT8/INT8 ->
    int8, calibration) where calibration has ``default`` (int16 when an item with an empty selector
    sets UINT16, else int8), ``granularity``, ``observer_method``, ``path``, ``size``, ``batch_size``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"pulsar config {path}: cannot read it ({exc})") from None
    msg = parse_prototxt(text)
    where = f"pulsar config {path}"
    if _one(msg, "input_type", where) != "INPUT_TYPE_ONNX":
        raise ConfigError(f"{where}: input_type must be INPUT_TYPE_ONNX")
    neuwizard = _one(msg, "neuwizard_conf", where) or {}
    nodes: dict[str, Precision] = {}
    default = Precision.INT8
    for op_conf in neuwizard.get("operator_conf", []):
        for item in op_conf.get("operator_conf_items", []):
            attrs = _one(item, "attributes", where) or {}
            feature = _one(attrs, "input_feature_type", where)
            if feature not in ("UINT8", "INT8", "UINT16", "INT16"):
                raise ConfigError(f"{where}: input_feature_type {feature!r} is not UINT8/INT8/UINT16/INT16")
            p = Precision.INT16 if feature.endswith("16") else Precision.INT8
            selector = _one(item, "selector", where) or {}
            names = selector.get("op_name", [])
            if not names:
                if set(selector) - {"op_name"}:
                    continue  # op_type or other selectors: not per node
                default = p
            for name in names:
                if not isinstance(name, str) or isinstance(name, Ident):
                    raise ConfigError(f"{where}: op_name must be a quoted string, got {name!r}")
                nodes[name] = p
    dataset = _one(neuwizard, "dataset_conf_calibration", where) or {}
    strategy = _one(dataset, "calibration_strategy", where)
    if strategy not in (None, "CALIB_STRATEGY_PER_CHANNEL", "CALIB_STRATEGY_PER_TENSOR"):
        raise ConfigError(f"{where}: unknown calibration_strategy {strategy!r}")
    observer = _one(dataset, "observer_method", where)
    if observer not in (None, "OBSVR_METHOD_MIN_MAX", "OBSVR_METHOD_MSE_CLIPPING"):
        raise ConfigError(f"{where}: unknown observer_method {observer!r}")
    calibration = {
        "default": default,
        "granularity": "per_channel" if strategy == "CALIB_STRATEGY_PER_CHANNEL" else "per_tensor",
        "observer_method": str(observer) if observer is not None else None,
        "path": _one(dataset, "path", where),
        "size": _one(dataset, "size", where),
        "batch_size": _one(dataset, "batch_size", where),
    }
    return nodes, calibration


def _one(msg: dict[str, list[Any]], name: str, where: str) -> Any:
    values = msg.get(name, [])
    if len(values) > 1:
        raise ConfigError(f"{where}: field {name!r} appears {len(values)} times; expected at most once")
    return values[0] if values else None
