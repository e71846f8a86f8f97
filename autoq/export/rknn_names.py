"""The tensor names RKNN-Toolkit2 2.5.0's ``hybrid_quantization_step1`` writes for an ONNX model, from
the graph alone: ``custom_quantize_layers`` accepts exactly these (any other name is a ValueError).

step1 names the ONNX output tensors that survive its graph passes: constant folding (Constant,
Shape and what only they feed disappear), SiLU fusion (``Sigmoid(x)`` -> ``Mul(x, sig)`` becomes one
exSwish: the Sigmoid's output is gone and the Mul's carries the precision), a constant Mul on the
input folded into the first Conv, non-4-D activations computed in 4-D as ``X-rs``, the YOLO head
flatten (a Concat of 3-D Reshapes, concatenated in 4-D as ``X-rs``/``X_rs``), Slice chains, Focus
Concats of Slices (per-slice convs ``S_conv``), tiled big MaxPools (``X_mp#k``), and constant
operands of element-wise ops quantized as tensors (``NAME``, ``NAME_dup1``...). Checked name for
name against step1 on the demo detector (176) and YOLOX-nano (271) with RKNN-Toolkit2 2.5.0 on
rk3588; the rules past SiLU and ``-rs`` were seen on those two graphs only, so the bundle's build
script checks every name against the cfg step1 really wrote before step2 (`autoq.export.rknn`).
"""
from __future__ import annotations

from collections import defaultdict

import onnx

__all__ = ["cfg_name_of_nodes", "predict_step1_names", "step1_name_owners"]

_ELTWISE = {"Add", "Sub", "Mul", "Div"}


def _ranks(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, list]]:
    """Tensor rank via onnx shape inference, falling back to simple propagation (Reshape: length of shape input)."""
    m = onnx.shape_inference.infer_shapes(model, data_prop=True)
    rank: dict[str, int] = {}
    shapes: dict[str, list] = {}
    for v in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output):
        t = v.type.tensor_type
        if t.HasField("shape") and len(t.shape.dim) > 0:
            rank[v.name] = len(t.shape.dim)
            shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    for n in m.graph.node:  # fill gaps (e.g. Reshape whose shape comes from Shape/Slice/Concat)
        if all(o in rank for o in n.output):
            continue
        if n.op_type == "Reshape" and shapes.get(n.input[1]) and shapes[n.input[1]][0]:
            r = shapes[n.input[1]][0]
        elif n.op_type == "Transpose":
            perm = next((list(a.ints) for a in n.attribute if a.name == "perm"), None)
            r = len(perm) if perm else rank.get(n.input[0])
        else:
            r = next((rank[i] for i in n.input if i in rank and rank[i] > 1), None)
        for o in n.output:
            if o not in rank and r is not None:
                rank[o] = r
    return rank, shapes


def predict_step1_names(model: onnx.ModelProto) -> set[str]:
    """Every name step1 writes into ``quantize_parameters`` for ``model``."""
    names, owners = _predict(model)
    return names | set(owners)


def step1_name_owners(model: onnx.ModelProto) -> dict[str, str]:
    """The names step1 makes up (Focus per-slice convs, ``X-rs``/``X_rs`` of a head concat, tiled
    MaxPools) -> the ONNX node whose precision they carry."""
    return _predict(model)[1]


