"""Vastai ``vamc`` bundle (VastModelZOO build-YAML style): int8 with float Conv/MatMul layers kept fp16.

``autoq export --format vastai -o DIR`` writes::

    DIR/<label>_vamc.yaml   the build config (``vamc compile <label>_vamc.yaml``)
    DIR/model.onnx          the model it names (frontend.checkpoint, relative)
    DIR/calib/0000.npz ...  calibration inputs: one npz per image, key = the model's input name,
                            float32 (1, 3, H, W) = autoq's exact model input (letterbox/resize,
                            colour order, mean/std: ``to_input(ctx.calib_images(), ctx.preprocess)``)
    DIR/run.sh              ``vamc compile <label>_vamc.yaml``

What a trial decides maps onto vamc like this:

* int8 -> ``backend.dtype: int8``; an all-float trial -> ``backend.dtype: fp16`` (no quantize, no dataset);
* float Conv nodes -> ``quantize.skip_conv_layers``: the 0-based index among the model's **Conv**
  nodes in ONNX graph order (vamc/TVM count ``conv2d`` layers: VastModelZOO
  ``cv/detection/yolov12/build_in/build/official_yolov12_int8.yaml``); float MatMul nodes ->
  ``quantize.skip_matmul_layers`` (index among MatMul nodes; VastModelZOO
  ``cv/text_recognition/ppocr_v4_rec/build_in/build/ppocr_v4_rec.yaml``). Each index is followed
  by a ``# autoq-layer <i>: <node>`` comment;
* float nodes of any other type have no per-layer vamc list (``exclude_layers`` counts vamc's own
  layers, not ONNX nodes): refused (``ExportError``) unless ``other_float="int8"`` lets vamc quantize
  them (then listed in the header);
* int16 has no vamc counterpart: refused;
* ``calibrate_mode``: minmax -> max, percentile -> percentile, mse -> mse, kl -> kl_divergence;
  weight granularity -> ``quantize_per_channel``.

Calibration data: the ``tvm`` dataset reads ``.npz`` files keyed by input name when
``sampler.suffix: npz`` (VastModelZOO ``cv/detection_3d/center_point/build_in/build/official_kitti_center_point.yaml``,
``nlp/sentence_classification/bert/modelscope/build_in/build/bert_modelscope.yaml``); such configs
carry no ``process_ops`` because the tensors are already preprocessed. This is exact: vamc's image
``process_ops`` (``Resize adaptive_side: long`` + ``Pad pad_to_square``) cannot be shown to pad at
the top-left with autoq's pad value, so images would not be.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from autoq.data.preprocess import to_input
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
    one_line,
    precision_counts,
    write_run_script,
)
from autoq.plan import Precision

__all__ = ["CALIBRATE_MODES", "SKIP_LISTS", "read_vastai", "write_vastai"]

#: autoq range method -> vamc ``calibrate_mode``
CALIBRATE_MODES = {"minmax": "max", "max": "max", "percentile": "percentile", "mse": "mse", "kl": "kl_divergence"}
#: ONNX op type -> the vamc quantize list that keeps such layers fp16 (index among nodes of that type)
SKIP_LISTS = {"Conv": "skip_conv_layers", "MatMul": "skip_matmul_layers"}
_LAYER_COMMENT = re.compile(r"^\s*#\s*autoq-layer\s+(\d+):\s?(.*)$")


@EXPORTERS.register("vastai")
def write_vastai(
    ctx: ExportContext,
    out: Path,
    *,
    calibration_size: int = 32,
    workspace: str = "./deploy_weights",
    other_float: str = "refuse",
) -> list[Path]:
    """Writes the vamc bundle into the folder ``out``; returns the files, the YAML first.

    ``calibration_size``: how many calibration inputs to ship (``sampler.get_data_num``).
    ``workspace``: vamc's ``workspace.path``.
    ``other_float``: float nodes vamc cannot keep fp16 (not Conv/MatMul): ``refuse`` or ``int8``.
    """
    if calibration_size < 1:
        raise ConfigError("export option calibration_size must be >= 1")
    check_choice("other_float", other_float, ("refuse", "int8"))
    check_model_nodes(ctx)
    assignment = ctx.assignment()
    int16s = [n for n, p in assignment.items() if p is Precision.INT16]
    if int16s:
        raise ExportError(
            f"vamc has no int16: nodes {join_names(int16s)}; pick a trial without int16 nodes "
            "(or search with space.precisions [int8, float] for Vastai)"
        )
    names = list(ctx.node_names)
    floats = [n for n in names if assignment[n] is Precision.FLOAT]
    all_float = bool(names) and len(floats) == len(names) or (not names and ctx.config.default is Precision.FLOAT)
    others = [n for n in floats if ctx.node_ops.get(n) not in SKIP_LISTS and n not in ctx.toolchain_decides]
    if others and not all_float and other_float == "refuse":
        raise ExportError(
            f"vamc keeps only Conv (skip_conv_layers) and MatMul (skip_matmul_layers) layers in fp16: float nodes "
            f"{join_names([f'{n} ({ctx.node_ops.get(n)})' for n in others])} cannot be expressed; pick another "
            "trial or pass other_float='int8' to let vamc quantize them"
        )
    # index of every node among the model's nodes of its type, in graph order (node_ops keeps graph order)
    by_type: dict[str, list[str]] = {op: [n for n, t in ctx.node_ops.items() if t == op] for op in SKIP_LISTS}
    skips: dict[str, list[int]] = {key: [] for key in SKIP_LISTS.values()}
    labels: dict[str, dict[int, str]] = {key: {} for key in SKIP_LISTS.values()}
    for n in floats:
        op = ctx.node_ops.get(n)
        if op in SKIP_LISTS:
            i = by_type[op].index(n)
            skips[SKIP_LISTS[op]].append(i)
            labels[SKIP_LISTS[op]][i] = n

    cal = ctx.config.calibration
    method = (cal.method or "minmax").lower()
    if method not in CALIBRATE_MODES:
        raise ExportError(f"calibration method {cal.method!r} has no vamc calibrate_mode "
                          f"(known: {', '.join(sorted(CALIBRATE_MODES))})")
    folder = bundle_dir(out, "vastai")
    label = ctx.label()
    model = copy_model(ctx, folder)
    backend: dict[str, Any] = {"type": "tvm_vacc", "dtype": "fp16" if all_float else "int8"}
    data: dict[str, Any] = {
        "name": label,
        "frontend": {
            "shape": {ctx.input_name: [int(d) for d in ctx.input_shape]},
            "type": "onnx",
            "checkpoint": model.name,
            "dtype": "fp32",
        },
        "backend": backend,
    }
    calib_files: list[Path] = []
    if not all_float:
        quantize: dict[str, Any] = {
            "calibrate_mode": CALIBRATE_MODES[method],
            "quantize_per_channel": cal.granularity == "per_channel",
        }
        quantize.update({k: sorted(v) for k, v in skips.items() if v})
        backend["quantize"] = quantize
        calib_files = _write_calibration(ctx, folder / "calib", calibration_size)
        data["dataset"] = {
            "type": "tvm",
            "path": "calib",
            "sampler": {"suffix": "npz", "get_data_num": len(calib_files)},
        }
    data["workspace"] = {"path": workspace}
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True, width=4096)
    body = _annotate(body, labels)

    counts = precision_counts(ctx)
    config_name = f"{label}_vamc.yaml"
    assumptions = [
        (
            "skip_conv_layers / skip_matmul_layers ids: 0-based index among the model's Conv / MatMul nodes in "
            "ONNX graph order (each id is followed by an '# autoq-layer <i>: <node>' comment); check them against "
            "vamc's layer listing"
        ),
        "float layers are kept fp16 by vamc (not fp32 on a CPU as autoq measured them)",
        (
            "calib/*.npz hold autoq's exact preprocessed inputs (float32 NCHW, key = input name), so the dataset "
            "has no process_ops"
        ),
    ]
    if others and not all_float:
        assumptions.append(f"float nodes vamc cannot keep fp16 are quantized int8 by vamc: {join_names(others)}")
    if method == "percentile" and cal.percentile is not None:
        assumptions.append(f"vamc picks its own percentile; autoq used {cal.percentile}")
    run = f"vamc compile {config_name}"
    header = header_lines(
        ctx,
        "Vastai vamc build config",
        counts=f"{counts['int8']} int8, {counts['float']} float (fp16)",
        assumptions=assumptions,
        run=f"sh run.sh   ({run})",
    )
    path = folder / config_name
    path.write_text(comment_block(header) + "\n" + body, encoding="utf-8")
    script = write_run_script(folder, [run], comment=[f"autoq export of {label}: builds the vamc model"])
    return [path, model, script, *calib_files]


def _write_calibration(ctx: ExportContext, folder: Path, limit: int) -> list[Path]:
    """``calib/<k>.npz`` with ``{input_name: float32 (1, 3, H, W)}``: autoq's exact model input."""
    images = calibration_images(ctx, "vastai")[:limit]
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k, image in enumerate(images):
        path = folder / f"{k:04d}.npz"
        np.savez(path, **{ctx.input_name: np.ascontiguousarray(to_input(image[None], ctx.preprocess), np.float32)})
        files.append(path)
    return files


