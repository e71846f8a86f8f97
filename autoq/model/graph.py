"""Load an ONNX detector once, normalize it, and describe every node.

Normalizing up front (opset >= 13, a unique name on every node, inferred shapes) lets every trial
refer to nodes by name and lets the quantizer skip its own shape inference; the node table (shapes,
MACs, bytes, quantizability) feeds the search space, sensitivity and the latency cost model.

Example:
    >>> model = load_model("yolox_nano.onnx")            # doctest: +SKIP
    >>> len(model.nodes), model.opset                    # doctest: +SKIP
    (369, 13)
    >>> model.node("Conv_0").macs                        # doctest: +SKIP
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from autoq.errors import ModelError

if TYPE_CHECKING:
    import onnx

__all__ = [
    "LoadedModel",
    "NodeInfo",
    "load_model",
    "node_table",
    "quantizable_op_types",
]

# Marker ORT's quantizer reads (onnxruntime.quantization.quant_utils.model_has_infer_metadata) to know
# shape inference already ran, so it does not save, re-infer and reload the model on every trial.
_INFER_META_KEY = "onnx.infer"
_INFER_META_VALUE = "onnxruntime.quant"

_MAC_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})

# Rough floating-point operations per output element for ops without multiply-accumulates.
_FLOPS_PER_ELEMENT: Mapping[str, int] = {
    "Add": 1, "Sub": 1, "Mul": 1, "Div": 1, "Max": 1, "Min": 1, "Sum": 1, "Neg": 1, "Abs": 1,
    "Relu": 1, "Clip": 1, "PRelu": 2, "LeakyRelu": 2, "Pow": 4, "Sqrt": 4, "Reciprocal": 1,
    "Sigmoid": 4, "Tanh": 4, "Exp": 4, "Log": 4, "Erf": 4, "Softplus": 4, "Elu": 4, "Selu": 4,
    "HardSigmoid": 3, "HardSwish": 4, "Mish": 8, "Gelu": 8, "Softmax": 5, "LogSoftmax": 5,
    "BatchNormalization": 2, "InstanceNormalization": 5, "LayerNormalization": 5,
}

_FLOAT_TYPES = frozenset({1, 10, 11, 16})  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


@functools.lru_cache(maxsize=1)
def quantizable_op_types() -> frozenset[str]:
    """Op types ORT's QDQ quantizer quantizes by default.

    This is what ``quantize_static`` uses when no op types are given: the QDQ registry (ops with
    their own QDQ handler, e.g. Conv, Resize, MaxPool) plus the QLinear registry (ops such as
    Sigmoid, Mul, Add, Concat that the QDQ quantizer wraps with Q/DQ on all inputs and outputs).
    Without the latter, SiLU (Sigmoid + Mul) and Concat in detectors would never be quantized.
    """
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return frozenset(QDQRegistry) | frozenset(QLinearOpsRegistry)


@dataclass(frozen=True)
class NodeInfo:
    """One node of the graph with the numbers the search and cost models need."""

    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    input_shapes: tuple[tuple[int, ...] | None, ...]
    output_shapes: tuple[tuple[int, ...] | None, ...]
    macs: int
    flops: int
    param_bytes: int
    activation_bytes: int
    quantizable: bool


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A normalized model: opset >= 13, every node named, shapes inferred (see `load_model`)."""

    path: Path
    proto: onnx.ModelProto
    sha256: str
    opset: int
    input_name: str
    input_shape: tuple[int | str, ...]
    output_names: tuple[str, ...]
    nodes: tuple[NodeInfo, ...]
    _serialized: bytes = field(default=b"", repr=False)

    def quantizable(self) -> tuple[NodeInfo, ...]:
        """Nodes ORT's QDQ quantizer can quantize, in graph order."""
        return tuple(n for n in self.nodes if n.quantizable)

    @functools.cached_property
    def _by_name(self) -> dict[str, NodeInfo]:
        return {n.name: n for n in self.nodes}

    @functools.cached_property
    def initializer_names(self) -> frozenset[str]:
        """Names of the graph's initializers (weights, biases, constants)."""
        return frozenset(t.name for t in self.proto.graph.initializer)

    def node(self, name: str) -> NodeInfo:
        """The node called ``name``; KeyError names a few existing nodes when it does not exist."""
        try:
            return self._by_name[name]
        except KeyError:
            sample = ", ".join(n.name for n in self.nodes[:5])
            raise KeyError(f"no node {name!r} in {self.path} (nodes are named like {sample}, ...)") from None

    def serialized(self) -> bytes:
        """The normalized model's bytes (computed once)."""
        if not self._serialized:
            object.__setattr__(self, "_serialized", self.proto.SerializeToString())
        return self._serialized


