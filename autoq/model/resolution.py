"""Run a static-shape detector at another input resolution.

`at_resolution` frees the spatial dims of the image input, re-infers every shape at the new size and
rewrites the constants the exporter baked for the old size:

* ``Reshape`` targets (ShuffleNet channel shuffles ``[N, 2, C/2, H, W]``, flattened ``H*W`` heads):
  the target is matched against the Reshape's input shape at the original size in row-major groups
  (dims of equal product). Each group's entries scale like the input dims of the group: a group whose
  input dims do not change with the resolution keeps its constants, a 1:1 or merge group takes the
  product of the new input dims. Which dims change is read from shape inference at the original size
  and at the original size x2 (one probe per axis), so the rewrite is the same whatever size is asked.
  A split of a dim that scales (``[N, C, H*W] -> [N, C, H, W]``) is ambiguous: ModelError naming the node.
* ``Resize`` with a constant ``sizes`` input: spatial sizes scale with the input.

Reshapes are processed in topological order (a Reshape downstream of another sees its input at the new
size only once the upstream one is rewritten). The result declares the new static input size and is
verified by running it in onnxruntime on a random input of that size; a failure names the node ORT
reported and suggests ``model.resolutions`` (user-exported files per resolution).

Example:
    >>> import onnx                                           # doctest: +SKIP
    >>> m320 = at_resolution(onnx.load("yolox_nano.onnx"), (320, 320))   # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

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
    import onnx

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


def _set_input(model: onnx.ModelProto, node, index: int, values, tag: str) -> None:
    """Points input ``index`` of ``node`` at a new int64 initializer holding ``values``."""
    import numpy as np
    from onnx import numpy_helper

    name = f"{node.name}/{tag}"
    for t in list(model.graph.initializer):
        if t.name == name:
            model.graph.initializer.remove(t)
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
    node.input[index] = name


def _drop_unused_constants(model: onnx.ModelProto) -> None:
    used = {x for n in model.graph.node for x in n.input} | {o.name for o in model.graph.output}
    for t in [t for t in model.graph.initializer if t.name not in used]:
        model.graph.initializer.remove(t)
    for n in [n for n in model.graph.node if n.op_type == "Constant" and n.output[0] not in used]:
        model.graph.node.remove(n)


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
    work = _with_size(model, (h, w))
    base_model = _with_size(model, (h0, w0))
    base = _shapes(base_model)
    # which tensor dims scale with the input: probes at twice the size along each axis
    ancestors = _ancestors_of(work)
    reshapes = [n for n in work.graph.node if n.op_type == "Reshape" and _constant(work, n.input[1]) is not None]
    resizes = [n for n in work.graph.node if n.op_type == "Resize" and len(n.input) > 3 and n.input[3]
               and _constant(work, n.input[3]) is not None]
    pending = {n.name for n in reshapes}
    done_targets: dict[str, dict[tuple[int, int], list[int]]] = {}  # reshape -> size -> target

    def rewritten(at: tuple[int, int]):
        m = _with_size(model, at)
        by = {n.name: n for n in m.graph.node}
        for name, targets in done_targets.items():
            _set_input(m, by[name], 1, targets[at], "shape")
        return m

    sizes = [(h, w), (2 * h0, w0), (h0, 2 * w0)]
    while pending:
        shapes = {s: _shapes(rewritten(s)) for s in sizes}
        ready = [n for n in reshapes if n.name in pending and not (ancestors[n.name] & pending)]
        for node in ready:
            pending.discard(node.name)
            src0 = base.get(node.input[0])
            target0 = [int(v) for v in _constant(work, node.input[1]).reshape(-1)]
            dst0 = base.get(node.output[0])
            if src0 is None or dst0 is None:
                raise ModelError(
                    f"cannot change the resolution: the input shape of Reshape {node.name!r} is not static at "
                    f"{h0}x{w0}; give files per resolution in model.resolutions"
                )
            groups = _groups(src0, dst0)
            if groups is None:
                raise ModelError(f"cannot change the resolution: Reshape {node.name!r} {src0} -> {dst0} has no row-major grouping")
            probe_h, probe_w = shapes[(2 * h0, w0)].get(node.input[0]), shapes[(h0, 2 * w0)].get(node.input[0])
            targets: dict[tuple[int, int], list[int]] = {}
            for at in sizes:
                src = shapes[at].get(node.input[0])
                if src is None or probe_h is None or probe_w is None:
                    raise ModelError(
                        f"cannot change the resolution: the input of Reshape {node.name!r} has no static shape at "
                        f"{format_resolution(at)}; give files per resolution in model.resolutions"
                    )
                new = list(target0)
                for gi, gj in groups:
                    scales = any(probe_h[i] != src0[i] or probe_w[i] != src0[i] for i in gi)
                    if not scales:
                        continue
                    if len(gj) == 1:
                        j = gj[0]
                        if target0[j] not in (0, -1):
                            new[j] = math.prod(src[i] for i in gi)
                        continue
                    free = [j for j in gj if target0[j] == -1]
                    if len(free) == 1:  # -1 absorbs the change
                        continue
                    raise ModelError(
                        f"cannot change the resolution: Reshape {node.name!r} splits input dims {[src0[i] for i in gi]} "
                        f"that scale with the input into {[dst0[j] for j in gj]} (ambiguous); give files per "
                        "resolution in model.resolutions"
                    )
                targets[at] = new
            done_targets[node.name] = targets
        if not ready:  # pragma: no cover - a cycle cannot happen in a valid graph
            raise ModelError(f"cannot order the Reshapes {sorted(pending)}")
    out = rewritten((h, w))
    if resizes:
        by = {n.name: n for n in out.graph.node}
        shapes = _shapes(out)
        for r in resizes:
            node = by[r.name]
            src0, src = base.get(r.input[0]), shapes.get(r.input[0])
            old = [int(v) for v in _constant(out, node.input[3]).reshape(-1)]
            if src0 is None or src is None or len(old) != len(src0):
                raise ModelError(f"cannot change the resolution: Resize {r.name!r} has constant sizes and no static input shape")
            new = [o if s0 == s else int(round(o * s / s0)) for o, s0, s in zip(old, src0, src)]
            _set_input(out, node, 3, new, "sizes")
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
