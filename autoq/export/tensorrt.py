"""TensorRT bundle: the trial's QDQ ONNX (explicit quantization) + the ``trtexec`` command.

``autoq export --format tensorrt -o DIR`` writes::

    DIR/model_qdq.onnx   the trial's Q/DQ model, made TensorRT-readable (see below); an all-float
                         trial ships the plain model as model.onnx instead
    DIR/run.sh           trtexec --onnx=model_qdq.onnx --int8 --fp16 [--precisionConstraints=obey
                         --layerPrecisions=<compute node>:fp32|fp16,...] --saveEngine=<label>.engine

Why explicit quantization: trtexec takes implicit-quantization scales only from a calibration
cache (``--calib=<cache>``), which only TensorRT's own calibrators write; without one it uses
placeholder scales. A Q/DQ network instead carries its scales, so TensorRT builds int8 exactly
where autoq put Q/DQ, with autoq's calibrated ranges (TensorRT developer guide, "Explicit
Quantization"). The calibration data *is* the Q/DQ scales; no tensors are shipped.

The model is autoq's QDQ model (``ExportContext.qdq_model``) with three changes TensorRT needs:

* Q/DQ from the ``com.microsoft`` domain (ORT's ``UseQDQContribOps``) move to the ONNX domain;
* TensorRT quantizes symmetrically only (zero point 0): each 8-bit activation Q/DQ gets the
  symmetric int8 scale ``max(|rmin|, |rmax|) / 127`` of autoq's range ``[rmin, rmax]``
  (an asymmetric range cannot be kept exactly; the covered range is);
* 16-bit Q/DQ pairs are removed (TensorRT has no int16): such nodes run fp16, and int32 bias
  dequantization is folded into float initializers (TensorRT dequantizes int8 only).

``--layerPrecisions`` names only compute nodes (`COMPUTE_OPS`, TensorRT layer names are the ONNX
node names) so ``--precisionConstraints=obey`` never forces Shape/Slice/Exp layers: autoq's float
compute nodes -> ``fp32`` (``float_precision``), int16 compute nodes -> ``fp16``.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from autoq.errors import ConfigError, ExportError
from autoq.export.base import (
    EXPORTERS,
    ExportContext,
    bundle_dir,
    check_choice,
    check_model_nodes,
    copy_model,
    header_lines,
    join_names,
    precision_counts,
    write_run_script,
)
from autoq.plan import Precision

__all__ = ["COMPUTE_OPS", "read_tensorrt", "tensorrt_qdq", "write_tensorrt"]

COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
_QDQ = ("QuantizeLinear", "DequantizeLinear")
_FROM_TRT = {"fp32": Precision.FLOAT, "fp16": Precision.INT16}


@EXPORTERS.register("tensorrt")
def write_tensorrt(
    ctx: ExportContext,
    out: Path,
    *,
    engine: str | None = None,
    float_precision: str = "fp32",
    precision_constraints: str = "obey",
) -> list[Path]:
    """Writes the TensorRT bundle into the folder ``out``; returns the files, run.sh first.

    ``engine``: the engine file trtexec writes (default ``<label>.engine``).
    ``float_precision``: precision of autoq's float compute nodes: ``fp32`` or ``fp16``.
    ``precision_constraints``: trtexec ``--precisionConstraints`` for the listed layers: obey or prefer.
    """
    check_choice("float_precision", float_precision, ("fp32", "fp16"))
    check_choice("precision_constraints", precision_constraints, ("obey", "prefer"))
    check_model_nodes(ctx)
    assignment = ctx.assignment()
    op = ctx.node_ops.get
    specs: dict[str, str] = {}
    for n, p in assignment.items():
        if op(n) in COMPUTE_OPS and p is not Precision.INT8:
            specs[n] = float_precision if p is Precision.FLOAT else "fp16"
    bad = [n for n in specs if "," in n]
    if bad:
        raise ExportError(f"trtexec --layerPrecisions cannot name layers containing ',': {join_names(bad)}; rename them")
    all_float = all(p is Precision.FLOAT for p in assignment.values())
    folder = bundle_dir(out, "tensorrt")
    label = ctx.label()
    if all_float:
        model_path = copy_model(ctx, folder)
    else:
        if ctx.qdq_model is None:
            raise ExportError("tensorrt ships the trial's QDQ model (explicit quantization), and this export context "
                              "cannot build it; export from a project (autoq export)")
        try:
            model = onnx.load_from_string(ctx.qdq_model())
        except ExportError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken build is reported as one sentence
            raise ExportError(f"building the trial's QDQ model failed ({exc}); export another trial") from None
        model = tensorrt_qdq(model)
        model_path = folder / "model_qdq.onnx"
        onnx.save(model, str(model_path))
        graph_names = {n.name for n in model.graph.node}
        lost = [n for n in specs if n not in graph_names]
        if lost:
            raise ExportError(f"the QDQ model has no nodes named {join_names(lost)}; cannot name them for trtexec")
    engine = engine or f"{label}.engine"
    args = ["trtexec", f"--onnx={model_path.name}"]
    if not all_float:
        args.append("--int8")
    args.append("--fp16")
    if specs:
        args += [f"--precisionConstraints={precision_constraints}",
                 "--layerPrecisions=" + ",".join(f"{n}:{p}" for n, p in specs.items())]
    args.append(f"--saveEngine={engine}")
    command = " ".join(shlex.quote(a) for a in args)

    counts = precision_counts(ctx)
    assumptions = [
        (
            "explicit quantization: int8 where the model has Q/DQ, with autoq's calibrated ranges made symmetric "
            "(TensorRT supports zero point 0 only); no calibration cache is needed"
        ),
        "TensorRT has no int16: int16 nodes lose their Q/DQ and run fp16",
        (
            f"float compute nodes ({', '.join(sorted(COMPUTE_OPS))}) are pinned to {float_precision}; other float nodes "
            "follow TensorRT's choice (fp16/fp32)"
        ),
        "layer names are ONNX node names; TensorRT warns about names it fused away (see trtexec --verbose)",
        "a layer name containing ':' is assumed to be split at its last ':' by trtexec",
    ]
    header = header_lines(
        ctx,
        "TensorRT build command",
        counts=f"{counts['int8']} int8, {counts['int16']} int16 (-> fp16), {counts['float']} float",
        assumptions=assumptions,
        run=command,
    )
    script = write_run_script(folder, [command], comment=header)
    return [script, model_path]


def tensorrt_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (an ORT QDQ model) rewritten for TensorRT: ONNX-domain Q/DQ, symmetric int8
    activations, 16-bit Q/DQ pairs removed, int32 (bias) dequantization folded into floats."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}

    def array(name: str) -> np.ndarray | None:
        return numpy_helper.to_array(inits[name]) if name in inits else None

    def zero_point(node: onnx.NodeProto) -> np.ndarray | None:
        return array(node.input[2]) if len(node.input) > 2 and node.input[2] else None

    rename: dict[str, str] = {}
    drop: list[onnx.NodeProto] = []
    folded: list[onnx.TensorProto] = []
    rewritten: set[str] = set()
    for node in graph.node:
        if node.op_type not in _QDQ:
            continue
        zp = zero_point(node)
        x = array(node.input[0])
        asymmetric_constant = x is not None and zp is not None and bool(np.any(zp != 0))
        if node.op_type == "DequantizeLinear" and x is not None and (x.dtype not in (np.int8, np.uint8)
                                                                      or asymmetric_constant):
            # int32 bias, 16-bit weight, or a constant quantized with a zero point (e.g. an Add's constant
            # operand; TensorRT's Q/DQ are symmetric): fold into a float initializer
            scale = array(node.input[1])
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            z = np.zeros_like(x) if zp is None else zp
            if scale.ndim == 1 and x.ndim > 1:
                shape = [1] * x.ndim
                shape[axis] = -1
                scale, z = scale.reshape(shape), np.asarray(z).reshape(shape)
            value = ((x.astype(np.float64) - z.astype(np.float64)) * scale).astype(np.float32)
            folded.append(numpy_helper.from_array(value, node.output[0]))
            drop.append(node)
            continue
        if zp is not None and zp.dtype in (np.int16, np.uint16):
            drop.append(node)
            if node.op_type == "DequantizeLinear":
                rename[node.output[0]] = node.input[0]  # -> the Q's output, renamed again below
            else:
                rename[node.output[0]] = node.input[0]
            continue
        if node.domain not in ("", "ai.onnx"):
            node.domain = ""
        if zp is not None and x is None and node.input[2] not in rewritten:
            # activation: symmetric int8 covering autoq's [rmin, rmax]
            scale = array(node.input[1]).astype(np.float64)
            qmin, qmax = (0, 255) if zp.dtype == np.uint8 else (-128, 127)
            rmin = (qmin - zp.astype(np.float64)) * scale
            rmax = (qmax - zp.astype(np.float64)) * scale
            amax = np.maximum(np.abs(rmin), np.abs(rmax))
            new_scale = np.where(amax > 0, amax / 127.0, scale).astype(np.float32)
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(new_scale.reshape(scale.shape), node.input[1]))
            inits[node.input[2]].CopyFrom(numpy_helper.from_array(np.zeros(zp.shape, np.int8), node.input[2]))
            rewritten.update({node.input[1], node.input[2]})
        elif zp is not None and x is not None and zp.dtype == np.uint8 and node.input[2] not in rewritten:
            raise ExportError("the QDQ model has uint8 weights; TensorRT needs int8 symmetric weights")

    def resolve(name: str) -> str:
        seen = set()
        while name in rename and name not in seen:
            seen.add(name)
            name = rename[name]
        return name

    keep = [n for n in graph.node if n not in drop]
    outputs = {o.name for o in graph.output}
    for node in keep:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = resolve(name)
    for o in graph.output:
        if o.name in rename:  # a graph output behind a removed pair: keep its name
            src = resolve(o.name)
            keep.append(onnx.helper.make_node("Identity", [src], [o.name], name=f"{o.name}_autoq_identity"))
    del outputs
    del graph.node[:]
    graph.node.extend(keep)
    graph.initializer.extend(folded)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept_inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    if not any(n.domain == "com.microsoft" for n in graph.node):
        kept_ops = [o for o in model.opset_import if o.domain != "com.microsoft"]
        del model.opset_import[:]
        model.opset_import.extend(kept_ops)
    return model


def read_tensorrt(path: Path) -> tuple[dict[str, Precision], dict[str, Any]]:
    """Parses the bundle's ``run.sh`` strictly (one ``trtexec`` command, ``sh`` quoting).

    Returns (layer -> precision of ``--layerPrecisions``: fp32 -> float, fp16 -> int16;
    calibration) where calibration has ``onnx``, ``precision_constraints``, ``engine`` and ``flags``.
    """
    path = Path(path)
    where = f"trtexec script {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc})") from None
    try:
        words = shlex.split(text.replace("\\\n", " "), comments=True)
    except ValueError as exc:
        raise ConfigError(f"{where}: bad shell quoting ({exc})") from None
    if words.count("trtexec") != 1:
        raise ConfigError(f"{where}: expected exactly one trtexec command")
    options: dict[str, str] = {}
    flags: list[str] = []
    for arg in words[words.index("trtexec") + 1:]:
        if not arg.startswith("--"):
            raise ConfigError(f"{where}: unexpected argument {arg!r}")
        key, sep, value = arg[2:].partition("=")
        if sep:
            if key in options:
                raise ConfigError(f"{where}: --{key} given twice")
            options[key] = value
        else:
            flags.append(key)
    nodes: dict[str, Precision] = {}
    for spec in filter(None, options.get("layerPrecisions", "").split(",")):
        name, sep, prec = spec.rpartition(":")
        if not sep or prec not in ("fp32", "fp16") or name == "*":
            raise ConfigError(f"{where}: layer precision {spec!r} is not <layer>:fp32|fp16")
        nodes[name] = _FROM_TRT[prec]
    calibration = {
        "onnx": options.get("onnx"),
        "precision_constraints": options.get("precisionConstraints"),
        "engine": options.get("saveEngine"),
        "flags": flags,
    }
    return nodes, calibration
