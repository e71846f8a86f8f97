"""Run a static-shape detector at another input resolution.

`at_resolution` frees the spatial dims of the image input and rewrites the constants the exporter baked
for the old size. Every such constant is read as a function of the input height H and width W: shapes
are inferred at the original size (H0, W0), at (2 H0, W0) and (H0, 2 W0) (one probe per axis) and at
(h, W0), (H0, w), (h, w) for the asked size, so a dim that follows H is told from one that follows W even
on a square model. Rewritten (op type: baked input):

* ``Reshape`` (shape): the target is grouped against its input row-major (dims of equal product). A
  group whose input does not change keeps its constants; otherwise the group's size must factor as
  ``g(H) * k(W)`` and each target dim takes a role -- constant, follows H, follows W, or both -- so the
  products match at every probe. Channel shuffles ``[N, 2, C/2, H, W]``, flattened heads
  ``[N, C, H*W]`` and a flattened ``H*W`` split back into ``[H, W]`` are all unambiguous this way; when
  several roles fit equally well, the nearest tensor upstream carrying them consecutively decides (the
  fallback below: read at run time where it differs from H before W); without one, H before W.
* ``Resize`` (sizes): a spatial size equal to a real H (W) dim of the graph follows that dim (an FPN
  upsample to its skip connection's size), else it scales with the Resize input.
* ``Slice`` (starts/ends on an axis that scales): ``ends`` reaching the old end follow the new end; an
  interior bound equal to a real dim of the same axis follows it; other starts (YOLOX's Focus
  ``x[..., 1::2, :]``) are offsets and kept; negative bounds are kept.
* ``Expand`` (shape, also torch's ``Where(Equal(shape, -1), 1, shape)``) and ``ConstantOfShape``
  (input): an entry equal to the broadcast input dim follows it; a new entry follows the dim it is
  combined with, else the one real dim function with that value.

Fallback where the value stays ambiguous (an 8 that is C, H and W of a square model): the entry is
computed at run time from the shape of a tensor that carries it -- for a Reshape the nearest settled
tensor upstream whose consecutive dims (each times a small factor) give the target dims with the same
product at every probe; for Expand / ConstantOfShape / Resize the nearest one (the node's partners first)
with that value at that axis -- as ``Shape -> Gather(axes) [-> Mul/Div] -> Concat`` with the constant
entries, so the graph follows its input. New nodes are named ``<node fed>/at_resolution<i>/...``; no
existing node is renamed. When no tensor carries the dims the constant is refused.

Constants are processed in topological order (a node downstream of another sees its input at the new
size only once the upstream one is rewritten). A constant that no rule explains raises ModelError naming
the node, its op type and the fix (``model.resolutions``: files exported per resolution). The result
declares the new static input size and is verified by running it in onnxruntime on a random input of
that size; a failure names the node ORT reported and suggests ``model.resolutions``.

Example:
    >>> import onnx                                           # doctest: +SKIP
    >>> m320 = at_resolution(onnx.load("yolox_nano.onnx"), (320, 320))   # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from autoq.errors import ModelError

if TYPE_CHECKING:
    import onnx

__all__ = ["at_resolution", "parse_resolution", "format_resolution", "static_input_size"]


def parse_resolution(text: str) -> tuple[int, int]:
    """``"320x256"`` -> (320, 256) (height x width)."""
    try:
        h, w = str(text).lower().split("x")
        size = (int(h), int(w))
    except ValueError:
        raise ValueError(f"resolution {text!r} must look like HxW, e.g. 320x320") from None
    if min(size) <= 0:
        raise ValueError(f"resolution {text!r} must be positive")
    return size


def format_resolution(size: Sequence[int]) -> str:
    """(320, 256) -> ``"320x256"``."""
    return f"{int(size[0])}x{int(size[1])}"


def _image_input(model: onnx.ModelProto):
    inits = {t.name for t in model.graph.initializer}
    real = [i for i in model.graph.input if i.name not in inits]
    if len(real) != 1 or len(real[0].type.tensor_type.shape.dim) != 4:
        raise ModelError("at_resolution needs a model with one 4-D (N, C, H, W) image input")
    return real[0]


def static_input_size(model: onnx.ModelProto) -> tuple[int, int] | None:
    """The (h, w) the image input declares, or None when a spatial dim is symbolic."""
    dims = _image_input(model).type.tensor_type.shape.dim
    if all(d.HasField("dim_value") and d.dim_value > 0 for d in dims[2:]):
        return int(dims[2].dim_value), int(dims[3].dim_value)
    return None


def _with_size(model: onnx.ModelProto, size: tuple[int, int] | None) -> onnx.ModelProto:
    """A copy whose image input is (N, C, *size) (symbolic H, W when ``size`` is None), outputs and
    value_info cleared so nothing of the old size survives."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    dims = _image_input(copy).type.tensor_type.shape.dim
    for d, name, value in zip(dims[2:], ("height", "width"), size or (None, None)):
        d.Clear()
        if value is None:
            d.dim_param = name
        else:
            d.dim_value = int(value)
    del copy.graph.value_info[:]
    for out in copy.graph.output:
        if out.type.tensor_type.HasField("shape"):
            for d in out.type.tensor_type.shape.dim:
                d.Clear()
    return copy


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...] | None]:
    """Static shape of every tensor. onnxruntime's symbolic shape inference first: it evaluates the
    Shape -> Gather -> Div -> Slice arithmetic exporters emit (``torch.chunk``), which onnx's own
    inference leaves unknown; onnx's inference when it cannot handle the graph."""
    import onnx

    inferred = None
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=False, guess_output_rank=False)
    except Exception:
        inferred = None
    if inferred is None:
        try:
            inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
        except Exception as exc:
            raise ModelError(f"shape inference failed while changing the resolution: {' '.join(str(exc).split())[:300]}") from None
    out: dict[str, tuple[int, ...] | None] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        out[vi.name] = None if any(d is None for d in dims) else tuple(int(d) for d in dims)
    return out