def _predict(model: onnx.ModelProto) -> tuple[set[str], dict[str, str]]:
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    graph_in = [i.name for i in g.input if i.name not in inits]
    graph_out = [o.name for o in g.output]
    rank, shapes = _ranks(model)
    consumers: dict[str, list] = defaultdict(list)
    producer = {}
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
        for o in n.output:
            producer[o] = n

    # 1. constant folding: Constant / Shape / anything computed only from constants disappears
    static = set(inits)
    for n in g.node:
        ins = [i for i in n.input if i]
        if n.op_type in ("Constant", "Shape") or (ins and all(i in static for i in ins)):
            static.update(n.output)

    dropped: set[str] = set()
    extra: dict[str, str] = {}
    # 2. SiLU: Sigmoid(x) -> Mul(x, sig) fused to exSwish; the Sigmoid output disappears
    for n in g.node:
        if n.op_type == "Sigmoid":
            cs = consumers[n.output[0]]
            if len(cs) == 1 and cs[0].op_type == "Mul" and set(cs[0].input) == {n.input[0], n.output[0]}:
                dropped.add(n.output[0])
    # 3. Mul/Div of a graph input by a constant, consumed only by Conv: folded into the conv weights
    for n in g.node:
        if n.op_type in ("Mul", "Div") and any(i in graph_in for i in n.input) and any(i in static for i in n.input):
            if consumers[n.output[0]] and all(c.op_type == "Conv" for c in consumers[n.output[0]]):
                dropped.add(n.output[0])
    # 4. Slice -> Slice chains merge (the first Slice's output disappears)
    for n in g.node:
        if n.op_type == "Slice":
            cs = consumers[n.output[0]]
            if cs and all(c.op_type == "Slice" for c in cs):
                dropped.add(n.output[0])
    # 5. Focus-style Concat of Slices feeding one Conv: split into per-input convs + an Add chain
    for n in g.node:
        if n.op_type == "Concat" and len(n.input) > 1 and all(producer.get(i) is not None and producer[i].op_type == "Slice" for i in n.input):
            cs = consumers[n.output[0]]
            if len(cs) == 1 and cs[0].op_type == "Conv":
                dropped.add(n.output[0])
                extra.update({f"{i}_conv": cs[0].name for i in n.input})
                extra.update({f"{n.input[0]}_conv" + "_add" * k: cs[0].name for k in range(1, len(n.input) - 1)})
    # 6. Concat of 3-D Reshapes of 4-D tensors: concatenated in 4-D with a common W; the Reshape whose
    #    input already has that W disappears; the Concat output becomes X-rs (4-D) and X_rs (reshape)
    concat_rs = set()
    for n in g.node:
        if n.op_type == "Concat" and rank.get(n.output[0]) == 3 and all(producer.get(i) is not None and producer[i].op_type == "Reshape" for i in n.input):
            hw = []
            for i in n.input:
                s = shapes.get(producer[i].input[0])
                if not s or len(s) != 4 or None in s:
                    hw = []
                    break
                hw.append((s[2], s[3]))
            if hw:
                ws = sorted({w for _, w in hw}, reverse=True)
                W = next((w for w in ws if all((h * x) % w == 0 for h, x in hw)), None)
                if W is not None:
                    k = next(j for j, (_, x) in enumerate(hw) if x == W)
                    dropped.add(n.input[k])
            concat_rs.add(n.output[0])
            dropped.add(n.output[0])
            extra.update({n.output[0] + "-rs": n.name, n.output[0] + "_rs": n.name})

    # 8. large MaxPools (SPP, kernel > 7; threshold seen only on yolox 5/9/13) are tiled into cascades of
    #    small pools named X_mp, X_mp#1, ...; parallel tiles on one input X are merged, the last tile survives
    big: dict[str, list[str]] = defaultdict(list)
    for n in g.node:
        if n.op_type == "MaxPool":
            k = next((list(a.ints) for a in n.attribute if a.name == "kernel_shape"), [1])
            if max(k) > 7:
                big[n.input[0]].append(n.name)
    for x, pools in big.items():
        extra[f"{x}_mp" if len(pools) == 1 else f"{x}_mp#{len(pools) - 1}"] = pools[-1]

    names = set(graph_in) | {f"{i}_int8" for i in graph_in} | {f"{o}_int8" for o in graph_out} | set(graph_out)
    dup = defaultdict(int)
    for n in g.node:
        for o in n.output:
            if not o or o in static or o in dropped:
                continue
            r = rank.get(o, 4)
            if r == 4 or (n.op_type == "Reshape" and any(c.output[0] in concat_rs for c in consumers[o])):
                names.add(o)
            else:  # non-4-D activations are computed in 4-D under the name X-rs
                names.add(o + "-rs")
        # 7. constant (initializer) operands of element-wise ops on activations get quantized too;
        #    a constant used by k such ops appears as NAME, NAME_dup1, ..., NAME_dup{k-1}
        if n.op_type in _ELTWISE and not any(o in dropped or o in static for o in n.output):
            for i in n.input:
                if i in inits:
                    names.add(i if dup[i] == 0 else f"{i}_dup{dup[i]}")
                    dup[i] += 1
    return names, extra


def cfg_name_of_nodes(model: onnx.ModelProto, cfg: set[str]) -> dict[str, str | None]:
    """ONNX node name -> the cfg tensor name that carries its precision (None: folded or fused away).

    ``cfg``: the names step1 writes (`predict_step1_names`, or a real cfg's ``quantize_parameters``)."""
    g = model.graph
    consumers = defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
    out = {}
    for n in g.node:
        o = n.output[0] if n.output else ""
        if o in cfg:
            out[n.name] = o
        elif o + "-rs" in cfg:
            out[n.name] = o + "-rs"
        elif n.op_type == "Sigmoid" and len(consumers[o]) == 1 and consumers[o][0].output[0] in cfg:
            out[n.name] = consumers[o][0].output[0]  # fused SiLU: precision of the Mul (exSwish) output
        else:
            out[n.name] = None
    return out
