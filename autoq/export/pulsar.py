"""Axera Pulsar (AX620A / AX630A) ``config.prototxt`` for ``pulsar build``.

What a trial decides maps onto Pulsar like this:

* int16 nodes -> ``neuwizard_conf.operator_conf.operator_conf_items`` with
  ``selector { op_name: "<node>" } attributes { input_feature_type: UINT16 weight_type: INT8 }``;
* int8 is Pulsar's default and is not listed; a trial whose default is int16 gets one item with an
  empty selector (= the whole model) at UINT16 and per-node UINT8 items for its int8 nodes;
* float nodes: Pulsar's config has no per-node CPU fallback, so they are refused
  (``ExportError`` naming them) unless ``float_as_uint16=True``, which writes them as UINT16 (the
  most accurate thing the NPU can do) with a comment on each item; read back they are int16;
* weight granularity -> ``calibration_strategy`` CALIB_STRATEGY_PER_CHANNEL | PER_TENSOR;
* the range method -> ``observer_method``: minmax -> OBSVR_METHOD_MIN_MAX, anything else ->
  OBSVR_METHOD_MSE_CLIPPING (nearest equivalent, noted in a comment).

Written with `autoq.export.prototxt`; the header comment has provenance and assumptions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoq.errors import ConfigError, ExportError
from autoq.export.base import (
    EXPORTERS,
    ExportContext,
    check_choice,
    check_model_nodes,
    comment_block,
    header_lines,
    join_names,
    out_file,
    precision_counts,
)
from autoq.export.prototxt import Ident, dump_prototxt, parse_prototxt
from autoq.plan import Precision

__all__ = ["read_pulsar", "write_pulsar"]

TARGETS = ("AX620", "AX630")
COLOR_SPACES = ("BGR", "RGB", "GRAY", "NV12", "NV21")
_FEATURE = {Precision.INT8: "UINT8", Precision.INT16: "UINT16"}


@EXPORTERS.register("axera-pulsar")
def write_pulsar(
    ctx: ExportContext,
    out: Path,
    *,
    target_hardware: str = "AX620",
    src_color_space: str | None = None,
    float_as_uint16: bool = False,
    calibration_tar: str | None = None,
    calibration_size: int = 32,
    batch_size: int = 1,
    output_path: str | None = None,
) -> list[Path]:
    """Writes ``<label>_pulsar.prototxt``; returns ``[path]``.

    ``src_color_space`` is what the runtime feeds (default: the model's colour order; NV12/NV21
    allowed). ``calibration_tar`` defaults to ``<calib_dir>.tar`` (Pulsar reads a tar of images).
    ``float_as_uint16`` writes float nodes as UINT16 instead of refusing them.
    """
    check_choice("target_hardware", target_hardware, TARGETS)
    dst_color = ctx.preprocess.color.upper()
    src_color = (src_color_space or dst_color).upper()
    check_choice("src_color_space", src_color, COLOR_SPACES)
    if calibration_size < 1 or batch_size < 1:
        raise ConfigError("export options calibration_size and batch_size must be >= 1")
    check_model_nodes(ctx)

    assignment = ctx.assignment()
    floats = [n for n, p in assignment.items() if p is Precision.FLOAT]
    if floats and not float_as_uint16:
        raise ExportError(
            f"Pulsar has no per-node float (CPU) fallback: float nodes {join_names(floats)}; pick a trial "
            "without float nodes or pass float_as_uint16=True to run them as UINT16"
        )

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
    for name, p in assignment.items():
        if as_npu(p) is default:
            continue
        item: dict[str, Any] = {}
        if p is Precision.FLOAT:
            item["#"] = "autoq: float node, written as UINT16 (Pulsar has no per-node float fallback)"
        item["selector"] = {"op_name": name}
        item["attributes"] = {"input_feature_type": Ident(_FEATURE[as_npu(p)]), "weight_type": Ident("INT8")}
        items.append(item)

    cal = ctx.config.calibration
    method = (cal.method or "minmax").lower()
    observer = "OBSVR_METHOD_MIN_MAX" if method in ("minmax", "max") else "OBSVR_METHOD_MSE_CLIPPING"
    tar = calibration_tar or (f"{ctx.calib_dir}.tar" if ctx.calib_dir is not None else "./calibration.tar")
    dataset: dict[str, Any] = {
        "path": tar,
        "type": Ident("DATASET_TYPE_TAR"),
        "size": int(calibration_size),
        "batch_size": int(batch_size),
        "calibration_strategy": Ident(
            "CALIB_STRATEGY_PER_CHANNEL" if cal.granularity == "per_channel" else "CALIB_STRATEGY_PER_TENSOR"
        ),
    }
    if observer != "OBSVR_METHOD_MIN_MAX":
        dataset["#"] = f"autoq: nearest equivalent of range method {cal.method!r}"
    dataset["observer_method"] = Ident(observer)

    neuwizard: dict[str, Any] = {}
    if items:
        neuwizard["operator_conf"] = {"operator_conf_items": items}
    neuwizard["dataset_conf_calibration"] = dataset
    body = {
        "input_path": str(ctx.model_path),
        "input_type": Ident("INPUT_TYPE_ONNX"),
        "output_path": output_path or f"{ctx.label()}.joint",
        "output_type": Ident("OUTPUT_TYPE_JOINT"),
        "target_hardware": Ident(f"TARGET_HARDWARE_{target_hardware}"),
        "src_input_tensors": {"color_space": Ident(f"TENSOR_COLOR_SPACE_{src_color}")},
        "dst_input_tensors": {"color_space": Ident(f"TENSOR_COLOR_SPACE_{dst_color}")},
        "neuwizard_conf": neuwizard,
    }

    pre = ctx.preprocess
    _, _, h, w = (tuple(ctx.input_shape) + (0, 0, 0, 0))[:4]
    counts = precision_counts(ctx)
    assumptions = [
        f"op_name selectors are node names of {ctx.model_path}; check pulsar's log for names it cannot match",
        "int8 (UINT8 features, INT8 weights) is Pulsar's default and is not listed",
        f"the calibration tar holds {pre.color} images resized to {h}x{w} the way autoq does "
        f"({pre.resize}); if {tar} does not exist, tar the calibration images into it",
    ]
    if not pre.is_raw():
        assumptions.append(
            f"the model expects (pixel - mean) / std with mean {list(pre.mean)} std {list(pre.std)}: this is not "
            "written here; add it to the ONNX or to Pulsar's input_conf_items before building"
        )
    if floats:
        assumptions.append(f"float_as_uint16: {len(floats)} float nodes run as UINT16 on the NPU, not on the CPU "
                           "as autoq measured them")
    header = header_lines(
        ctx,
        "Axera Pulsar config.prototxt",
        counts=f"{counts['int8']} int8, {counts['int16']} int16, {counts['float']} float",
        assumptions=assumptions,
        run=f"pulsar build --input {ctx.model_path} --output {body['output_path']} --config <this file>",
    )
    path = out_file(ctx, out, "_pulsar.prototxt")
    path.write_text(comment_block(header) + "\n" + dump_prototxt(body), encoding="utf-8")
    return [path]


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