def load_model(path: str | Path, *, min_opset: int = 13) -> LoadedModel:
    """Reads ``path`` and normalizes it (see `LoadedModel`); user-fixable problems raise ModelError."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist; check the model path in autoq.yaml")
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError, external-data errors, ...
        raise ModelError(f"{path} is not a valid ONNX model ({_short(exc)}); re-export it with torch.onnx.export") from None
    if len(proto.graph.node) == 0:
        raise ModelError(f"{path} is not a valid ONNX model (its graph has no nodes); re-export it")

    # Initializers listed as graph inputs are constants for our purposes; drop them from the inputs.
    init_names = {t.name for t in proto.graph.initializer}
    real_inputs = [i for i in proto.graph.input if i.name not in init_names]
    if len(real_inputs) != 1:
        names = ", ".join(i.name for i in real_inputs) or "none"
        raise ModelError(
            f"{path} has {len(real_inputs)} graph inputs ({names}); autoq needs a detector with exactly "
            "one image input: export the model with a single input"
        )
    if len(real_inputs) != len(proto.graph.input):
        del proto.graph.input[:]
        proto.graph.input.extend(real_inputs)

    opset = _default_opset(proto)
    if opset < min_opset:
        from onnx import version_converter

        try:
            proto = version_converter.convert_version(proto, min_opset)
        except Exception as exc:
            raise ModelError(
                f"cannot upgrade opset {opset} of {path} to {min_opset}: {_short(exc)}; "
                f"export the model with opset >= {min_opset}"
            ) from None
        opset = _default_opset(proto)

    _name_nodes(proto)
    proto = _infer_shapes(proto, path)
    _set_infer_metadata(proto)

    data = proto.SerializeToString()
    graph_input = proto.graph.input[0]
    return LoadedModel(
        path=path,
        proto=proto,
        sha256=hashlib.sha256(data).hexdigest(),
        opset=opset,
        input_name=graph_input.name,
        input_shape=_declared_shape(graph_input),
        output_names=tuple(o.name for o in proto.graph.output),
        nodes=node_table(proto),
        _serialized=data,
    )


def node_table(model: onnx.ModelProto, input_shape: tuple[int, ...] | None = None) -> tuple[NodeInfo, ...]:
    """Describes every node of ``model`` in graph order.

    With ``input_shape`` the shapes (and so MACs and bytes) are recomputed for that input size on a
    copy of the model, e.g. to compare resolutions. Without it the model's inferred shapes are used;
    a symbolic batch dimension is taken as 1 so MACs are per image.
    """
    real_inputs = _real_inputs(model)
    if input_shape is None and len(real_inputs) == 1:
        declared = _declared_shape(real_inputs[0])
        rest = declared[1:]
        if declared and not isinstance(declared[0], int) and all(isinstance(d, int) for d in rest):
            input_shape = (1, *rest)  # type: ignore[assignment]
    if input_shape is not None:
        model = _with_input_shape(model, tuple(int(d) for d in input_shape))
    elif not _has_infer_metadata(model) and len(model.graph.value_info) == 0:
        model = _infer_shapes(model, None)
    return _table(model)


# ----------------------------------------------------------------------------------------- helpers


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _default_opset(proto: onnx.ModelProto) -> int:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1  # ONNX: a model without a default-domain import has opset 1 semantics


def _real_inputs(proto: onnx.ModelProto) -> list:
    init_names = {t.name for t in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in init_names]


def _name_nodes(proto: onnx.ModelProto) -> None:
    """Gives unnamed (or duplicate-named) nodes the name f"{op_type}_{index}" so configs can name them."""
    used: set[str] = set()
    for index, node in enumerate(proto.graph.node):
        name = node.name
        if not name or name in used:
            name = f"{node.op_type}_{index}"
            suffix = 1
            while name in used:
                name = f"{node.op_type}_{index}_{suffix}"
                suffix += 1
            node.name = name
        used.add(name)


def _infer_shapes(proto: onnx.ModelProto, path: Path | None) -> onnx.ModelProto:
    import onnx

    del proto.graph.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    except Exception as exc:
        where = str(path) if path else "the model"
        raise ModelError(
            f"shape inference failed on {where}: {_short(exc)}; check that the model runs in onnxruntime "
            "and re-export it"
        ) from None


def _has_infer_metadata(proto: onnx.ModelProto) -> bool:
    return any(p.key == _INFER_META_KEY and p.value == _INFER_META_VALUE for p in proto.metadata_props)


def _set_infer_metadata(proto: onnx.ModelProto) -> None:
    if not _has_infer_metadata(proto):
        entry = proto.metadata_props.add()
        entry.key = _INFER_META_KEY
        entry.value = _INFER_META_VALUE


def _declared_shape(value_info) -> tuple[int | str, ...]:
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return ()
    dims: list[int | str] = []
    for d in tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or "?")
    return tuple(dims)


def _with_input_shape(proto: onnx.ModelProto, shape: tuple[int, ...]) -> onnx.ModelProto:
    """A copy of ``proto`` whose single input has ``shape``, with shapes re-inferred from it."""
    import onnx

    real_inputs = _real_inputs(proto)
    if len(real_inputs) != 1:
        raise ValueError(f"node_table(input_shape=...) needs a model with one input, not {len(real_inputs)}")
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    graph_input = next(i for i in copy.graph.input if i.name == real_inputs[0].name)
    dims = graph_input.type.tensor_type.shape.dim
    if len(dims) != len(shape):
        raise ValueError(f"input {graph_input.name!r} has rank {len(dims)}, got input_shape {shape}")
    for d, value in zip(dims, shape):
        d.Clear()
        d.dim_value = value
    for out in copy.graph.output:  # declared output sizes belong to the old resolution
        if out.type.tensor_type.HasField("shape"):
            for d in out.type.tensor_type.shape.dim:
                d.Clear()
    return _infer_shapes(copy, None)


def _static_shape(value_info) -> tuple[int, ...] | None:
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims = []
    for d in tensor_type.shape.dim:
        if not d.HasField("dim_value"):
            return None
        dims.append(int(d.dim_value))
    return tuple(dims)


def _itemsize(elem_type: int) -> int:
    import onnx

    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).itemsize
    except Exception:
        return 0


def _table(proto: onnx.ModelProto) -> tuple[NodeInfo, ...]:
    # name -> (elem_type, static shape or None)
    info: dict[str, tuple[int, tuple[int, ...] | None]] = {}
    for vi in [*proto.graph.input, *proto.graph.value_info, *proto.graph.output]:
        tensor_type = vi.type.tensor_type
        shape = _static_shape(vi)
        prev = info.get(vi.name)
        if prev is None or (prev[1] is None and shape is not None):
            info[vi.name] = (tensor_type.elem_type, shape)
    initializers: dict[str, int] = {}
    for t in proto.graph.initializer:
        info[t.name] = (t.data_type, tuple(int(d) for d in t.dims))
        initializers[t.name] = math.prod(t.dims) * _itemsize(t.data_type)
    quantizable_ops = quantizable_op_types()

    nodes = []
    for node in proto.graph.node:
        in_shapes = tuple(info.get(n, (0, None))[1] if n else None for n in node.input)
        out_shapes = tuple(info.get(n, (0, None))[1] for n in node.output)
        macs = _macs(node, in_shapes, out_shapes)
        flops = 2 * macs if node.op_type in _MAC_OPS else _other_flops(node, in_shapes, out_shapes)
        param_bytes = sum(initializers.get(n, 0) for n in node.input if n)
        activation_bytes = 0
        for name, shape in zip(node.output, out_shapes):
            elem = info.get(name, (0, None))[0]
            if shape is not None and elem in _FLOAT_TYPES:
                activation_bytes += math.prod(shape) * _itemsize(elem)
        has_float_input = any(n and info.get(n, (0, None))[0] in _FLOAT_TYPES for n in node.input)
        nodes.append(
            NodeInfo(
                name=node.name,
                op_type=node.op_type,
                inputs=tuple(node.input),
                outputs=tuple(node.output),
                input_shapes=in_shapes,
                output_shapes=out_shapes,
                macs=int(macs),
                flops=int(flops),
                param_bytes=int(param_bytes),
                activation_bytes=int(activation_bytes),
                quantizable=node.domain in ("", "ai.onnx") and node.op_type in quantizable_ops and has_float_input,
            )
        )
    return tuple(nodes)


def _attr(node, name: str, default):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _macs(node, in_shapes: Sequence[tuple[int, ...] | None], out_shapes: Sequence[tuple[int, ...] | None]) -> int:
    op = node.op_type
    if op not in _MAC_OPS or not out_shapes or out_shapes[0] is None:
        return 0
    out = out_shapes[0]
    if op == "Conv":
        # weight (Cout, Cin/groups, k...): every output element needs Cin/groups * prod(k) MACs
        if len(in_shapes) < 2 or in_shapes[1] is None:
            return 0
        return math.prod(out) * math.prod(in_shapes[1][1:])
    if op == "ConvTranspose":
        # weight (Cin, Cout/groups, k...): every input element scatters into Cout/groups * prod(k) outputs
        if len(in_shapes) < 2 or in_shapes[0] is None or in_shapes[1] is None:
            return 0
        return math.prod(in_shapes[0]) * math.prod(in_shapes[1][1:])
    a = in_shapes[0] if in_shapes else None
    if a is None or len(a) == 0:
        return 0
    if op == "Gemm":
        k = a[0] if _attr(node, "transA", 0) else a[-1]
        return math.prod(out) * k
    return math.prod(out) * a[-1]  # MatMul


def _other_flops(node, in_shapes: Sequence[tuple[int, ...] | None], out_shapes: Sequence[tuple[int, ...] | None]) -> int:
    op = node.op_type
    out = out_shapes[0] if out_shapes else None
    if op in _FLOPS_PER_ELEMENT:
        return 0 if out is None else math.prod(out) * _FLOPS_PER_ELEMENT[op]
    if op in ("MaxPool", "AveragePool", "LpPool"):
        kernel = _attr(node, "kernel_shape", [])
        return 0 if out is None else math.prod(out) * math.prod(kernel)
    if op in ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"):
        a = in_shapes[0] if in_shapes else None
        return 0 if a is None else math.prod(a)
    if op == "Resize":
        mode = _attr(node, "mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        if mode == "nearest" or out is None:
            return 0  # data movement
        return math.prod(out) * (4 if mode == "linear" else 16)
    return 0  # data movement: Reshape, Concat, Slice, Transpose, ...
