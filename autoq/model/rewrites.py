"""Op replacements: pattern match on the ONNX graph, rewrite, numeric check.

Each rewrite is registered by name in `REWRITES` (a user names their own as ``pkg.mod:rewrite``: a
`Rewrite`, or a function ``(onnx.ModelProto) -> int`` that edits the model in place and returns how
many places it changed, taken as an approximation). ``space.rewrites: [[silu_to_hardswish]]`` makes the
rewrite set a search choice (variant name ``silu_to_hardswish``; a set is joined with ``+``).

Built-ins (``exact`` ones must match the original within 1e-5; approximations report their max error):

=======================  =====  ==================================================================
name                     exact  what
=======================  =====  ==================================================================
silu_to_hardswish        no     x * Sigmoid(x)  ->  HardSwish(x) (opset raised to 14 when lower)
silu_to_relu             no     x * Sigmoid(x)  ->  Relu(x)
sigmoid_to_hardsigmoid   no     Sigmoid(x)      ->  HardSigmoid(x, alpha=1/6, beta=0.5) (PyTorch's)
gelu_to_tanh             no     0.5 x (1 + erf(x / sqrt 2))  ->  0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
hardswish_to_relu6       no     HardSwish(x)    ->  Clip(x, 0, 6) (ReLU6, the usual NPU-friendly
                                substitute; not a numeric equivalent: the model should be fine-tuned)
instancenorm_decompose   yes    InstanceNormalization -> ReduceMean/Sub/Mul/ReduceMean/Add/Sqrt/Div/
                                Mul/Add over the spatial axes (per sample and channel, so it equals the
                                op at batch 1 and any batch) for NPUs without InstanceNormalization
resize_to_nearest        no     Resize mode linear -> nearest (asymmetric, floor: PyTorch's nearest)
=======================  =====  ==================================================================

Names stay stable: the node that produces the pattern's output keeps its name (the Mul of a SiLU
becomes the HardSwish node of the same name), so per-node search parameters keep their meaning; helper
nodes a rewrite adds are named ``<node>/<rewrite>/<part>``.

Example:
    >>> model, reports = apply_rewrites(proto, ["silu_to_hardswish"])        # doctest: +SKIP
    >>> reports[0].matches, reports[0].max_error                             # doctest: +SKIP
    (104, 0.33)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autoq.errors import ConfigError, ModelError
from autoq.registry import Registry

if TYPE_CHECKING:
    import numpy as np
    import onnx

__all__ = ["REWRITES", "Rewrite", "RewriteReport", "apply_rewrites", "check_rewrite", "variant_name", "rewrite_set"]

EXACT_TOLERANCE = 1e-5


@dataclass(frozen=True)
class Rewrite:
    """A named graph rewrite: ``apply`` edits a model in place and returns the number of matches."""

    name: str
    apply: Callable[[onnx.ModelProto], int]
    exact: bool = False
    doc: str = ""


@dataclass(frozen=True)
class RewriteReport:
    """What one rewrite did: matches, whether it claims exactness, and the measured max abs error of the
    model outputs (random input) against the model before the rewrite."""

    name: str
    matches: int
    exact: bool
    max_error: float


REWRITES: Registry[Rewrite] = Registry("rewrite")


def rewrite(name: str, *, exact: bool) -> Callable[[Callable[[onnx.ModelProto], int]], Rewrite]:
    """Decorator registering a function ``(model) -> matches`` as a `Rewrite`."""

    def deco(fn: Callable[[onnx.ModelProto], int]) -> Rewrite:
        r = Rewrite(name=name, apply=fn, exact=exact, doc=(fn.__doc__ or "").strip())
        REWRITES.register(name)(r)
        return r

    return deco


def variant_name(names: Sequence[str]) -> str:
    """The variant name of a rewrite set: its names joined with ``+``."""
    return "+".join(names)


def rewrite_set(variant: str) -> list[str]:
    """The rewrite names of a variant name (inverse of `variant_name`)."""
    return [n for n in variant.split("+") if n]


def get_rewrite(name: str, *, key: str = "space.rewrites") -> Rewrite:
    obj: Any = REWRITES.get(name, key=key)
    if isinstance(obj, Rewrite):
        return obj
    if callable(obj):
        return Rewrite(name=name, apply=obj, exact=False, doc=(obj.__doc__ or "").strip())
    raise ConfigError(f"{key}: {name!r} is neither a Rewrite nor a function (model) -> int")


# ----------------------------------------------------------------------------------- numeric check


def _run(model: onnx.ModelProto, feed: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: feed})


def random_input(model: onnx.ModelProto, *, seed: int = 0) -> np.ndarray:
    """A random input for the model's single real input (symbolic dims taken as 1)."""
    import numpy as np

    inits = {t.name for t in model.graph.initializer}
    (inp,) = [i for i in model.graph.input if i.name not in inits]
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in inp.type.tensor_type.shape.dim]
    return np.random.default_rng(seed).standard_normal(dims).astype(np.float32) * 2.0


