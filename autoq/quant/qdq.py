"""QuantConfig -> QDQ ONNX model with ONNX Runtime's quantizer, using cached ranges (no calibration).

This is the one module that translates autoq's typed choices into ORT's untyped ``extra_options``:

* activations: int8, asymmetric unless the target's toolchain has no zero point (``ActivationSymmetric``);
  int16 activations (W8A16) through ``TensorQuantOverrides`` ``{tensor: [{"quant_type": QInt16}]}``
  plus ``UseQDQContribOps`` (16-bit Q/DQ needs the com.microsoft ops before opset 21);
* weights: int8 symmetric, per channel when ``calibration.granularity == "per_channel"``;
* float nodes: ``nodes_to_exclude`` (no Q/DQ of their own; neighbours may still quantize the
  tensors they share with them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from autoq.errors import ModelError
from autoq.model.graph import quantizable_op_types
from autoq.plan import Precision, QuantConfig
from autoq.quant import ort_fast

if TYPE_CHECKING:
    import onnx

    from autoq.model.graph import LoadedModel, NodeInfo

__all__ = ["build_qdq", "config_int16_tensors", "int16_tensors"]

# Inputs of these ops past the first are weights/bias (quantized as int8 weights / int32 bias).
_WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm"})
_FLOAT_ELEM_TYPES = frozenset({1, 10, 16})  # FLOAT, FLOAT16, BFLOAT16


def build_qdq(
    model: LoadedModel,
    config: QuantConfig,
    ranges: Mapping[str, tuple[float, float]],
    *,
    fast: bool = True,
    memo: dict[Any, Any] | None = None,
    int8_reads_convert: bool = False,
    activation_symmetric: bool = False,
) -> onnx.ModelProto:
    """The QDQ model for ``config``; ``ranges`` must cover every float activation (see `collect_stats`).

    Precision per quantizable node is ``config.precision_of(node.name)``: ``float`` leaves the node
    unquantized, ``int8`` quantizes its activations to int8, ``int16`` to int16 (weights stay int8).
    A tensor shared by nodes of different precisions is int16 when its producer or any quantized
    consumer is int16, else int8 (see `int16_tensors`). Outputs of data-movement ops (Reshape,
    Slice, Transpose, MaxPool, Resize, ...) reuse their input's quantization, as ORT does.
    Nodes ORT cannot quantize always stay float. The result is deterministic for a given config.
    ``fast`` (default) runs ORT's quantizer through `autoq.quant.ort_fast` when the installed
    onnxruntime is one it was verified on (same result, byte for byte, without ORT's linear scans and,
    given the same ``memo`` across trials of one model, without recomputing the weights'
    quantization: on YOLOX-nano ~0.4 -> 0.07 s per-tensor, ~0.3 -> 0.15 s per-channel after the first);
    on any other version it is ORT's plain quantizer.
    ``int8_reads_convert``: an int8 node reading an int16 tensor gets it converted to int8 (ORT's
    ``convert`` override), as a compiler that types a tensor by its producer does (RKNN's
    exDataConvert); otherwise every consumer reads the tensor's one int16 quantization.
    ``activation_symmetric``: activations quantized symmetrically (zero point 0), as toolchains without
    activation zero points do (Horizon's BPU).
    ``config.resolution`` and ``config.variant`` are not read here: pass the `LoadedModel` of that
    variant (and ranges calibrated on it).
    """
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod,
        TensorData,
        TensorsData,
    )
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    quantizable = model.quantizable()
    _check_config_nodes(model, config)
    precision = {n.name: config.precision_of(n.name) for n in quantizable}
    to_quantize = [name for name, p in precision.items() if p is not Precision.FLOAT]
    to_exclude = [name for name, p in precision.items() if p is Precision.FLOAT]

    proto = onnx.ModelProto()
    proto.ParseFromString(model.serialized())
    if not to_quantize:
        return proto  # everything float; ORT would read an empty nodes_to_quantize as "all nodes"

    known = _tensor_names(proto)
    overrides: dict[str, list[dict[str, Any]]] = {
        name: [{"quant_type": QuantType.QInt16}]
        for name in int16_tensors(quantizable, precision, initializers=model.initializer_names)
        if name in known
    }
    if int8_reads_convert:
        for node in quantizable:
            if precision[node.name] is not Precision.INT8:
                continue
            for name in node.inputs:
                if name in overrides:
                    convert = overrides[name][0].setdefault("convert", {"quant_type": QuantType.QInt8, "recv_nodes": set()})
                    convert["recv_nodes"].add(node.name)
    extra_options: dict[str, Any] = {
        "ActivationSymmetric": activation_symmetric,
        "WeightSymmetric": True,
        "TensorQuantOverrides": overrides,
        "UseQDQContribOps": bool(overrides) and model.opset < 21,
    }
    tensors_range = TensorsData(
        CalibrationMethod.MinMax,
        {
            name: TensorData(lowest=np.float32(lo), highest=np.float32(hi))
            for name, (lo, hi) in sorted(ranges.items())
        },
    )
    fast = fast and ort_fast.supported()
    memo = {} if memo is None else memo
    quantizer = (ort_fast.memo_quantizer(memo) if fast else QDQQuantizer)(
        proto,
        config.calibration.granularity == "per_channel",  # per_channel
        False,  # reduce_range
        QuantType.QInt8,  # weight_qType
        QuantType.QInt8,  # activation_qType
        tensors_range,
        to_quantize,  # nodes_to_quantize
        to_exclude,  # nodes_to_exclude
        sorted(quantizable_op_types()),  # op_types_to_quantize
        extra_options,
    )
    if fast:
        quantizer.model = ort_fast.indexed_model(quantizer.model.model)
    try:
        with ort_fast.fast_lookups(memo) if fast else contextlib.nullcontext():
            quantizer.quantize_model()
    except ValueError as exc:
        if "Quantization parameters are not specified" in str(exc):
            raise ValueError(
                f"no activation range for a tensor of {model.path} ({exc}); the calibration statistics "
                "belong to another model variant"
            ) from None
        raise
    quantizer.model.topological_sort()  # ORT appends Q/DQ nodes at the end of the node list
    return quantizer.model.model


def int16_tensors(
    nodes: tuple[NodeInfo, ...],
    precision: Mapping[str, Precision],
    *,
    initializers: frozenset[str] = frozenset(),
) -> list[str]:
    """Tensors quantized to int16: every activation touching an int16 node, in graph order.

    A tensor is an input or output of its producer and its consumers, so marking the activations
    of int16 nodes yields "int16 if the producer or any quantized consumer is int16". Weights and
    biases of Conv/ConvTranspose/Gemm (and a constant MatMul operand) stay int8/int32 (W8A16);
    constant operands of other ops (e.g. Mul by a constant) follow the activation type.
    """
    out: dict[str, None] = {}
    for node in nodes:
        if precision.get(node.name) is not Precision.INT16:
            continue
        inputs = list(node.inputs)
        if node.op_type in _WEIGHTED_OPS:
            inputs = inputs[:1]
        elif node.op_type == "MatMul":
            inputs = [t for i, t in enumerate(inputs) if i == 0 or t not in initializers]
        for name in (*inputs, *node.outputs):
            if name:
                out[name] = None
    return list(out)


def config_int16_tensors(model: LoadedModel, config: QuantConfig) -> list[str]:
    """The activations `build_qdq` quantizes to int16 for ``config`` (what int16 ranges are needed for)."""
    quantizable = model.quantizable()
    precision = {n.name: config.precision_of(n.name) for n in quantizable}
    if Precision.INT16 not in precision.values():
        return []
    return int16_tensors(quantizable, precision, initializers=model.initializer_names)


def _check_config_nodes(model: LoadedModel, config: QuantConfig) -> None:
    names = {n.name for n in model.nodes}
    unknown = sorted(n for n in config.nodes if n not in names)
    if unknown:
        shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise ModelError(
            f"the quantization config names {len(unknown)} node(s) that {model.path} does not have ({shown}); "
            "use node names from this model (see its node table)"
        )


def _tensor_names(proto: onnx.ModelProto) -> set[str]:
    """Float tensors ORT knows the type of (it rejects overrides of anything else)."""
    names = {t.name for t in proto.graph.initializer if t.data_type in _FLOAT_ELEM_TYPES}
    for vi in (*proto.graph.input, *proto.graph.value_info, *proto.graph.output):
        if vi.type.tensor_type.elem_type in _FLOAT_ELEM_TYPES:
            names.add(vi.name)
    return names
