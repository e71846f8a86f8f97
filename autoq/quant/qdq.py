"""QuantConfig -> QDQ ONNX model with ONNX Runtime's quantizer, using cached ranges (no calibration).

This is the one module that translates autoq's typed choices into ORT's untyped ``extra_options``:

* activations: int8 asymmetric (``QuantType.QInt8``, ``ActivationSymmetric=False``);
  int16 activations (W8A16) through ``TensorQuantOverrides`` ``{tensor: [{"quant_type": QInt16}]}``
  plus ``UseQDQContribOps`` (16-bit Q/DQ needs the com.microsoft ops before opset 21);
* weights: int8 symmetric, per channel when ``calibration.granularity == "per_channel"``;
* float nodes: ``nodes_to_exclude`` (no Q/DQ of their own; neighbours may still quantize the
  tensors they share with them).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from autoq.errors import ModelError
from autoq.plan import Precision, QuantConfig

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
) -> onnx.ModelProto:
    """The QDQ model for ``config``; ``ranges`` must cover every float activation (see `collect_stats`).

    Precision per quantizable node is ``config.precision_of(node.name)``: ``float`` leaves the node
    unquantized, ``int8`` quantizes its activations to int8, ``int16`` to int16 (weights stay int8).
    A tensor shared by nodes of different precisions is int16 when its producer or any quantized
    consumer is int16, else int8 (see `int16_tensors`). Outputs of data-movement ops (Reshape,
    Slice, Transpose, MaxPool, Resize, ...) reuse their input's quantization, as ORT does.
    Nodes ORT cannot quantize always stay float. The result is deterministic for a given config.
    ``fast`` (default) runs ORT's quantizer with `_IndexedModel` and `_fast_ort` (same result, byte
    for byte, without ORT's linear scans and without recomputing the weights' quantization every
    trial: on YOLOX-nano ~0.4 -> 0.07 s per-tensor, ~0.3 -> 0.15 s per-channel after the first).
    ``config.resolution`` and ``config.variant`` are not read here: pass the `LoadedModel` of that
    variant (and ranges calibrated on it).
    """
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    from autoq.model.graph import quantizable_op_types

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
        for name in int16_tensors(quantizable, precision, initializers=_float_initializers(proto))
        if name in known
    }
    extra_options: dict[str, Any] = {
        "ActivationSymmetric": False,
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
    quantizer = (_memo_quantizer(model) if fast else QDQQuantizer)(
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
        quantizer.model = _indexed_model(quantizer.model.model)
    try:
        with _fast_ort(_weight_memo(model)) if fast else contextlib.nullcontext():
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
    return int16_tensors(quantizable, precision, initializers=_initializer_names(model))


def _initializer_names(model: LoadedModel) -> frozenset[str]:
    names = model.__dict__.get("_autoq_initializer_names")
    if names is None:
        names = _float_initializers(model.proto)
        model.__dict__["_autoq_initializer_names"] = names  # frozen dataclass: cache beside its fields
    return names


def _indexed_model(proto: onnx.ModelProto):
    """ORT's ONNXModel wrapper plus a tensor -> consumer-nodes index and a name -> initializer index.

    ORT's QDQ quantizer calls ``replace_input_of_all_nodes`` (a scan of every node) once per
    quantized tensor and looks initializers up by linear scans; these dominate its run time on
    detectors. The subclass answers the same calls from indexes kept current on every add, remove
    and replace; any lookup the index cannot answer falls back to ORT's own method. ORT is not
    modified: only this quantizer instance uses the subclass.
    """
    from collections import defaultdict

    from onnxruntime.quantization.onnx_model import ONNXModel

    class _IndexedModel(ONNXModel):
        def __init__(self, model: onnx.ModelProto) -> None:
            super().__init__(model)
            self._reindex_nodes()
            self._reindex_inits()

        # The indexes are rebuilt whenever the graph's node/initializer count differs from what
        # they saw, so a change made behind their back (e.g. a direct append) cannot go stale.
        def _reindex_nodes(self) -> None:
            self._consumers: dict[str, list[Any]] = defaultdict(list)
            for node in self.model.graph.node:
                for name in node.input:
                    self._consumers[name].append(node)
            self._node_count = len(self.model.graph.node)

        def _reindex_inits(self) -> None:
            self._inits = {t.name: t for t in self.model.graph.initializer}
            self._init_count = len(self.model.graph.initializer)

        def _check_inits(self) -> None:
            if len(self.model.graph.initializer) != self._init_count:
                self._reindex_inits()

        def add_node(self, node) -> None:
            if len(self.model.graph.node) != self._node_count:
                self._reindex_nodes()
            super().add_node(node)
            stored = self.model.graph.node[-1]  # extend() copies: index the stored message
            for name in stored.input:
                self._consumers[name].append(stored)
            self._node_count += 1

        def remove_node(self, node) -> None:
            super().remove_node(node)
            self._reindex_nodes()  # rare (no-op nodes); keep it simple

        def replace_input_of_all_nodes(self, old_input_name: str, new_input_name: str) -> None:
            if len(self.model.graph.node) != self._node_count:
                self._reindex_nodes()
            nodes = self._consumers.pop(old_input_name, [])
            for node in nodes:
                ONNXModel.replace_node_input(node, old_input_name, new_input_name)
            self._consumers[new_input_name].extend(nodes)

        def get_initializer(self, name: str):
            self._check_inits()
            return self._inits.get(name)

        def add_initializer(self, tensor) -> None:
            self._check_inits()
            if tensor.name not in self._inits:
                self._check_init(tensor)
                self.model.graph.initializer.extend([tensor])
                self._inits[tensor.name] = self.model.graph.initializer[-1]
                self._init_count += 1

        def initializer_extend(self, inits) -> None:
            if len(inits) == 0:
                raise ValueError("Can add an empty list.")
            self._check_inits()
            for init in inits:  # ORT also re-checks every existing initializer (a float8-only check)
                self._check_init(init)
                self.model.graph.initializer.append(init)
                self._inits.setdefault(init.name, self.model.graph.initializer[-1])
                self._init_count += 1

        def remove_initializer(self, tensor) -> None:
            self._check_inits()
            super().remove_initializer(tensor)
            if len(self.model.graph.initializer) == self._init_count - 1 and self._inits.get(tensor.name) is not None:
                del self._inits[tensor.name]
                self._init_count -= 1
            else:
                self._reindex_inits()

        def initializer(self) -> _InitializerView:
            self._check_inits()
            return _InitializerView(self.model.graph.initializer, self._inits)

    return _IndexedModel(proto)


class _InitializerView:
    """The live initializer list of `_IndexedModel`, iterable like ORT expects, plus a name lookup
    that `_fast_ort` answers ``find_by_name(name, model.initializer())`` from."""

    def __init__(self, items: Any, index: Mapping[str, Any]) -> None:
        self._items, self.autoq_index = items, index

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> Any:
        return self._items[i]


def _weight_memo(model: LoadedModel) -> dict[Any, Any]:
    """Per model: weights' quantization params and quantized initializers, reused across trials."""
    return model.__dict__.setdefault("_autoq_weight_memo", {})  # frozen dataclass: cache beside its fields