def check_rewrite(before: onnx.ModelProto, after: onnx.ModelProto, feed: np.ndarray | None = None) -> float:
    """Max abs difference over all outputs of ``before`` and ``after`` on ``feed`` (random by default)."""
    import numpy as np

    feed = random_input(before) if feed is None else feed
    a, b = _run(before, feed), _run(after, feed)
    return float(max((np.max(np.abs(x.astype(np.float64) - y)) if x.size else 0.0) for x, y in zip(a, b)))


def apply_rewrites(
    model: onnx.ModelProto, names: Sequence[str], *, sample: np.ndarray | None = None, check: bool = True,
    key: str = "space.rewrites",
) -> tuple[onnx.ModelProto, list[RewriteReport]]:
    """Applies the rewrites ``names`` in order to a copy of ``model``; each is checked numerically.

    Raises:
        ModelError: a rewrite matched nothing, or an exact one differs by more than 1e-5.
    """
    import onnx

    current = onnx.ModelProto()
    current.CopyFrom(model)
    reports = []
    for name in names:
        r = get_rewrite(name, key=key)
        nxt = onnx.ModelProto()
        nxt.CopyFrom(current)
        matches = r.apply(nxt)
        if matches == 0:
            raise ModelError(f"rewrite {name!r} found nothing to replace in the model ({key})")
        err = float("nan")
        if check:
            try:
                err = check_rewrite(current, nxt, sample)
            except Exception as exc:
                raise ModelError(f"the model after rewrite {name!r} does not run: {' '.join(str(exc).split())[:300]}") from None
            if r.exact:
                import numpy as np

                scale = max(1.0, float(max(np.max(np.abs(o)) for o in _run(current, sample if sample is not None else random_input(current)))))
                if not err <= EXACT_TOLERANCE * scale:
                    raise ModelError(f"rewrite {name!r} is meant to be exact but changes the outputs by {err:.3g}")
        reports.append(RewriteReport(name=name, matches=matches, exact=r.exact, max_error=err))
        current = nxt
    return current, reports


# ----------------------------------------------------------------------------------- graph helpers


