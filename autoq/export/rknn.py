"""Rockchip RKNN-Toolkit2: a bundle ``autoq export --format rknn -o DIR`` writes and the toolkit builds.

RKNN-Toolkit2 runs in its own environment (``scripts/install-rknn-toolkit.sh VENV``); the bundle
is everything it needs, and nothing imports it into autoq:

* ``<name>.quantization.cfg``: the hybrid-quantization cfg shape step1 writes, with autoq's
  ``custom_quantize_layers: {<tensor>: int16 | float16}`` and ``quantize_parameters: {}`` (only
  step1 can fill those: RKNN recalibrates from the dataset and refuses edited scales). Keys are
  the tensors step1 names (`autoq.export.rknn_names`): a SiLU's Sigmoid is fused into its Mul (the
  Mul's output carries the unit's precision, the higher of the two when the trial differs),
  3-D activations are ``X-rs``, folded nodes have none. int16 -> ``int16``, float -> ``float16``
  (RKNN runs no float32 layers), int8 is RKNN's default (``quantized_dtype: w8a8``), not listed;
* ``model.onnx``: the model those names belong to (the trial's resolution and variant);
* ``calib/*.npy`` + ``dataset.txt``: the calibration images autoq used, letterboxed to the
  trial's size, float32 NCHW raw pixels (``rknn.config`` applies mean/std);
* ``rknn_bundle.json``: the ``rknn.config`` arguments for the trial's calibration
  (minmax/percentile -> ``normal``, mse -> ``mmse``, kl -> ``kl_divergence``; per-channel ->
  ``channel``), and what to build;
* ``build_rknn.py`` (`autoq.export.rknn_build`): plain ``build`` when no layer is listed, else
  step1 -> names checked against step1's cfg -> merged -> step2; ``--simulate`` runs the x86
  simulator on a list of inputs (`autoq verify --toolchain rknn` uses it).

The header line ``# rknn.config: quantized_algorithm=<a> quantized_method=<m>`` repeats the
calibration for `read_rknn`.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autoq.errors import ConfigError, ExportError
from autoq.export import rknn_build
from autoq.export.base import (
    EXPORTERS,
    ExportContext,
    check_model_nodes,
    comment_block,
    header_lines,
    join_names,
    precision_counts,
)
from autoq.export.rknn_names import (
    cfg_name_of_nodes,
    predict_step1_names,
    step1_name_owners,
)
from autoq.plan import Precision
from autoq.quant.toolchain_sim import fused_units

__all__ = ["read_rknn", "rknn_config", "rknn_layers", "write_rknn"]

_TYPE = {Precision.INT16: "int16", Precision.FLOAT: "float16", Precision.INT8: "int8"}
_FROM_TYPE = {"int8": Precision.INT8, "int16": Precision.INT16, "float16": Precision.FLOAT}
_CONFIG_LINE = re.compile(r"^#\s*rknn\.config:\s*quantized_algorithm=(\S+)\s+quantized_method=(\S+)\s*$")


@EXPORTERS.register("rknn")
def write_rknn(ctx: ExportContext, out: Path, *, name: str | None = None, target_platform: str = "") -> list[Path]:
    """Writes the bundle into the folder ``out``.

    ``target_platform`` defaults to the trial's target when it is a Rockchip chip, else ``rk3588``.
    Returns the files written, the cfg first.
    """
    import onnx
    import yaml

    check_model_nodes(ctx)
    try:
        model = onnx.load(str(ctx.model_path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any load failure means "cannot name tensors"
        raise ExportError(
            f"rknn keys layers by the tensors RKNN names, and {ctx.model_path} cannot be read to find them ({exc})"
        ) from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise ExportError(f"{ctx.model_path} keeps weights in external files; the RKNN bundle needs one .onnx file")
    all_float = all(p is Precision.FLOAT for p in ctx.assignment().values())
    if not all_float and ctx.calib_images is None:
        raise ExportError("rknn needs the calibration images to ship in the bundle (RKNN calibrates itself); "
                          "export from a project (autoq export)")
    try:
        layers, folded, merged = ({}, [], []) if all_float else rknn_layers(ctx, model)
    except Exception as exc:  # noqa: BLE001 - a graph the name rules cannot read
        raise ExportError(f"cannot name RKNN's tensors for {ctx.model_path}: {type(exc).__name__}: {exc}") from None
    config = rknn_config(ctx, target_platform)
    counts = precision_counts(ctx)
    label = name or ctx.label()
    folder = Path(out)
    if folder.is_file():
        raise ExportError(f"{folder} is a file; the rknn export is a bundle folder: pass -o DIR")
    cfg_path = folder / f"{label}.quantization.cfg"
    folder.mkdir(parents=True, exist_ok=True)

    assumptions = [
        "keys are the tensors RKNN-Toolkit2 2.5.0's hybrid_quantization_step1 names for model.onnx "
        "(SiLU = one exSwish unit keyed by its Mul; 3-D tensors as X-rs); build_rknn.py checks them "
        "against the cfg step1 writes",
        "float nodes are written float16 (RKNN runs no float32 layers)",
        "int8 is the default (rknn.config quantized_dtype w8a8) and is not listed",
        "quantize_parameters is empty: RKNN computes it in step1 from dataset.txt",
    ]
    if folded:
        assumptions.append(f"no RKNN tensor (folded or fused away): {join_names(folded)}")
    if merged:
        assumptions.append(f"one RKNN unit, the higher precision taken: {join_names(merged)}")
    if (ctx.config.calibration.method or "minmax").lower() not in _ALGORITHMS:
        assumptions.append(f"quantized_algorithm: autoq method {ctx.config.calibration.method!r} has no RKNN "
                           "equivalent; normal (min/max) is the nearest")
    header = header_lines(
        ctx,
        "RKNN-Toolkit2 hybrid quantization cfg",
        counts=f"{counts['int8']} int8, {counts['int16']} int16, {counts['float']} float (float16)",
        assumptions=assumptions,
        run="VENV/bin/python build_rknn.py   (VENV from scripts/install-rknn-toolkit.sh; writes " + label + ".rknn)",
    )
    header.append(f"rknn.config: quantized_algorithm={config['quantized_algorithm']} "
                  f"quantized_method={config['quantized_method']}")
    body = yaml.safe_dump({"custom_quantize_layers": layers}, sort_keys=False, default_flow_style=False,
                          allow_unicode=True, width=4096)
    body += "# filled by rknn.hybrid_quantization_step1 (build_rknn.py merges the layers above into it)\n"
    body += "quantize_parameters: {}\n"
    cfg_path.write_text(comment_block(header) + "\n" + body, encoding="utf-8")

    model_path = folder / "model.onnx"
    shutil.copyfile(ctx.model_path, model_path)
    calib = _write_calibration(ctx, folder)
    bundle = {
        "model": model_path.name,
        "quantization_cfg": cfg_path.name,
        "dataset": "dataset.txt",
        "do_quantization": not all_float,
        "config": config,
        "output": f"{label}.rknn",
    }
    bundle_path = folder / "rknn_bundle.json"
    bundle_path.write_text(json.dumps(bundle, indent=1) + "\n", encoding="utf-8")
    script = folder / "build_rknn.py"
    shutil.copyfile(Path(rknn_build.__file__), script)
    return [cfg_path, model_path, bundle_path, script, *calib]


_RANK = {Precision.INT8: 0, Precision.INT16: 1, Precision.FLOAT: 2}


def rknn_layers(ctx: ExportContext, model: Any) -> tuple[dict[str, str], list[str], list[str]]:
    """(``custom_quantize_layers``, nodes RKNN has no tensor for, nodes sharing a unit with another
    node of a different precision).

    Each quantizable node's precision goes to the tensor step1 names for it, and an int16 node's
    activation inputs are int16 as in autoq's simulation. RKNN also gives tensors
    of ops autoq does not quantize (Reshape, Transpose, Split, its own ``X_rs`` reshapes) a type of
    their own, int8 unless listed, where ORT's QDQ model passes their input's quantization through:
    they get the highest precision of their inputs, as in autoq's simulation.
    """
    names = predict_step1_names(model)
    cfg_of = cfg_name_of_nodes(model, names)
    made_up: dict[str, list[str]] = {}
    for name, owner in step1_name_owners(model).items():
        made_up.setdefault(owner, []).append(name)
    assignment = ctx.assignment()
    inits = {t.name for t in model.graph.initializer}
    tensor_p: dict[str, Precision] = {}
    targets_of: dict[str, list[str]] = {}
    chosen: dict[str, Precision] = {}
    members: dict[str, list[str]] = {}
    folded: list[str] = []

    def raise_to(tensor: str, p: Precision) -> None:
        chosen[tensor] = max(p, chosen.get(tensor, p), key=_RANK.__getitem__)

    for n in model.graph.node:
        if n.name in assignment:
            p = assignment[n.name]
        else:
            inputs = [tensor_p[i] for i in n.input if i and i not in inits and i in tensor_p]
            p = max(inputs, key=_RANK.__getitem__, default=Precision.INT8)
        targets = []
        for o in n.output:
            tensor_p[o] = p
            targets += [t for t in (o, o + "-rs") if t in names]  # a 3-D graph output has both
        if not targets and cfg_of.get(n.name):  # a SiLU's Sigmoid: its Mul's tensor
            targets = [cfg_of[n.name]]
        targets += made_up.get(n.name, [])  # RKNN's Focus per-slice convs, X_rs, tiled MaxPools
        targets_of[n.name] = targets
        if not targets:
            if n.name in assignment and p is not Precision.INT8:
                folded.append(n.name)
            continue
        for tensor in targets:
            if n.name in assignment:
                members.setdefault(tensor, []).append(n.name)
            raise_to(tensor, p)
    # autoq quantizes every activation touching an int16 node to int16, its inputs too
    # (`autoq.quant.qdq.int16_tensors`); in RKNN a tensor's type is its producer's: raise those.
    graph_inputs = {i.name for i in model.graph.input}
    for n in model.graph.node:
        if assignment.get(n.name) is not Precision.INT16:
            continue
        inputs = n.input[:1] if n.op_type in ("Conv", "ConvTranspose", "Gemm") else n.input
        for i in inputs:
            if not i or i in inits or i in graph_inputs or tensor_p.get(i) is Precision.FLOAT:
                continue
            for tensor in (i, i + "-rs"):
                if tensor in names:
                    raise_to(tensor, Precision.INT16)
    # A Conv+SiLU / Conv+Sigmoid unit autoq simulates as one kernel (its nodes share a precision)
    # stays one in RKNN only if its tensors share a type: an output raised to int16 raises the unit.
    for unit, _ in fused_units(model.graph, ("SiLU", "Sigmoid"), assignment.get):
        tensors = [t for node in unit for t in targets_of.get(node.name, [])]
        top = max((chosen.get(t, Precision.INT8) for t in tensors), key=_RANK.__getitem__, default=Precision.INT8)
        for t in tensors:
            raise_to(t, top)
    merged = list(dict.fromkeys(n for ns in members.values() if len({assignment[m] for m in ns}) > 1 for n in ns))
    layers = {t: _TYPE[p] for t, p in chosen.items() if p is not Precision.INT8}
    return layers, folded, merged


#: autoq range method -> RKNN ``quantized_algorithm`` (any other method: ``normal``, the nearest)
_ALGORITHMS = {"minmax": "normal", "mse": "mmse", "kl": "kl_divergence"}


def rknn_config(ctx: ExportContext, target_platform: str = "") -> dict[str, Any]:
    """The ``rknn.config`` arguments for the trial."""
    cal = ctx.config.calibration
    algorithm = _ALGORITHMS.get((cal.method or "minmax").lower(), "normal")
    platform = target_platform or (ctx.target if ctx.target.startswith(("rk", "rv")) else "rk3588")
    pp = ctx.preprocess
    config: dict[str, Any] = {
        "target_platform": platform,
        "mean_values": [[float(v) for v in pp.mean]],
        "std_values": [[float(v) for v in pp.std]],
        "quantized_dtype": "w8a8",
        "quantized_algorithm": algorithm,
        "quantized_method": "channel" if cal.granularity == "per_channel" else "layer",
        "float_dtype": "float16",
    }
    return config


def _write_calibration(ctx: ExportContext, folder: Path) -> list[Path]:
    """``calib/<k>.npy`` and ``dataset.txt`` listing them (empty for an all-float trial)."""
    images = ctx.calib_images() if ctx.calib_images is not None else []
    return write_inputs(images, folder / "dataset.txt", "calib")


def write_inputs(images: Any, listing: Path, subdir: str = "") -> list[Path]:
    """One ``.npy`` per uint8 NHWC image, as RKNN reads ONNX inputs (float32 NCHW ``(1, 3, H, W)``, raw
    pixels: ``rknn.config`` applies mean/std), under ``listing.parent / subdir``, and ``listing``
    naming them relative to its folder (RKNN's dataset, the simulator's input list)."""
    import numpy as np

    folder = listing.parent / subdir
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k, image in enumerate(images):
        path = folder / f"{k:04d}.npy"
        np.save(path, np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32))
        files.append(path)
    listing.write_text("".join(f"{p.relative_to(listing.parent).as_posix()}\n" for p in files), encoding="utf-8")
    return [listing, *files]


def read_rknn(
    path: Path, *, node_outputs: Mapping[str, tuple[str, ...]] | None = None
) -> tuple[dict[str, Precision], dict[str, Any]]:
    """Parses a ``.quantization.cfg`` strictly.

    Returns (key -> precision of ``custom_quantize_layers``, calibration). Keys are the tensor
    names as written, or node names when ``node_outputs`` (node -> output tensors) is given (every
    output of a node must then agree). Calibration has ``quantized_algorithm`` and
    ``quantized_method`` from the autoq header line (``None`` when absent) and
    ``quantize_parameters`` (the section as read).
    """
    import yaml

    path = Path(path)
    where = f"rknn cfg {path}"
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{where}: cannot read it as YAML ({exc})") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("custom_quantize_layers", {}), Mapping):
        raise ConfigError(f"{where}: expected custom_quantize_layers (a mapping) and quantize_parameters")
    unknown = set(data) - {"custom_quantize_layers", "quantize_parameters"}
    if unknown:
        raise ConfigError(f"{where}: unknown sections {sorted(unknown)}")
    tensors: dict[str, Precision] = {}
    for key, value in (data.get("custom_quantize_layers") or {}).items():
        if value not in _FROM_TYPE:
            raise ConfigError(f"{where}: layer {key!r} has type {value!r}, expected int8, int16 or float16")
        tensors[str(key)] = _FROM_TYPE[value]
    nodes: dict[str, Precision] = tensors
    if node_outputs is not None:
        nodes = {}
        by_tensor = {t: n for n, outs in node_outputs.items() for t in outs}
        for tensor, p in tensors.items():
            node = by_tensor.get(tensor)
            if node is None:
                raise ConfigError(f"{where}: tensor {tensor!r} is not an output of any node")
            if nodes.setdefault(node, p) is not p:
                raise ConfigError(f"{where}: outputs of node {node!r} have different types")
    algorithm = method = None
    for line in text.splitlines():
        m = _CONFIG_LINE.match(line.strip())
        if m:
            algorithm, method = m.group(1), m.group(2)
    calibration = {
        "quantized_algorithm": algorithm,
        "quantized_method": method,
        "quantize_parameters": data.get("quantize_parameters"),
    }
    return nodes, calibration