def _copy_params(params: Any) -> Any:
    copied = copy.copy(params)
    copied.data = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in params.data.items()}
    return copied


def _memo_quantizer(model: LoadedModel) -> type:
    """ORT's QDQQuantizer, with the initializers' scale/zero-point computed once per model.

    ORT recomputes every weight's scale each build, channel by channel in Python (half the build
    time per-channel). They depend only on the weight and how it is quantized, which the key
    holds; ORT then adjusts copies for the trial's bias scales as usual.
    """
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    memo = _weight_memo(model)

    class _MemoQDQQuantizer(QDQQuantizer):
        def _key(self, name: str, info: Any) -> tuple:
            return ("params", name, info.tensor_type, info.axis, info.data_type, info.is_shared,
                    repr(self.tensor_quant_overrides.get(name)), self.weight_qType, self.activation_qType,
                    self.is_activation_symmetric, repr(self.extra_options.get("WeightSymmetric")),
                    self.reduce_range, self.min_real_range, self.block_size)

        def _calc_initializer_quant_params(self):
            keys = {name: self._key(name, info) for name, info in self.tensors_to_quantize.items()}
            todo = {name: info for name, info in self.tensors_to_quantize.items() if keys[name] not in memo}
            if todo:
                everything, self.tensors_to_quantize = self.tensors_to_quantize, todo
                try:
                    fresh = super()._calc_initializer_quant_params()
                finally:
                    self.tensors_to_quantize = everything
                for name in todo:  # activations get None: not initializers, nothing to compute
                    memo[keys[name]] = _copy_params(fresh[name]) if name in fresh else None
            return {name: _copy_params(memo[key]) for name, key in keys.items() if memo[key] is not None}

    return _MemoQDQQuantizer


@contextlib.contextmanager
def _fast_ort(memo: dict[Any, Any]) -> Iterator[None]:
    """While ORT quantizes: ``find_by_name`` over an `_InitializerView` is a dict lookup, not a scan
    (a third of ORT's build time on a 400-node detector), and a weight quantized with the same
    scale and zero point as in an earlier trial is a copy of that result. ORT's own functions
    answer everything else; they are restored on exit.
    """
    from onnxruntime.quantization import base_quantizer, qdq_quantizer, quant_utils

    find = quant_utils.find_by_name
    quantize = quant_utils.quantize_onnx_initializer

    def find_by_name(item_name: str, item_list: Any) -> Any:
        index = getattr(item_list, "autoq_index", None)
        return index.get(item_name) if index is not None else find(item_name, item_list)

    def quantize_onnx_initializer(weight, quant_type, zero_point, scale, axis=None, quant_weight_name=None, **kw):
        key = ("weight", weight.name, quant_type, axis, quant_weight_name, repr(sorted(kw.items())),
               np.asarray(zero_point).tobytes(), np.asarray(scale).tobytes(), np.asarray(scale).dtype.str)
        if key not in memo:
            memo[key] = quantize(weight, quant_type, zero_point, scale, axis, quant_weight_name, **kw)
        out = type(memo[key])()
        out.CopyFrom(memo[key])
        return out

    patches = [(base_quantizer, "find_by_name", find_by_name), (qdq_quantizer, "find_by_name", find_by_name),
               (qdq_quantizer, "quantize_onnx_initializer", quantize_onnx_initializer)]
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
    for module, name, fn in patches:
        setattr(module, name, fn)
    try:
        yield
    finally:
        for module, name, fn in saved:
            setattr(module, name, fn)


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


def _float_initializers(proto: onnx.ModelProto) -> frozenset[str]:
    return frozenset(t.name for t in proto.graph.initializer)
