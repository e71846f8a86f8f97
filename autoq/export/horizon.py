"""Horizon hb_mapper ``makertbin`` bundle (OE 1.x: X3 = bernoulli2, J5 = bayes, X5 = bayes-e).

``autoq export --format horizon -o DIR`` writes everything ``hb_mapper makertbin`` reads:

* ``<label>_hb_mapper.yaml``: the four documented groups (model_parameters, input_parameters,
  calibration_parameters, compiler_parameters), paths relative to the bundle;
* ``model.onnx``: the model the node names belong to, written at ONNX opset 11 (the RDK docs
  accept opset 10/11) when every op converts exactly and onnxruntime gives the same outputs, else
  at the model's own opset with a header line saying so;
* ``calibration_data_<colour>_f32/NNNN.<colour>chw``: one raw float32 tensor per calibration
  image (``numpy.tofile``), 1x3xHxW NCHW (``input_layout_train``), the model's colour order
  (``input_type_train``), after autoq's own resize/letterbox, *before* mean/std: hb_mapper applies
  ``norm_type``/``mean_value``/``scale_value`` inside the model (ptq_process.md, "准备校准数据");
* ``run.sh``: ``hb_mapper makertbin --config <yaml> --model-type onnx``.

What a trial decides maps onto hb_mapper like this:

* float nodes -> ``node_info: {name: {ON: CPU}}`` (bayes, bayes-e) or ``run_on_cpu: 'a;b'``
  (bernoulli2, which has no node_info);
* int16 nodes -> ``node_info: {name: {ON: BPU, InputType: int16, OutputType: int16}}``; bernoulli2
  has no int16, so such a config is refused (``ExportError`` naming the nodes);
* int8 is hb_mapper's default and is not listed;
* the range method -> ``calibration_type`` (+ ``max_percentile``); ``per_channel`` is hb_mapper's
  per-channel *activation* calibration and stays ``False`` (autoq calibrates activations per
  tensor); autoq's weight granularity has no hb_mapper key and is recorded in the header only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml
from onnx import helper, numpy_helper, version_converter

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
    header_lines,
    join_names,
    one_line,
    percentile_fraction,
    precision_counts,
    write_run_script,
)
from autoq.plan import Precision

__all__ = [
    "MARCH_BY_TARGET",
    "calibration_type",
    "downgrade_opset",
    "load_model",
    "march_for_target",
    "model_opset",
    "norm_parameters",
    "read_horizon",
    "write_calibration_tensors",
    "write_horizon",
]

MARCHES = ("bernoulli2", "bayes", "bayes-e")
MARCH_BY_TARGET = {"horizon-x3": "bernoulli2", "horizon-j5": "bayes", "horizon-x5": "bayes-e"}
_CHIP = {"bernoulli2": "X3", "bayes": "J5", "bayes-e": "X5"}
INPUT_TYPES_RT = ("rgb", "bgr", "yuv444", "nv12", "gray", "featuremap")
LAYOUTS = ("NCHW", "NHWC")
CAL_DATA_TYPES = ("float32", "uint8")
COMPILE_MODES = ("latency", "bandwidth")
OPTIMIZE_LEVELS = ("O0", "O1", "O2", "O3")
DEFAULT_MAX_PERCENTILE = 0.99995  # hb_mapper's usual choice when a percentile is not given
HB_MAPPER_OPSETS = (10, 11)  # ptq_process.md: "ir_version≤7, opset=10、opset=11 版本的onnx浮点模型"
_CAL_LINE = re.compile(r"^#\s*autoq\.calibration:\s*granularity=(\S+)\s+method=(\S+)(?:\s+percentile=(\S+))?\s*$")


def march_for_target(target: str) -> str:
    """The hb_mapper ``march`` for an autoq target name; unknown targets get ``bayes`` (J5-class)."""
    return MARCH_BY_TARGET.get(target, "bayes")


@EXPORTERS.register("horizon")
def write_horizon(
    ctx: ExportContext,
    out: Path,
    *,
    march: str | None = None,
    input_type_rt: str | None = None,
    input_layout_rt: str | None = None,
    working_dir: str = "model_output",
    output_model_file_prefix: str | None = None,
    cal_data_type: str = "float32",
    compile_mode: str = "latency",
    optimize_level: str = "O3",
    core_num: int | None = None,
    convert_opset: bool = True,
) -> list[Path]:
    """Writes the hb_mapper bundle into the folder ``out``; returns its files, the YAML first.

    ``march`` defaults from ``ctx.target`` (horizon-x3 -> bernoulli2, horizon-j5 -> bayes,
    horizon-x5 -> bayes-e, anything else -> bayes). ``input_type_rt`` defaults to the training
    colour order; ``nv12`` is allowed. ``cal_data_type`` is the element type of the calibration
    tensors written (float32 or uint8). ``convert_opset`` writes model.onnx at opset 11 when exact.
    """
    march = march or march_for_target(ctx.target)
    check_choice("march", march, MARCHES)
    pre = ctx.preprocess
    type_train = pre.color
    type_rt = input_type_rt or type_train
    check_choice("input_type_rt", type_rt, INPUT_TYPES_RT)
    if type_rt in ("gray", "featuremap"):
        raise ConfigError(f"export option input_type_rt {type_rt} cannot feed a model trained on {type_train} "
                          "images (hb_mapper's input_type_train/input_type_rt table); use rgb, bgr, yuv444 or nv12")
    if input_layout_rt is not None:
        check_choice("input_layout_rt", input_layout_rt, LAYOUTS)
    check_choice("cal_data_type", cal_data_type, CAL_DATA_TYPES)
    check_choice("compile_mode", compile_mode, COMPILE_MODES)
    check_choice("optimize_level", optimize_level, OPTIMIZE_LEVELS)
    if core_num is not None and core_num not in (1, 2):
        raise ConfigError(f"export option core_num must be 1 or 2, got {core_num!r}")
    check_model_nodes(ctx)
    assignment = ctx.assignment()
    floats = [n for n, p in assignment.items() if p is Precision.FLOAT]
    int16s = [n for n, p in assignment.items() if p is Precision.INT16]
    if march == "bernoulli2" and int16s:
        raise ExportError(
            f"march bernoulli2 (X3) has no int16: nodes {join_names(int16s)}; use target horizon-x3 so the "
            "search excludes int16, or pick another trial"
        )
    _, _, h, w = (tuple(int(d) for d in ctx.input_shape) + (0, 0, 0, 0))[:4]
    if type_rt in ("nv12", "yuv444") and (h % 2 or w % 2):
        raise ConfigError(f"export option input_type_rt {type_rt} needs an even input size, the trial's is {h}x{w}")
    model = load_model(ctx)
    cal = ctx.config.calibration
    cal_type, max_percentile, cal_note = calibration_type(cal.method, cal.percentile, "hb_mapper")
    images = calibration_images(ctx, "horizon")

    folder = bundle_dir(out, "horizon")
    label = ctx.label()
    model_path = folder / "model.onnx"
    model, opset_note = downgrade_opset(model, ctx.input_name, images[:1], pre) if convert_opset else (model, "")
    if not convert_opset:
        opset_note = "model.onnx kept at its own opset (convert_opset off)"
    onnx.save(model, str(model_path))
    opset = model_opset(model)
    cal_dir_name = f"calibration_data_{type_train}" + ("_f32" if cal_data_type == "float32" else "")
    cal_files = write_calibration_tensors(images, pre, folder / cal_dir_name, f".{type_train}chw", cal_data_type)

    prefix = output_model_file_prefix or label
    model_params: dict[str, Any] = {
        "onnx_model": f"./{model_path.name}",
        "march": march,
        "working_dir": working_dir,
        "output_model_file_prefix": prefix,
    }
    if march != "bernoulli2" and (floats or int16s):
        node_info: dict[str, dict[str, str]] = {}
        for name, p in assignment.items():
            if p is Precision.FLOAT:
                node_info[name] = {"ON": "CPU"}
            elif p is Precision.INT16:
                node_info[name] = {"ON": "BPU", "InputType": "int16", "OutputType": "int16"}
        model_params["node_info"] = node_info

    inputs: dict[str, Any] = {
        "input_name": ctx.input_name,
        "input_type_train": type_train,
        "input_layout_train": "NCHW",
        "input_type_rt": type_rt,
    }
    if type_rt != "nv12":  # docs: "若input_type_rt配置为nv12，则此处参数不需要配置"
        inputs["input_layout_rt"] = input_layout_rt or "NCHW"
    inputs["input_shape"] = "x".join(str(int(d)) for d in ctx.input_shape)
    inputs.update(norm_parameters(pre))

    calib: dict[str, Any] = {
        "cal_data_dir": f"./{cal_dir_name}",
        "cal_data_type": cal_data_type,
        "calibration_type": cal_type,
    }
    if max_percentile is not None:
        calib["max_percentile"] = max_percentile
    calib["per_channel"] = False
    if march == "bernoulli2" and floats:
        calib["run_on_cpu"] = ";".join(floats)

    compiler: dict[str, Any] = {"compile_mode": compile_mode, "optimize_level": optimize_level}
    if core_num is not None:
        compiler["core_num"] = core_num

    body = yaml.safe_dump(
        {
            "model_parameters": model_params,
            "input_parameters": inputs,
            "calibration_parameters": calib,
            "compiler_parameters": compiler,
        },
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=4096,
    )
    if cal_note:
        body = _annotate(body, "calibration_parameters:", "  calibration_type: ", cal_note)
    yaml_path = folder / f"{label}_hb_mapper.yaml"
    command = f"hb_mapper makertbin --config {yaml_path.name} --model-type onnx"
    counts = precision_counts(ctx)
    source = f"target {ctx.target}" if ctx.target in MARCH_BY_TARGET else f"default for target {ctx.target}"
    geometry = f"letterbox (pad {pre.pad_value})" if pre.resize == "letterbox" else "plain resize"
    assumptions = [
        f"target: {ctx.target}; march: {march} ({_CHIP[march]}, {source})",
        ("node names are those of model.onnx; nodes hb_mapper fuses or renames are not matched, so check its log "
        "for node_info/run_on_cpu names it could not find"),
        f"the runtime feeds {type_rt} {h}x{w} images made with {geometry}; input_type_train is {type_train} "
        "pixels 0..255" + ("" if pre.is_raw() else "; mean/std are applied by norm_type inside the compiled model"),
        (f"{cal_dir_name}/ holds {len(cal_files)} raw {cal_data_type} 1x3x{h}x{w} NCHW {type_train} tensors of "
        f"autoq's calibration images after the same {geometry}, before mean/std (hb_mapper applies norm_type)"),
        (f"per_channel: False; it is hb_mapper's per-channel activation calibration and autoq calibrated "
        f"activations per tensor; the trial's {cal.granularity} weight granularity has no hb_mapper key "
        "(hb_mapper quantizes weights itself)"),
        f"model.onnx is ONNX opset {opset}" + (f"; {opset_note}" if opset_note else ""),
    ]
    if cal_note:
        assumptions.append(f"calibration_type: {cal_note}")
    if march == "bernoulli2":
        assumptions.append("bernoulli2 (X3) has no int16 and no node_info: float nodes are listed in run_on_cpu")
    header = header_lines(
        ctx,
        "hb_mapper makertbin config",
        counts=f"{counts['int8']} int8 (hb_mapper default, not listed), {counts['int16']} int16, "
        f"{counts['float']} float (on CPU)",
        assumptions=assumptions,
        run=f"./run.sh   ({command})",
    )
    header.append(f"autoq.calibration: granularity={cal.granularity} method={cal.method or 'minmax'}"
                  + (f" percentile={cal.percentile}" if cal.percentile is not None else ""))
    yaml_path.write_text(comment_block(header) + "\n" + body, encoding="utf-8")
    script = write_run_script(folder, [command], comment=[f"hb_mapper {march} build of {label} written by autoq"])
    return [yaml_path, model_path, script, *cal_files]


def read_horizon(path: Path) -> tuple[dict[str, Precision], dict[str, Any]]:
    """Parses an hb_mapper YAML (or the bundle folder holding one) into (node -> precision of
    listed nodes, calibration).

    Nodes come from ``node_info`` (mapping or ``"n1:int16;n2:int16"`` string; ``ON: CPU`` -> float,
    an int16 input/output type -> int16, otherwise int8) and from ``run_on_cpu`` (float).
    The calibration dict has ``granularity`` (autoq's weight granularity from the header line,
    ``None`` without it), ``activation_per_channel``, ``calibration_type`` and ``max_percentile``.
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*_hb_mapper.yaml")) or sorted(path.glob("*.yaml"))
        if not found:
            raise ConfigError(f"hb_mapper bundle {path}: no *.yaml config in it")
        path = found[0]
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"hb_mapper config {path}: cannot read it as YAML ({exc}); check the file") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"hb_mapper config {path}: expected the groups model_parameters, input_parameters, ...")
    model = data.get("model_parameters") or {}
    calib = data.get("calibration_parameters") or {}

    nodes: dict[str, Precision] = {}
    info = model.get("node_info") or {}
    if isinstance(info, str):
        for item in info.split(";"):
            name, sep, kind = item.strip().rpartition(":")
            if not sep:
                continue
            kind = kind.strip().lower()
            nodes[name.strip()] = (
                Precision.FLOAT if kind == "cpu" else Precision.INT16 if kind == "int16" else Precision.INT8
            )
    elif isinstance(info, Mapping):
        for name, spec in info.items():
            spec = spec or {}
            if str(spec.get("ON", "BPU")).upper() == "CPU":
                nodes[str(name)] = Precision.FLOAT
            elif any(k.startswith(("InputType", "OutputType")) and str(v) == "int16" for k, v in spec.items()):
                nodes[str(name)] = Precision.INT16
            else:
                nodes[str(name)] = Precision.INT8
    else:
        raise ConfigError(f"hb_mapper config {path}: model_parameters.node_info must be a mapping or a string")
    run_on_cpu = calib.get("run_on_cpu") or ""
    names = run_on_cpu if isinstance(run_on_cpu, list) else str(run_on_cpu).split(";")
    for name in names:
        if str(name).strip():
            nodes[str(name).strip()] = Precision.FLOAT

    per_channel = calib.get("per_channel", False)
    if isinstance(per_channel, str):
        per_channel = per_channel.strip().lower() == "true"
    granularity = None
    for line in text.splitlines():
        m = _CAL_LINE.match(line.strip())
        if m:
            granularity = m.group(1)
    max_percentile = calib.get("max_percentile")
    calibration = {
        "granularity": granularity,
        "activation_per_channel": bool(per_channel),
        "calibration_type": calib.get("calibration_type", "default"),
        "max_percentile": float(max_percentile) if max_percentile is not None else None,
    }
    return nodes, calibration


