"""What a target's compiler does to a QDQ model that ORT's quantizer does not: simulated per trial.

A compiler runs some op chains as one kernel and quantizes only the chain's output (RKNN on
rk3588: ``ConvExSwish`` = Conv + SiLU, ``ConvSigmoid``; seen in its layer table), and keeps the
constant operands of element-wise ops at more than 8 bits (RKNN's step1 cfg: ``decode_stride``
int16, ``decode_grid`` int32). ORT's QDQ model quantizes every one of those tensors to int8, so a
trial predicted the toolchain's accuracy several points too low (demo, all-int8: 59.12 predicted,
63.12 in RKNN's simulator; 63.29 with this simulation). The target YAML says what to simulate:

- ``fused_activations``: activation op types a preceding Conv/ConvTranspose runs inside its kernel
  (``SiLU`` = ``Sigmoid(x) * x``, itself one unit: its Sigmoid output is never quantized). Only a
  unit whose quantized nodes share one precision is fused (RKNN splits a unit whose layers are
  given different types), and only when the Conv's output feeds nothing else;
- ``float_eltwise_constants``: constant operands of Add/Sub/Mul/Div stay float.

The tensors inside a fused unit lose their QuantizeLinear/DequantizeLinear pair; everything else
is ORT's model unchanged.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from autoq.plan import Precision

__all__ = ["fused_tensors", "fused_units", "simulate_toolchain"]

_FUSING_OPS = frozenset({"Conv", "ConvTranspose"})
_ELTWISE = frozenset({"Add", "Sub", "Mul", "Div"})


def fused_units(
    graph: Any, activations: Iterable[str], precision_of: Callable[[str], Precision | None]
) -> list[tuple[list[Any], list[str]]]:
    """The fused units of ``graph`` (an ONNX GraphProto of the float model): (nodes, their inner
    activation tensors) per unit, a Conv first when it is fused with its activation.

    ``precision_of(node name)``: the trial's precision of a quantizable node, None for others.
    """
    acts = set(activations)
    consumers: dict[str, list[Any]] = defaultdict(list)
    producer: dict[str, Any] = {}
    for n in graph.node:
        for i in n.input:
            consumers[i].append(n)
        for o in n.output:
            producer[o] = n

    def uniform(nodes: list[Any]) -> bool:
        ps = {precision_of(n.name) for n in nodes} - {None}
        return len(ps) == 1 and Precision.FLOAT not in ps

    units: list[tuple[list[Any], list[str]]] = []
    for n in graph.node:
        unit, inner, x = None, [], None
        if n.op_type == "Sigmoid" and "SiLU" in acts:
            cs = consumers[n.output[0]]
            if len(cs) == 1 and cs[0].op_type == "Mul" and set(cs[0].input) == {n.input[0], n.output[0]}:
                unit, inner, x = [n, cs[0]], [n.output[0]], n.input[0]
        if unit is None and n.op_type in acts and n.input:
            unit, x = [n], n.input[0]
        if unit is None:
            continue
        conv = producer.get(x)
        if conv is not None and conv.op_type in _FUSING_OPS and {id(c) for c in consumers[x]} <= {id(u) for u in unit}:
            if uniform([conv, *unit]):
                units.append(([conv, *unit], [x, *inner]))
                continue
        if inner and uniform(unit):
            units.append((unit, inner))
    return units


def fused_tensors(
    graph: Any, activations: Iterable[str], precision_of: Callable[[str], Precision | None]
) -> set[str]:
    """Activation tensors inside the fused units of ``graph`` (see `fused_units`): not quantized."""
    return {t for _, inner in fused_units(graph, activations, precision_of) for t in inner}


def simulate_toolchain(proto: Any, float_graph: Any, *, fused: set[str], float_constants: bool) -> Any:
    """``proto`` (a QDQ ModelProto, changed in place and returned) with the Q/DQ pairs on ``fused``
    tensors removed and, with ``float_constants``, element-wise constant operands back to float
    (the initializers of ``float_graph``)."""
    g = proto.graph
    consumers: dict[str, list[Any]] = defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
    outputs = {o.name for o in g.output}
    drop: set[int] = set()
    for q in g.node:
        if q.op_type != "QuantizeLinear" or q.input[0] not in fused:
            continue
        dqs = consumers[q.output[0]]
        if any(d.op_type != "DequantizeLinear" or d.output[0] in outputs for d in dqs):
            continue
        for dq in dqs:
            for c in consumers[dq.output[0]]:
                for k, name in enumerate(c.input):
                    if name == dq.output[0]:
                        c.input[k] = q.input[0]
            drop.add(id(dq))
        drop.add(id(q))
    if float_constants:
        inits = {t.name for t in g.initializer}
        original = {t.name: t for t in float_graph.initializer}
        for dq in g.node:
            if dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
                continue
            users = consumers[dq.output[0]]
            source = original.get(dq.input[0].removesuffix("_quantized"))
            if source is None or not users or any(u.op_type not in _ELTWISE for u in users):
                continue
            tensor = type(source)()
            tensor.CopyFrom(source)
            tensor.name = dq.output[0]
            g.initializer.append(tensor)
            drop.add(id(dq))
    if drop:
        keep = [n for n in g.node if id(n) not in drop]
        del g.node[:]
        g.node.extend(keep)
    return proto
