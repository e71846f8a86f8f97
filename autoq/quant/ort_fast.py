"""ORT's QDQ quantizer, faster and byte-identical: the one place autoq reaches into ORT internals.

Three speed-ups, none of which changes a byte of ORT's output (tests/test_ranges.py builds every
config kind both ways): indexed node/initializer lookups (`indexed_model`, `fast_lookups`'s
``find_by_name``), and each weight's scale/zero point and quantized tensor reused across the
trials of one model (`memo_quantizer`, `fast_lookups`'s ``quantize_onnx_initializer``, keyed by
everything ORT reads). They rely on private ORT names, so `supported` allows them only on the
onnxruntime versions they were verified on and when those names exist; anywhere else
`autoq.quant.qdq.build_qdq` uses ORT's plain quantizer (same models, slower builds). ORT is
patched only inside `fast_lookups` and restored on exit.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx

__all__ = ["VERIFIED_ORT", "fast_lookups", "indexed_model", "memo_quantizer", "supported"]

#: onnxruntime (major, minor) versions the speed-ups were checked byte-identical on.
VERIFIED_ORT = frozenset({(1, 31), (1, 32)})


@functools.lru_cache(maxsize=1)
def supported() -> bool:
    """True when the installed onnxruntime is a verified version and has every private name used here."""
    try:
        import onnxruntime
        from onnxruntime.quantization import (
            base_quantizer,
            onnx_model,
            qdq_quantizer,
            quant_utils,
        )

        version = tuple(int(x) for x in onnxruntime.__version__.split(".")[:2])
    except (ImportError, ValueError):  # another layout of ORT's internals: the plain quantizer
        return False
    names = [
        (quant_utils, "find_by_name"), (base_quantizer, "find_by_name"), (qdq_quantizer, "find_by_name"),
        (quant_utils, "quantize_onnx_initializer"), (qdq_quantizer, "quantize_onnx_initializer"),
        (qdq_quantizer.QDQQuantizer, "_calc_initializer_quant_params"),
        (onnx_model.ONNXModel, "replace_node_input"), (onnx_model.ONNXModel, "_check_init"),
    ]
    return version in VERIFIED_ORT and all(hasattr(obj, name) for obj, name in names)


def indexed_model(proto: onnx.ModelProto):
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
    that `fast_lookups` answers ``find_by_name(name, model.initializer())`` from."""

    def __init__(self, items: Any, index: Mapping[str, Any]) -> None:
        self._items, self.autoq_index = items, index

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> Any:
        return self._items[i]


def _copy_params(params: Any) -> Any:
    copied = copy.copy(params)
    copied.data = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in params.data.items()}
    return copied


def memo_quantizer(memo: dict[Any, Any]) -> type:
    """ORT's QDQQuantizer, with the initializers' scale/zero-point computed once per ``memo`` (one model).

    ORT recomputes every weight's scale each build, channel by channel in Python (half the build
    time per-channel). They depend only on the weight and how it is quantized, which the key
    holds; ORT then adjusts copies for the trial's bias scales as usual.
    """
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

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
def fast_lookups(memo: dict[Any, Any]) -> Iterator[None]:
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