# --------------------------------------------------------------------------- shared with horizon_j6


def load_model(ctx: ExportContext) -> onnx.ModelProto:
    """The trial's model, read whole (``ExportError`` when it cannot be read or keeps external data)."""
    try:
        model = onnx.load(str(ctx.model_path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any load failure means "cannot bundle the model"
        raise ExportError(f"the bundle ships the model, and {ctx.model_path} cannot be read ({exc}); "
                          "export from the project that searched it") from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise ExportError(f"{ctx.model_path} keeps weights in external files; the bundle needs one .onnx file")
    return model


def norm_parameters(pre: Any) -> dict[str, Any]:
    """``norm_type`` (+ ``mean_value``/``scale_value``, space-separated per channel) for autoq's
    mean/std: the compiled model computes ``(x - mean) * scale`` with ``scale = 1 / std``."""
    mean = [float(m) for m in pre.mean]
    std = [float(s) for s in pre.std]
    if all(m == 0.0 for m in mean) and all(s == 1.0 for s in std):
        return {"norm_type": "no_preprocess"}
    if all(m == 0.0 for m in mean):
        return {"norm_type": "data_scale", "scale_value": " ".join(_num(1.0 / s) for s in std)}
    if all(s == 1.0 for s in std):
        return {"norm_type": "data_mean", "mean_value": " ".join(_num(m) for m in mean)}
    return {
        "norm_type": "data_mean_and_scale",
        "mean_value": " ".join(_num(m) for m in mean),
        "scale_value": " ".join(_num(1.0 / s) for s in std),
    }


def write_calibration_tensors(
    images: Any, pre: Any, folder: Path, suffix: str, dtype: str = "float32", *, npy: bool = False
) -> list[Path]:
    """One file per uint8 NHWC image: the 1x3xHxW NCHW tensor in the model's colour order, raw
    0..255 pixels (exactly ``to_input`` before mean/std), as ``numpy.tofile`` bytes of ``dtype``
    (hb_mapper's ``cal_data_type``) or, with ``npy``, as ``.npy`` files (hb_compile)."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():
        if stale.is_file():
            stale.unlink()
    files = []
    for k, image in enumerate(images):
        tensor = np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1)[None], dtype=np.dtype(dtype))
        path = folder / f"{k:04d}{'.npy' if npy else suffix}"
        if npy:
            np.save(path, tensor)
        else:
            tensor.tofile(path)
        files.append(path)
    return files


def calibration_type(method: str | None, percentile: float | None, tool: str) -> tuple[str, float | None, str]:
    """autoq range method -> (documented ``calibration_type``, ``max_percentile``, note if not exact).

    minmax -> max; percentile -> max + max_percentile; kl/entropy -> kl; mse -> kl (the nearest
    documented method: both search a clipping threshold that minimises the quantization error of
    the activation histogram; ``default``/search modes would choose a method autoq did not use).
    """
    m = (method or "minmax").lower()
    if m in ("minmax", "max"):
        return "max", None, ""
    if m == "percentile":
        p = percentile_fraction(percentile)
        if p is None:
            return "max", DEFAULT_MAX_PERCENTILE, f"no percentile given; {tool}'s usual {DEFAULT_MAX_PERCENTILE}"
        return "max", p, ""
    if m in ("entropy", "kl"):
        return "kl", None, ""
    if m == "mse":
        return "kl", None, (f"nearest documented equivalent of autoq method 'mse': {tool} has no mse; kl also "
                            "searches the clipping threshold with the least error on the activation histogram")
    return "max", None, f"nearest documented equivalent: autoq method {method!r} has no {tool} counterpart; max"


# ops whose definition does not change between opset 11 and 13 except for added tensor types
_SAME_11_13 = frozenset({
    "Abs", "Add", "And", "ArgMax", "ArgMin", "AveragePool", "BatchNormalization", "Cast", "Ceil", "Clip",
    "Concat", "ConstantOfShape", "Conv", "ConvTranspose", "DepthToSpace", "Div", "Elu", "Equal", "Erf", "Exp",
    "Expand", "Flatten", "Floor", "Gather", "Gemm", "GlobalAveragePool", "GlobalMaxPool", "Greater", "HardSigmoid",
    "Identity", "InstanceNormalization", "LeakyRelu", "Less", "Log", "MatMul", "Max", "MaxPool", "Mean", "Min",
    "Mul", "Neg", "Not", "Or", "PRelu", "Pad", "Pow", "Range", "Reciprocal", "ReduceL2", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceProd", "Relu", "Reshape", "Shape", "Sigmoid", "Sign", "Slice", "SpaceToDepth", "Sqrt",
    "Sub", "Sum", "Tanh", "Tile", "TopK", "Transpose", "Where",
})
_AXES_TO_ATTRIBUTE = {"Squeeze": "axes", "Unsqueeze": "axes", "ReduceSum": "axes", "Split": "split"}


def downgrade_opset(model: onnx.ModelProto, input_name: str, images: Any, pre: Any,
                    target: int = 11) -> tuple[onnx.ModelProto, str]:
    """``model`` at opset ``target`` (IR 6) when that is exact, else ``model`` unchanged; plus a note.

    Tries ``onnx.version_converter`` first, then a rewrite of the ops that differ between 11 and 13
    only in where constant axes/splits live (input -> attribute), Resize's optional roi/scales and
    last-axis Softmax. Accepted only when node names are unchanged and onnxruntime gives the same
    outputs on a calibration image (or a fixed random input) to 1e-4 relative.
    """
    current = model_opset(model)
    if current in HB_MAPPER_OPSETS or current <= target:
        return model, ""
    if any(o.domain not in ("", "ai.onnx") for o in model.opset_import):
        return model, f"kept at opset {current}: it imports custom op domains; hb_mapper's docs state opset 10/11"
    candidate, reason = None, ""
    try:
        candidate = version_converter.convert_version(model, target)
    except Exception as exc:  # noqa: BLE001 - the converter's adapters are incomplete for down-conversion
        reason = one_line(str(exc)).split("Assertion")[-1].strip(" `:")[:120]
        candidate = None
    if candidate is None:
        candidate, why = _rewrite_to_11(model)
        if candidate is None:
            return model, (f"kept at opset {current}: {why or reason}; hb_mapper's docs state opset 10/11, "
                           "so export the model at opset 11 if hb_mapper refuses it")
    candidate.ir_version = min(candidate.ir_version, 6)
    if [n.name for n in candidate.graph.node] != [n.name for n in model.graph.node]:
        return model, f"kept at opset {current}: converting renamed nodes (node_info keys must stay)"
    same, why = _same_outputs(model, candidate, input_name, images, pre)
    if not same:
        return model, f"kept at opset {current}: the opset-{target} model differs in onnxruntime ({why})"
    return candidate, f"converted from opset {current}; onnxruntime outputs checked equal"


def _rewrite_to_11(model: onnx.ModelProto) -> tuple[onnx.ModelProto | None, str]:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    used: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            used[i] = used.get(i, 0) + 1
    for n in g.node:
        op = n.op_type
        if op == "Constant":
            if any(a.name != "value" for a in n.attribute):
                return None, f"Constant {n.name} uses opset-12 attributes"
        elif op in _AXES_TO_ATTRIBUTE:
            if len(n.input) > 1 and n.input[1]:
                if n.input[1] not in consts:
                    return None, f"{op} {n.name} takes its {_AXES_TO_ATTRIBUTE[op]} from a computed tensor"
                values = [int(v) for v in np.asarray(consts[n.input[1]]).reshape(-1)]
                n.attribute.append(helper.make_attribute(_AXES_TO_ATTRIBUTE[op], values))
                del n.input[1]
            if op == "ReduceSum" and any(a.name == "noop_with_empty_axes" for a in n.attribute):
                return None, f"ReduceSum {n.name} sets noop_with_empty_axes"
        elif op == "Resize":
            while len(n.input) < 3:
                n.input.append("")
            for k in (1, 2):
                if not n.input[k]:
                    name = f"{n.name}__autoq_empty_{k}"
                    g.initializer.append(numpy_helper.from_array(np.zeros(0, np.float32), name))
                    n.input[k] = name
        elif op in ("Softmax", "LogSoftmax"):
            axis = next((a.i for a in n.attribute if a.name == "axis"), -1)
            if axis != -1:
                return None, f"{op} {n.name} on axis {axis} (opset 11 flattens from the axis)"
        elif op not in _SAME_11_13:
            return None, f"no exact opset-11 form known for {op} ({n.name})"
    referenced = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [t for t in g.initializer if t.name in referenced]
    if len(keep) != len(g.initializer):  # axes/splits now held as attributes
        del g.initializer[:]
        g.initializer.extend(keep)
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = 11
    return m, ""


def _same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, input_name: str, images: Any,
                  pre: Any) -> tuple[bool, str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return False, "onnxruntime is not installed to check it"
    try:
        sa = ort.InferenceSession(a.SerializeToString(), providers=["CPUExecutionProvider"])
        sb = ort.InferenceSession(b.SerializeToString(), providers=["CPUExecutionProvider"])
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in sa.get_inputs()[0].shape]
        if len(images):
            x = to_input(np.asarray(images[:1]), pre)
        else:
            x = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
        ya = sa.run(None, {input_name: x})
        yb = sb.run(None, {input_name: x})
    except Exception as exc:  # noqa: BLE001 - a model onnxruntime cannot run is not accepted
        return False, f"{type(exc).__name__}: {one_line(exc)[:120]}"
    for u, v in zip(ya, yb):
        if u.shape != v.shape or not np.allclose(u, v, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(u).max()))):
            return False, "outputs differ"
    return True, ""


def model_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _num(value: float) -> str:
    """Compact, exact-enough decimal (10 significant digits) for mean/scale strings."""
    return f"{value:.10g}"


def _annotate(body: str, group: str, prefix: str, note: str) -> str:
    """Appends ``# note`` to the first line starting with ``prefix`` after the ``group`` line."""
    lines = body.split("\n")
    in_group = False
    for i, line in enumerate(lines):
        if line == group:
            in_group = True
        elif in_group and line.startswith(prefix):
            lines[i] = f"{line}  # {one_line(note)}"
            break
    return "\n".join(lines)