class _Graph:
    """Producer/consumer index over a graph, and a way to replace node groups in place."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in self.graph.node:
            for x in n.input:
                self.consumers.setdefault(x, []).append(n)
        self.outputs = {o.name for o in self.graph.output}
        self.inits = {t.name: t for t in self.graph.initializer}
        self.removed: set[int] = set()
        self.emit: dict[int, list] = {}  # id(anchor node) -> replacement nodes
        self.new_inits: list = []

    def only_consumer(self, tensor: str, node) -> bool:
        """``node`` is the only reader of ``tensor`` and it is not a graph output."""
        users = self.consumers.get(tensor, [])
        return tensor not in self.outputs and len(users) == 1 and users[0] is node

    def scalar(self, tensor: str) -> float | None:
        from onnx import numpy_helper

        t = self.inits.get(tensor)
        if t is None:
            p = self.producer.get(tensor)
            if p is not None and p.op_type == "Constant":
                import onnx

                for a in p.attribute:
                    if a.name == "value":
                        arr = numpy_helper.to_array(onnx.helper.get_attribute_value(a))
                        return float(arr.reshape(-1)[0]) if arr.size == 1 else None
            return None
        arr = numpy_helper.to_array(t)
        return float(arr.reshape(-1)[0]) if arr.size == 1 else None

    def const(self, name: str, value, dtype: str = "float32") -> str:
        import numpy as np
        from onnx import numpy_helper

        self.new_inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def replace(self, remove: Sequence, anchor, nodes: Sequence) -> None:
        """Removes ``remove`` (which includes ``anchor``) and puts ``nodes`` where ``anchor`` was."""
        for n in remove:
            self.removed.add(id(n))
        self.emit[id(anchor)] = list(nodes)

    def commit(self) -> int:
        out = []
        for n in self.graph.node:
            out.extend(self.emit.get(id(n), []))
            if id(n) not in self.removed:
                out.append(n)
        changed = len(self.emit)
        del self.graph.node[:]
        self.graph.node.extend(out)
        self.graph.initializer.extend(self.new_inits)
        # drop initializers nothing reads any more
        used = {x for n in self.graph.node for x in n.input} | self.outputs
        for t in [t for t in self.graph.initializer if t.name not in used]:
            self.graph.initializer.remove(t)
        for n in [n for n in self.graph.node if n.op_type == "Constant" and n.output[0] not in used]:
            self.graph.node.remove(n)
        del self.graph.value_info[:]  # shapes are re-inferred by whoever loads the result
        return changed


def _opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def _require_opset(model: onnx.ModelProto, version: int) -> None:
    """Raises the default-domain opset to ``version`` (13 -> 14 changes no default semantics)."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and imp.version < version:
            imp.version = version


def _silu_matches(g: _Graph):
    """(sigmoid, mul, x) for every x * Sigmoid(x) whose Sigmoid feeds only the Mul."""
    for mul in g.graph.node:
        if mul.op_type != "Mul" or len(mul.input) != 2:
            continue
        for k in (0, 1):
            s = g.producer.get(mul.input[k])
            x = mul.input[1 - k]
            if s is not None and s.op_type == "Sigmoid" and s.input[0] == x and g.only_consumer(s.output[0], mul):
                yield s, mul, x
                break


def _replace_silu(model: onnx.ModelProto, op: str) -> int:
    from onnx import helper

    g = _Graph(model)
    for s, mul, x in list(_silu_matches(g)):
        g.replace([s, mul], mul, [helper.make_node(op, [x], [mul.output[0]], name=mul.name)])
    n = g.commit()
    if n and op == "HardSwish":
        _require_opset(model, 14)
    return n


@rewrite("silu_to_hardswish", exact=False)
def silu_to_hardswish(model: onnx.ModelProto) -> int:
    """x * Sigmoid(x) -> HardSwish(x), named like the Mul."""
    return _replace_silu(model, "HardSwish")


@rewrite("silu_to_relu", exact=False)
def silu_to_relu(model: onnx.ModelProto) -> int:
    """x * Sigmoid(x) -> Relu(x), named like the Mul."""
    return _replace_silu(model, "Relu")


@rewrite("sigmoid_to_hardsigmoid", exact=False)
def sigmoid_to_hardsigmoid(model: onnx.ModelProto) -> int:
    """Sigmoid(x) -> HardSigmoid(x, alpha=1/6, beta=0.5), same name."""
    from onnx import helper

    g = _Graph(model)
    for s in [n for n in g.graph.node if n.op_type == "Sigmoid"]:
        g.replace([s], s, [helper.make_node("HardSigmoid", [s.input[0]], [s.output[0]], name=s.name,
                                            alpha=1.0 / 6.0, beta=0.5)])
    return g.commit()


@rewrite("hardswish_to_relu6", exact=False)
def hardswish_to_relu6(model: onnx.ModelProto) -> int:
    """HardSwish(x) -> Clip(x, 0, 6) (ReLU6), same name."""
    from onnx import helper

    g = _Graph(model)
    for hs in [n for n in g.graph.node if n.op_type == "HardSwish"]:
        lo = g.const(f"{hs.name}/hardswish_to_relu6/min", 0.0)
        hi = g.const(f"{hs.name}/hardswish_to_relu6/max", 6.0)
        g.replace([hs], hs, [helper.make_node("Clip", [hs.input[0], lo, hi], [hs.output[0]], name=hs.name)])
    return g.commit()