def _constant(model: onnx.ModelProto, name: str):
    """The int array of initializer or Constant node ``name``, or None when it is computed."""
    import onnx
    from onnx import numpy_helper

    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] == name:
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(onnx.helper.get_attribute_value(a))
    return None


def _groups(src: Sequence[int], dst: Sequence[int]) -> list[tuple[list[int], list[int]]] | None:
    """Row-major grouping of a reshape: index lists (src dims, dst dims) of equal product, or None."""
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(src) or j < len(dst):
        gi, gj = [], []
        pi = pj = 1
        while True:
            if pi == pj and gi and gj:
                # swallow trailing 1s into the current group so groups stay minimal but complete
                break
            if pi <= pj and i < len(src):
                gi.append(i)
                pi *= src[i]
                i += 1
            elif j < len(dst):
                gj.append(j)
                pj *= dst[j]
                j += 1
            elif i < len(src):
                gi.append(i)
                pi *= src[i]
                i += 1
            else:
                break
        if pi != pj:
            return None
        groups.append((gi, gj))
    return groups


Size = tuple[int, int]
_HUGE = 2**62  # a Slice bound at least this big means "to the end" and never needs a rewrite


def _ancestors_of(model: onnx.ModelProto) -> dict[str, set[str]]:
    """Node name -> names of the nodes upstream of it."""
    producer = {o: n.name for n in model.graph.node for o in n.output}
    up: dict[str, set[str]] = {}
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        s: set[str] = set()
        for x in node.input:
            p = producer.get(x)
            if p is not None:
                s.add(p)
                s |= up.get(p, set())
        up[node.name] = s
    return up


def _set_input(model: onnx.ModelProto, node, index: int, values, tag: str, dtype=None) -> None:
    """Points input ``index`` of ``node`` at a new initializer holding ``values`` (int64 unless ``dtype``)."""
    import numpy as np
    from onnx import numpy_helper

    name = f"{node.name}/{tag}"
    for t in list(model.graph.initializer):
        if t.name == name:
            model.graph.initializer.remove(t)
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=dtype or np.int64), name))
    node.input[index] = name