def read_vastai(path: Path) -> tuple[dict[str, Precision], dict[str, Any]]:
    """Parses a vamc YAML written by `write_vastai` strictly.

    Returns (node -> float for each ``skip_conv_layers`` / ``skip_matmul_layers`` id, named by the
    ``# autoq-layer`` comments; calibration). An all-fp16 backend yields no nodes and
    ``default: float``. Calibration has ``default``, ``calibrate_mode``, ``granularity`` and the raw
    id lists under their vamc keys.
    """
    path = Path(path)
    where = f"vamc config {path}"
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{where}: cannot read it as YAML ({exc})") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("backend"), Mapping):
        raise ConfigError(f"{where}: expected name, frontend, backend, dataset")
    dtype = data["backend"].get("dtype")
    if dtype not in ("int8", "fp16"):
        raise ConfigError(f"{where}: backend.dtype {dtype!r} is not int8 or fp16")
    if dtype == "fp16":
        return {}, {"default": Precision.FLOAT, "calibrate_mode": None, "granularity": None}
    quantize = data["backend"].get("quantize") or {}
    mode = quantize.get("calibrate_mode", "percentile")
    if mode not in set(CALIBRATE_MODES.values()):
        raise ConfigError(f"{where}: calibrate_mode {mode!r} is not one of {sorted(set(CALIBRATE_MODES.values()))}")
    comments: dict[str, dict[int, str]] = {}
    section = None
    for line in text.splitlines():
        key = line.strip().split(":", 1)[0]
        if key in SKIP_LISTS.values():
            section = key
        m = _LAYER_COMMENT.match(line)
        if m and section:
            comments.setdefault(section, {})[int(m.group(1))] = m.group(2)
    nodes: dict[str, Precision] = {}
    calibration: dict[str, Any] = {
        "default": Precision.INT8,
        "calibrate_mode": mode,
        "granularity": "per_channel" if quantize.get("quantize_per_channel") else "per_tensor",
    }
    for key in SKIP_LISTS.values():
        ids = quantize.get(key) or []
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ConfigError(f"{where}: {key} must be a list of integer layer ids")
        for i in ids:
            if i not in comments.get(key, {}):
                raise ConfigError(f"{where}: {key} id {i} has no '# autoq-layer' comment")
            nodes[comments[key][i]] = Precision.FLOAT
        calibration[key] = list(ids)
    return nodes, calibration


def _annotate(body: str, labels: Mapping[str, Mapping[int, str]]) -> str:
    """Adds the ``# autoq-layer <i>: <node>`` comment after each item of the skip lists."""
    out: list[str] = []
    section: str | None = None
    for line in body.split("\n"):
        stripped = line.strip()
        key = stripped.split(":", 1)[0]
        if key in labels:
            section = key
            out.append(line)
            continue
        m = re.match(r"^\s*-\s+(\d+)\s*$", line)
        if section and m:
            out.append(line)
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}# autoq-layer {m.group(1)}: {one_line(labels[section][int(m.group(1))])}")
            continue
        section = None
        out.append(line)
    return "\n".join(out)