@rewrite("resize_to_nearest", exact=False)
def resize_to_nearest(model: onnx.ModelProto) -> int:
    """Resize mode linear -> nearest (asymmetric coordinates, floor), same node."""
    from onnx import helper

    count = 0
    for node in model.graph.node:
        if node.op_type != "Resize":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        mode = attrs.get("mode", b"nearest")
        if (mode.decode() if isinstance(mode, bytes) else mode) != "linear":
            continue
        keep = [a for a in node.attribute if a.name not in ("mode", "coordinate_transformation_mode", "nearest_mode",
                                                            "cubic_coeff_a", "exclude_outside")]
        del node.attribute[:]
        node.attribute.extend(keep)
        node.attribute.extend([
            helper.make_attribute("mode", "nearest"),
            helper.make_attribute("coordinate_transformation_mode", "asymmetric"),
            helper.make_attribute("nearest_mode", "floor"),
        ])
        count += 1
    return count


def _near(value: float | None, target: float, tol: float = 1e-3) -> bool:
    return value is not None and abs(value - target) <= tol * max(1.0, abs(target))


@rewrite("gelu_to_tanh", exact=False)
def gelu_to_tanh(model: onnx.ModelProto) -> int:
    """The erf GELU (Div by sqrt 2 or Mul by 1/sqrt 2, Erf, Add 1, Mul x, Mul 0.5 in either order) ->
    the tanh approximation; the node producing the GELU's output keeps its name."""
    from onnx import helper

    g = _Graph(model)
    for erf in [n for n in g.graph.node if n.op_type == "Erf"]:
        pre = g.producer.get(erf.input[0])
        if pre is None or not g.only_consumer(erf.input[0], erf):
            continue
        if pre.op_type == "Div" and _near(g.scalar(pre.input[1]), math.sqrt(2.0)):
            x = pre.input[0]
        elif pre.op_type == "Mul" and _near(g.scalar(pre.input[1]), 1 / math.sqrt(2.0)):
            x = pre.input[0]
        elif pre.op_type == "Mul" and _near(g.scalar(pre.input[0]), 1 / math.sqrt(2.0)):
            x = pre.input[1]
        else:
            continue
        users = g.consumers.get(erf.output[0], [])
        if len(users) != 1 or users[0].op_type != "Add" or not g.only_consumer(erf.output[0], users[0]):
            continue
        add = users[0]
        other = add.input[1] if add.input[0] == erf.output[0] else add.input[0]
        if not _near(g.scalar(other), 1.0):
            continue
        users = g.consumers.get(add.output[0], [])
        if len(users) != 1 or users[0].op_type != "Mul" or add.output[0] in g.outputs:
            continue
        mul1 = users[0]
        y = mul1.input[1] if mul1.input[0] == add.output[0] else mul1.input[0]
        remove = [pre, erf, add, mul1]
        if y == x:  # 0.5 applied after: Mul(mul1, 0.5)
            nxt = g.consumers.get(mul1.output[0], [])
            if len(nxt) != 1 or nxt[0].op_type != "Mul" or mul1.output[0] in g.outputs:
                continue
            mul2 = nxt[0]
            half = mul2.input[1] if mul2.input[0] == mul1.output[0] else mul2.input[0]
            if not _near(g.scalar(half), 0.5):
                continue
            final = mul2
            remove.append(mul2)
        else:  # 0.5 applied before: Mul(Mul(x, 0.5), 1 + erf)
            h = g.producer.get(y)
            if h is None or h.op_type != "Mul" or x not in h.input:
                continue
            half = h.input[1] if h.input[0] == x else h.input[0]
            if not _near(g.scalar(half), 0.5):
                continue
            final = mul1
            if g.only_consumer(y, mul1):
                remove.append(h)
        base = f"{final.name}/gelu_to_tanh"
        c = {k: g.const(f"{base}/{k}", v) for k, v in
             {"k": 0.044715, "s": math.sqrt(2.0 / math.pi), "one": 1.0, "half": 0.5}.items()}
        nodes = [
            helper.make_node("Mul", [x, x], [f"{base}/x2"], name=f"{base}/x2"),
            helper.make_node("Mul", [f"{base}/x2", x], [f"{base}/x3"], name=f"{base}/x3"),
            helper.make_node("Mul", [f"{base}/x3", c["k"]], [f"{base}/kx3"], name=f"{base}/kx3"),
            helper.make_node("Add", [x, f"{base}/kx3"], [f"{base}/inner"], name=f"{base}/inner"),
            helper.make_node("Mul", [f"{base}/inner", c["s"]], [f"{base}/scaled"], name=f"{base}/scaled"),
            helper.make_node("Tanh", [f"{base}/scaled"], [f"{base}/tanh"], name=f"{base}/tanh"),
            helper.make_node("Add", [f"{base}/tanh", c["one"]], [f"{base}/onep"], name=f"{base}/onep"),
            helper.make_node("Mul", [x, c["half"]], [f"{base}/hx"], name=f"{base}/hx"),
            helper.make_node("Mul", [f"{base}/hx", f"{base}/onep"], [final.output[0]], name=final.name),
        ]
        g.replace(remove, final, nodes)
    return g.commit()