def _set_computed(model: onnx.ModelProto, node, index: int, entries: Sequence, tag: str, dtype=None) -> None:
    """Points input ``index`` of ``node`` at a vector computed from run-time shapes: constants stay
    initializers, each ``_Dim`` run is Shape(tensor) -> Gather(axes) (-> Mul / Div by its factor), all
    joined by one Concat. New nodes and tensors are named ``<node>/<tag>/...``; other names are kept."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    base = f"{node.name}/{tag}"
    made: list = []
    pieces: list[str] = []
    shapes: dict[str, str] = {}

    def const(name: str, values) -> str:
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(values, np.int64), f"{base}/{name}"))
        return f"{base}/{name}"

    def add(op: str, inputs: list[str], name: str, **attrs) -> str:
        made.append(helper.make_node(op, inputs, [f"{base}/{name}"], name=f"{base}/{name}", **attrs))
        return f"{base}/{name}"

    k = 0
    while k < len(entries):
        e = entries[k]
        if not isinstance(e, _Dim):
            end = next((j for j in range(k, len(entries)) if isinstance(entries[j], _Dim)), len(entries))
            pieces.append(const(f"const{k}", [int(v) for v in entries[k:end]]))
            k = end
            continue
        if e.tensor not in shapes:
            shapes[e.tensor] = add("Shape", [e.tensor], f"Shape{len(shapes)}")
        end = k + 1  # neighbours read from the same tensor without a factor share one Gather
        while (e.num == e.den == 1 and end < len(entries) and isinstance(entries[end], _Dim)
               and entries[end].tensor == e.tensor and entries[end].num == entries[end].den == 1):
            end += 1
        out = add("Gather", [shapes[e.tensor], const(f"axes{k}", [d.axis for d in entries[k:end]])], f"Gather{k}", axis=0)
        if e.num != 1:
            out = add("Mul", [out, const(f"num{k}", [e.num])], f"Mul{k}")
        if e.den != 1:
            out = add("Div", [out, const(f"den{k}", [e.den])], f"Div{k}")
        pieces.append(out)
        k = end
    out = pieces[0] if len(pieces) == 1 else add("Concat", pieces, "Concat", axis=0)
    if dtype is not None and np.dtype(dtype) != np.int64:
        out = add("Cast", [out], "Cast", to=helper.np_dtype_to_tensor_dtype(np.dtype(dtype)) or TensorProto.INT64)
    model.graph.node.extend(made)
    node.input[index] = out


def _toposort(model: onnx.ModelProto) -> None:
    """Stable topological order (the fallback's nodes are appended last but feed earlier ones)."""
    nodes = list(model.graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    order: list[int] = []
    state: dict[int, int] = {}
    for root in range(len(nodes)):
        stack = [(root, False)]
        while stack:
            i, expanded = stack.pop()
            if expanded:
                state[i] = 2
                order.append(i)
                continue
            if state.get(i):
                continue
            state[i] = 1
            stack.append((i, True))
            deps = sorted({producer[x] for x in nodes[i].input if x in producer}, reverse=True)
            stack.extend((d, False) for d in deps if not state.get(d))
    if order != list(range(len(nodes))):
        del model.graph.node[:]
        model.graph.node.extend(nodes[i] for i in order)


def _drop_unused_constants(model: onnx.ModelProto) -> None:
    used = {x for n in model.graph.node for x in n.input} | {o.name for o in model.graph.output}
    for t in [t for t in model.graph.initializer if t.name not in used]:
        model.graph.initializer.remove(t)
    for n in [n for n in model.graph.node if n.op_type == "Constant" and n.output[0] not in used]:
        model.graph.node.remove(n)


def _prefix(model: onnx.ModelProto, blocked: set[str]) -> onnx.ModelProto:
    """``model`` without the ``blocked`` nodes; its outputs are the tensors they would read and the
    model's own outputs it still makes (so inference keeps every settled tensor's shape)."""
    import onnx

    keep = [n for n in model.graph.node if n.name not in blocked]
    made = {o for n in keep for o in n.output}
    frontier = list(dict.fromkeys([*(x for n in model.graph.node if n.name in blocked for x in n.input if x in made),
                                   *(o.name for o in model.graph.output if o.name in made)]))
    del model.graph.node[:]
    model.graph.node.extend(keep)
    del model.graph.output[:]
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(x) for x in frontier)
    return model


def _refuse(node, why: str) -> ModelError:
    return ModelError(f"cannot change the resolution: {node.op_type} {node.name!r} {why}; "
                      "give files per resolution in model.resolutions")


class _Ambiguous(ModelError):
    """A baked value matches dims that change differently: the caller may read it from a carrier tensor."""


@dataclass(frozen=True)
class _Dim:
    """A shape entry computed at run time: dim ``axis`` of ``tensor`` times ``num`` / ``den`` (the fallback
    for a constant whose function of (H, W) is ambiguous: Shape -> Gather -> Mul/Div -> Concat)."""

    tensor: str
    axis: int
    num: int = 1
    den: int = 1


class _Probe:
    """Shapes of the partly rewritten model at every probe size, and the real dims of its settled part.

    A dim is described by its *signature*: its values at every probe size (in ``sizes`` order), i.e.
    a function of (H, W) sampled where it matters. ``real`` maps a base value to the signatures of the
    dims of settled tensors (no pending rewrite upstream) that have it.
    """

    def __init__(self, shapes: dict[Size, dict], base: Size, settled: set[str]) -> None:
        self.shapes, self.base, self.sizes = shapes, base, list(shapes)
        self.real: dict[int, Counter] = {}
        self.settled = settled
        for name in settled:
            for axis in range(len(shapes[base].get(name) or ())):
                sig = self.sig(name, axis)
                if sig is not None:
                    self.real.setdefault(sig[0], Counter())[sig] += 1

    def at(self, s: Size, name: str):
        return self.shapes[s].get(name)

    def all(self, name: str) -> dict[Size, tuple[int, ...]] | None:
        got = {s: self.at(s, name) for s in self.sizes}
        return None if any(v is None for v in got.values()) else got

    def sig(self, name: str, axis: int) -> tuple[int, ...] | None:
        got = self.all(name)
        if got is None or any(len(v) <= axis for v in got.values()):
            return None
        return tuple(int(got[s][axis]) for s in self.sizes)

    def h_of(self, s: Size) -> Size:
        return (s[0], self.base[1])

    def w_of(self, s: Size) -> Size:
        return (self.base[0], s[1])

    def kind(self, sig: Sequence[int]) -> str:
        """'' (constant), 'h', 'w' or 'hw': which input dims the dim follows (probes 2H x W, H x 2W)."""
        i = self.sizes.index
        h0, w0 = self.base
        h = sig[i((2 * h0, w0))] != sig[0]
        w = sig[i((h0, 2 * w0))] != sig[0]
        return ("h" if h else "") + ("w" if w else "")

    def values(self, sig: Sequence[int]) -> dict[Size, int]:
        return dict(zip(self.sizes, (int(v) for v in sig)))


def _pick(node, value: int, candidates: list[tuple[int, ...]], p: _Probe, what: str) -> dict[Size, int]:
    """The one function of (H, W) among ``candidates`` (signatures with base ``value``); refuses when they disagree."""
    distinct = list(dict.fromkeys(candidates))
    if len(distinct) > 1:
        kinds = sorted({p.kind(s) or "constant" for s in distinct})
        raise _Ambiguous(_refuse(node, f"{what} {value} matches dims that change differently with the input size "
                            f"({', '.join(kinds)}): ambiguous").args[0])
    return p.values(distinct[0])


def _partner_sigs(model: onnx.ModelProto, node, p: _Probe, axis_from_end: int) -> list[tuple[int, ...]]:
    """Signatures, at the same axis (counted from the end), of settled tensors the output of ``node`` is
    combined with (the other inputs of its consumers: an Add, Mul or Concat partner)."""
    out = []
    for c in model.graph.node:
        if node.output[0] not in c.input or c.op_type not in ("Add", "Mul", "Sub", "Div", "Concat", "Where"):
            continue
        for x in c.input:
            if x == node.output[0] or x not in p.settled:
                continue
            shape = p.at(p.base, x)
            if shape is None or len(shape) < axis_from_end:
                continue
            sig = p.sig(x, len(shape) - axis_from_end)
            if sig is not None and (c.op_type != "Concat" or _concat_axis(c, len(shape)) != len(shape) - axis_from_end):
                out.append(sig)
    return out


def _concat_axis(node, rank: int) -> int:
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    return axis + rank if axis < 0 else axis


def _roles(node, dims0: list[int], rh: dict, rw: dict, p: _Probe) -> tuple[dict[Size, list[int]] | None, bool]:
    """Values of the target dims ``dims0`` of one Reshape group at every probe size.

    Each dim takes a role: constant, follows H (times ``rh``), follows W (``rw``) or both; exactly one
    dim carries each factor the group's size has. Of the roles whose values stay integral everywhere,
    the one whose dims exist as real dims of the graph wins, then H before W (row-major NCHW order),
    then the one where the larger dims scale. Returns (values, contested): values None when even the
    tie-breaks cannot choose, contested when a reading as well supported by real dims differs.
    """
    scales_h = any(r != 1 for r in rh.values())
    scales_w = any(r != 1 for r in rw.values())
    if len(dims0) > 8:
        raise _refuse(node, f"splits a dim that scales with the input into {len(dims0)} dims (too many to tell apart)")
    new = p.sizes[-1]
    options = []
    for roles in itertools.product(("", "h", "w", "hw"), repeat=len(dims0)):
        if sum("h" in r for r in roles) != int(scales_h) or sum("w" in r for r in roles) != int(scales_w):
            continue
        vals: dict[Size, list[int]] = {}
        for s in p.sizes:
            row = []
            for d, r in zip(dims0, roles):
                v = Fraction(d) * (rh[s] if "h" in r else 1) * (rw[s] if "w" in r else 1)
                if v.denominator != 1 or v < 1:
                    break
                row.append(int(v))
            else:
                vals[s] = row
                continue
            break
        if len(vals) != len(p.sizes):
            continue
        missing = sum(1 for k, r in enumerate(roles) if r and tuple(vals[s][k] for s in p.sizes) not in p.real.get(dims0[k], {}))
        hpos = [k for k, r in enumerate(roles) if "h" in r]
        wpos = [k for k, r in enumerate(roles) if "w" in r]
        backwards = int(bool(hpos and wpos and hpos[0] > wpos[0]))
        ones = sum(1 for d, r in zip(dims0, roles) if r and d == 1)
        # last resort: the larger dim is the one that scales ([H] -> [H/2, 2] in a space-to-depth)
        small = -sum(d for d, r in zip(dims0, roles) if r)
        options.append(((missing, backwards, ones, small), vals))
    if not options:
        raise _refuse(node, f"splits input dims that scale with the input into {dims0}, and no split keeps "
                            "whole dims at every size")
    options.sort(key=lambda o: o[0])
    best_score, best = options[0]
    # contested: another reading as well supported by real dims differs somewhere (only the H-before-W /
    # larger-dim tie-breaks chose); the caller then asks the graph (a tensor carrying these dims)
    contested = any(score[0] == best_score[0] and vals != best for score, vals in options[1:])
    if any(score == best_score and vals[new] != best[new] for score, vals in options[1:]):
        return None, True
    return best, contested


_CARRIERS = 64  # tensors searched for a carrier: the nearest ones, so a match is the graph's own dims


def _upstream(model: onnx.ModelProto, start: Sequence[str]):
    """Tensors upstream of ``start`` (themselves first), nearest first."""
    producer = {o: n for n in model.graph.node for o in n.output}
    seen, queue = set(), list(start)
    while queue and len(seen) < _CARRIERS:
        t = queue.pop(0)
        if t in seen or not t:
            continue
        seen.add(t)
        yield t
        if t in producer:
            queue.extend(producer[t].input)


def _factor(a: int, b: int) -> Fraction | None:
    """b / a when it is a small ratio (an exporter's ``H // 2`` or ``2 * W``), else None."""
    f = Fraction(b, a) if a else None
    return f if f is not None and f.numerator <= 4 and f.denominator <= 4 else None


def _carrier_run(model, x: str, dims: list[int], size: dict[Size, int], p: _Probe):
    """Reshape fallback: the nearest settled tensor upstream of ``x`` with consecutive dims that give
    ``dims`` (each times a small factor, fewest factors first) and whose product follows the group's
    ``size`` at every probe. Returns (one ``_Dim`` per entry, their values at every probe) or None."""
    for t in _upstream(model, [x]):
        got = p.all(t) if t in p.settled else None
        if got is None:
            continue
        rank, found = len(got[p.base]), []
        for a in range(rank - len(dims) + 1):
            fs = [_factor(got[p.base][a + k], d) for k, d in enumerate(dims)]
            if any(f is None for f in fs):
                continue
            vals = {s: [got[s][a + k] * f for k, f in enumerate(fs)] for s in p.sizes}
            if all(v.denominator == 1 for row in vals.values() for v in row) and \
                    all(math.prod(vals[s]) == size[s] for s in p.sizes):
                found.append((sum(f != 1 for f in fs), a, fs, {s: [int(v) for v in r] for s, r in vals.items()}))
        found.sort(key=lambda f: f[0])
        if found and not any(f[0] == found[0][0] and f[3] != found[0][3] for f in found[1:]):
            _, a, fs, vals = found[0]
            return [_Dim(t, a + k, f.numerator, f.denominator) for k, f in enumerate(fs)], vals
    return None


def _carrier_dim(model, node, rank: int, k: int, value: int, p: _Probe) -> tuple[str, int] | None:
    """Expand / ConstantOfShape fallback: the nearest settled tensor (the node's partners -- the other
    inputs of its consumers -- first, then upstream of them and of the node) whose dim ``k`` of ``rank``
    (aligned from the end, as broadcasting does) is ``value``. Returns (tensor, axis) or None."""
    partners = [x for c in model.graph.node if node.output[0] in c.input for x in c.input if x != node.output[0]]
    for t in _upstream(model, [*partners, *node.input]):
        shape = p.at(p.base, t) if t in p.settled else None
        axis = None if shape is None else len(shape) - (rank - k)
        if axis is not None and 0 <= axis and shape[axis] == value and p.sig(t, axis) is not None:
            return t, axis
    return None


def _reshape(model, node, target0: list[int], p: _Probe) -> dict[int, dict[Size, list[int]]]:
    """Reshape: the target at every probe size (see the module docstring)."""
    x = node.input[0]
    src0, dst0 = p.at(p.base, x), p.at(p.base, node.output[0])
    if src0 is None or dst0 is None:
        raise _refuse(node, f"has no static input/output shape at {format_resolution(p.base)}")
    groups = _groups(src0, dst0)
    if groups is None:
        raise _refuse(node, f"{list(src0)} -> {list(dst0)} has no row-major grouping")
    src = p.all(x)
    if src is None:
        missing = next(s for s in p.sizes if p.at(s, x) is None)
        raise _refuse(node, f"has no static input shape at {format_resolution(missing)}")
    out = {s: list(target0) for s in p.sizes}
    for gi, gj in groups:
        size = {s: math.prod(src[s][i] for i in gi) for s in p.sizes}
        p0 = size[p.base]
        if all(v == p0 for v in size.values()):
            continue
        if any(size[s] * p0 != size[p.h_of(s)] * size[p.w_of(s)] for s in p.sizes):
            raise _refuse(node, f"reshapes input dims {[src0[i] for i in gi]} whose size is not a product of a "
                                "function of H and one of W")
        rh = {s: Fraction(size[p.h_of(s)], p0) for s in p.sizes}
        rw = {s: Fraction(size[p.w_of(s)], p0) for s in p.sizes}
        dims = [dst0[j] for j in gj]
        vals, contested = _roles(node, dims, rh, rw, p)
        if contested:
            run = _carrier_run(model, x, dims, size, p)
            if run is not None and (vals is None or any(run[1][s] != vals[s] for s in p.sizes)):
                for s in p.sizes:
                    for k, j in enumerate(gj):
                        if target0[j] not in (0, -1, None):
                            out[s][j] = run[0][k]
                continue
        if vals is None:
            raise _refuse(node, f"splits input dims that scale with the input into {dims} (ambiguous, and no "
                                "tensor upstream carries these dims)")
        for s in p.sizes:
            for k, j in enumerate(gj):
                if target0[j] not in (0, -1, None):  # 0 copies the input dim, -1 absorbs the rest, None is
                    # computed from the graph: all follow the input
                    out[s][j] = vals[s][k]
    return {1: out}


def _resize(model, node, old: list[int], p: _Probe) -> dict[int, dict[Size, list[int]]]:
    """Resize with constant sizes: an axis it does not resize follows its input; a resized one follows the
    dim it is combined with (FPN skip), else a real dim of the same kind and value (several: the nearest
    tensor with that dim, read at run time), else its input's scale."""
    x = node.input[0]
    src = p.all(x)
    if src is None or len(src[p.base]) != len(old):
        raise _refuse(node, "has constant sizes and no static input shape")
    base_out = p.at(p.base, node.output[0])
    old = [o if o is not None else base_out[i] for i, o in enumerate(old)]
    rank = len(old)
    out = {s: list(old) for s in p.sizes}
    for i, o in enumerate(old):
        s0 = src[p.base][i]
        if s0 == o:
            for s in p.sizes:
                out[s][i] = src[s][i]
            continue
        kind = "h" if i == rank - 2 else "w" if i == rank - 1 else ""
        partners = [g for g in _partner_sigs(model, node, p, rank - i) if g[0] == o]
        same = [g for g, n in p.real.get(o, Counter()).items() for _ in range(n) if p.kind(g) == kind]
        if partners:
            vals = _pick(node, o, partners, p, "size")
        elif kind and same:
            carrier = _carrier_dim(model, node, rank, i, o, p) if len(set(same)) > 1 else None
            if carrier is not None and p.kind(p.sig(*carrier)) == kind:  # several readings: the nearest tensor
                vals = {s: _Dim(*carrier) for s in p.sizes}
            else:
                vals = p.values(Counter(same).most_common(1)[0][0])
        elif all(src[s][i] == s0 for s in p.sizes):
            continue
        else:
            vals = {s: int(round(o * src[s][i] / s0)) for s in p.sizes}
        for s in p.sizes:
            out[s][i] = vals[s]
    return {3: out}


def _slice(model, node, bounds: dict[int, list[int]], p: _Probe) -> dict[int, dict[Size, list[int]]]:
    """Slice: bounds on an axis that scales follow its end (or the real dim of the same kind they equal)."""
    x = node.input[0]
    src = p.all(x)
    if src is None:
        raise _refuse(node, "has no static input shape")
    rank = len(src[p.base])
    n = len(next(iter(bounds.values())))
    axes = _constant(model, node.input[3]) if len(node.input) > 3 and node.input[3] else None
    axes = [int(a) + rank if int(a) < 0 else int(a) for a in (axes.reshape(-1) if axes is not None else range(n))]
    steps = _constant(model, node.input[4]) if len(node.input) > 4 and node.input[4] else None
    out = {idx: {s: list(v) for s in p.sizes} for idx, v in bounds.items()}
    for k, a in enumerate(axes):
        d = {s: src[s][a] for s in p.sizes}
        d0 = d[p.base]
        if all(v == d0 for v in d.values()):
            continue
        if steps is not None and int(steps.reshape(-1)[k]) < 0:
            raise _refuse(node, f"slices axis {a} (which scales with the input) backwards")
        kind = p.kind(tuple(d[s] for s in p.sizes))
        for idx, vals in bounds.items():
            v = int(vals[k])
            if v <= 0 or v >= _HUGE:
                continue  # from the start, relative to the end, or to the end: already follows
            if v >= d0:
                for s in p.sizes:
                    out[idx][s][k] = d[s] + (v - d0)
                continue
            same = [g for g in p.real.get(v, ()) if p.kind(g) == kind]
            if not same and idx == 1:
                continue  # a start matching no dim is an offset (YOLOX's Focus ``x[..., 1::2, :]``): kept
            if not same:
                raise _refuse(node, f"cuts axis {a} at {v} of {d0}, which does not follow the input size")
            got = _pick(node, v, same, p, "bound")
            for s in p.sizes:
                out[idx][s][k] = got[s]
    return out


def _expand(model, node, shape0: list[int], p: _Probe, x: str | None) -> dict[int, dict[Size, list[int]]]:
    """Expand (shape) / ConstantOfShape (``x`` None): an entry equal to the input dim follows it; a new one
    follows the dim it is combined with, else the one real dim with its value."""
    src = p.all(x) if x is not None else None
    if x is not None and src is None:
        raise _refuse(node, "has no static input shape")
    rank = len(shape0)
    out = {s: list(shape0) for s in p.sizes}
    for k, v in enumerate(shape0):
        if v in (0, 1, -1, None):
            continue
        axis = k - (rank - len(src[p.base])) if src is not None else -1
        if src is not None and axis >= 0 and src[p.base][axis] == v:
            for s in p.sizes:
                out[s][k] = src[s][axis]
            continue
        partners = [g for g in _partner_sigs(model, node, p, rank - k) if g[0] == v]
        candidates = partners or [g for g in p.real.get(v, ())]
        if not candidates or not any(p.kind(g) for g in candidates):
            continue  # a constant: nothing of that size follows the input
        try:
            got = _pick(node, v, candidates, p, "entry")
        except _Ambiguous as exc:
            carrier = _carrier_dim(model, node, rank, k, v, p)
            if carrier is None:
                raise ModelError(str(exc).replace("ambiguous", "ambiguous, and no tensor near it carries that dim")) from None
            sig = p.sig(*carrier)
            got = {s: _Dim(*carrier) for s in p.sizes} if p.kind(sig) else p.values(sig)
        for s in p.sizes:
            out[s][k] = got[s]
    idx = 1 if x is not None else 0
    return {idx: out}


@dataclass(frozen=True)
class _Slot:
    """Where entries ``start:start + len(values)`` of a node's shape input live: a constant input
    ``index`` of node ``node`` (the shape input itself, or one constant piece of the Concat computing it)."""

    node: str
    index: int
    start: int
    values: tuple[int, ...]
    dtype: Any


_SHAPE_INPUTS = {"Reshape": (1,), "Resize": (3,), "Slice": (1, 2), "Expand": (1,), "ConstantOfShape": (0,)}


def _baked(model: onnx.ModelProto, node, base: dict, producers: dict) -> dict[int, tuple[list, list[_Slot]]] | None:
    """The baked shape inputs of ``node`` by input index: the vector (None where computed from the graph,
    which follows the input by itself) and the constant slots it is made of; None when nothing is baked.
    A shape input is baked when it is a constant or a Concat with constant pieces (torch.onnx's
    ``Concat(Shape(x)[:2], [h, w])`` for ``F.interpolate(size=...)``)."""
    out = {}
    for i in _SHAPE_INPUTS.get(node.op_type, ()):
        if len(node.input) <= i or not node.input[i]:
            continue
        name = node.input[i]
        v = _constant(model, name)
        if v is not None:
            vals = [int(a) for a in v.reshape(-1)]
            out[i] = (vals, [_Slot(node.name, i, 0, tuple(vals), v.dtype)])
            continue
        cat = producers.get(name)
        if node.op_type == "Expand" and cat is not None and cat.op_type == "Where" and len(cat.input) == 3:
            # torch's expand(*ints): Where(Equal(shape, -1), ones, shape); rewriting the ``shape`` it falls
            # back to is enough (-1 entries are never rewritten, so the condition stays right)
            c, cond = _constant(model, cat.input[2]), producers.get(cat.input[0])
            if c is not None and cond is not None and cond.op_type == "Equal":
                vals = [int(a) for a in c.reshape(-1)]
                out[i] = (vals, [_Slot(cat.name, 2, 0, tuple(vals), c.dtype)])
            continue
        if cat is None or cat.op_type != "Concat" or node.op_type == "Slice":
            continue
        full: list = []
        slots = []
        for j, piece in enumerate(cat.input):
            c = _constant(model, piece)
            if c is not None:
                vals = [int(a) for a in c.reshape(-1)]
                slots.append(_Slot(cat.name, j, len(full), tuple(vals), c.dtype))
                full += vals
            elif base.get(piece) is not None and len(base[piece]) == 1:
                full += [None] * base[piece][0]
            else:
                break
        else:
            if slots:
                out[i] = (full, slots)
    return out or None


def _targets(model, node, baked: dict[int, list], p: _Probe) -> dict[int, dict[Size, list]]:
    op = node.op_type
    if op == "Reshape":
        return _reshape(model, node, baked[1], p)
    if op == "Resize":
        return _resize(model, node, baked[3], p)
    if op == "Slice":
        return _slice(model, node, baked, p)
    if op == "Expand":
        return _expand(model, node, baked[1], p, node.input[0])
    return _expand(model, node, baked[0], p, None)


def at_resolution(model: onnx.ModelProto, size: tuple[int, int], *, verify: bool = True) -> onnx.ModelProto:
    """``model`` rewritten to run at input ``size`` (h, w); see the module docstring.

    Raises:
        ModelError: a baked constant cannot be rewritten, or the rewritten model does not run
            (the message names the node and suggests ``model.resolutions``).
    """
    h, w = int(size[0]), int(size[1])
    orig = static_input_size(model)
    if orig is None:  # already symbolic: nothing baked for one size that we could find
        out = _with_size(model, (h, w))
        if verify:
            _verify(out, (h, w))
        return out
    h0, w0 = orig
    work = _with_size(model, (h0, w0))
    base_shapes = _shapes(work)  # the original is consistent at its own size: every shape known
    producers = {o: n for n in work.graph.node for o in n.output}
    baked = {n.name: b for n in work.graph.node if (b := _baked(work, n, base_shapes, producers)) is not None}
    ancestors = _ancestors_of(work)
    producer = {o: n.name for n in work.graph.node for o in n.output}
    image = _image_input(work).name
    # base first, the asked size last; (s.h, W0) and (H0, s.w) of every size are in the list
    sizes = list(dict.fromkeys([(h0, w0), (2 * h0, w0), (h0, 2 * w0), (h, w0), (h0, w), (h, w)]))
    done: dict[tuple[str, int], tuple[_Slot, dict[Size, list[int]]]] = {}  # (node, input) -> slot, values

    def rewritten(at: Size) -> onnx.ModelProto:
        m = _with_size(model, at)
        by = {n.name: n for n in m.graph.node}
        for (name, i), (slot, per_size) in done.items():
            if any(isinstance(v, _Dim) for v in per_size[at]):
                _set_computed(m, by[name], i, per_size[at], f"at_resolution{i}", slot.dtype)
            else:
                _set_input(m, by[name], i, per_size[at], f"at_resolution{i}", slot.dtype)
        _toposort(m)
        return m

    nodes = {n.name: n for n in work.graph.node}
    pending = set(baked)
    while pending:
        blocked = {n for n in nodes if n in pending or ancestors[n] & pending}
        # shapes of the settled part only: downstream of a pending node the old constants still hold
        shapes = {s: base_shapes if s == (h0, w0) else _shapes(_prefix(rewritten(s), blocked)) for s in sizes}
        settled = {image} | {t for t, n in producer.items() if n not in blocked}
        p = _Probe(shapes, (h0, w0), settled)
        ready = [n for n in nodes if n in pending and not (ancestors[n] & pending)]
        for name in ready:
            pending.discard(name)
            targets = _targets(work, nodes[name], {i: full for i, (full, _) in baked[name].items()}, p)
            for i, per_size in targets.items():
                for slot in baked[name][i][1]:
                    end = slot.start + len(slot.values)
                    values = {s: [v if isinstance(v, _Dim) else int(v) for v in per_size[s][slot.start:end]]
                              for s in sizes}
                    if any(values[s] != list(slot.values) for s in sizes):
                        done[(slot.node, slot.index)] = (slot, values)
        if not ready:  # pragma: no cover - a cycle cannot happen in a valid graph
            raise ModelError(f"cannot order the nodes {sorted(pending)}")
    out = rewritten((h, w))
    _drop_unused_constants(out)
    if verify:
        _verify(out, (h, w))
    return out


def _verify(model: onnx.ModelProto, size: tuple[int, int]) -> None:
    """Runs ``model`` on a random input of ``size`` in onnxruntime; ModelError names the failing node."""
    import re

    import numpy as np
    import onnxruntime as ort

    inp = _image_input(model)
    dims = inp.type.tensor_type.shape.dim
    shape = [int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in dims[:2]] + list(size)
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.intra_op_num_threads = 1
    try:
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)
        sess.run(None, {inp.name: x})
    except Exception as exc:
        text = " ".join(str(exc).split())
        m = re.search(r"node\.? ?(?:name:? ?)?'?([\w./:-]+)'?", text, re.IGNORECASE)
        where = f" at node {m.group(1)}" if m else ""
        raise ModelError(
            f"the model rewritten for {format_resolution(size)} does not run{where}: {text[:300]}; "
            f"export the model at that size and give it as model.resolutions: {{\"{format_resolution(size)}\": file.onnx}}"
        ) from None