def _rank(model: onnx.ModelProto, tensor: str) -> int | None:
    import onnx

    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        if vi.name == tensor and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:
        return None
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if vi.name == tensor and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return None


@rewrite("instancenorm_decompose", exact=True)
def instancenorm_decompose(model: onnx.ModelProto) -> int:
    """InstanceNormalization(x, scale, B) -> (x - mean) / sqrt(var + eps) * scale + B with ReduceMean over
    the spatial axes (scale and B must be initializers); the final Add keeps the node's name."""
    from onnx import helper, numpy_helper

    g = _Graph(model)
    opset = _opset(model)
    for node in [n for n in g.graph.node if n.op_type == "InstanceNormalization"]:
        x, scale, bias = node.input[0], node.input[1], node.input[2]
        if scale not in g.inits or bias not in g.inits:
            continue
        rank = _rank(model, x) or 4
        axes = list(range(2, rank))
        eps = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "epsilon"), 1e-5)
        base = f"{node.name}/instancenorm_decompose"
        bshape = [-1] + [1] * (rank - 2)
        s = g.const(f"{base}/scale", numpy_helper.to_array(g.inits[scale]).reshape(bshape))
        b = g.const(f"{base}/bias", numpy_helper.to_array(g.inits[bias]).reshape(bshape))
        e = g.const(f"{base}/eps", eps)

        def mean(inp: str, out: str):
            if opset >= 18:
                ax = g.const(f"{out}/axes", axes, "int64")
                return helper.make_node("ReduceMean", [inp, ax], [out], name=out, keepdims=1)
            return helper.make_node("ReduceMean", [inp], [out], name=out, axes=axes, keepdims=1)

        nodes = [
            mean(x, f"{base}/mean"),
            helper.make_node("Sub", [x, f"{base}/mean"], [f"{base}/centered"], name=f"{base}/centered"),
            helper.make_node("Mul", [f"{base}/centered", f"{base}/centered"], [f"{base}/sq"], name=f"{base}/sq"),
            mean(f"{base}/sq", f"{base}/var"),
            helper.make_node("Add", [f"{base}/var", e], [f"{base}/var_eps"], name=f"{base}/var_eps"),
            helper.make_node("Sqrt", [f"{base}/var_eps"], [f"{base}/std"], name=f"{base}/std"),
            helper.make_node("Div", [f"{base}/centered", f"{base}/std"], [f"{base}/normed"], name=f"{base}/normed"),
            helper.make_node("Mul", [f"{base}/normed", s], [f"{base}/scaled"], name=f"{base}/scaled"),
            helper.make_node("Add", [f"{base}/scaled", b], [node.output[0]], name=node.name),
        ]
        g.replace([node], node, nodes)
    return g.commit()
