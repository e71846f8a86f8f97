"""A per-node roofline latency model for edge NPUs, driven by one YAML file per target.

Why a model and not a board: the search runs hundreds of trials and needs a latency for each in
microseconds. The model is deliberately simple and explainable, and every number lives in the
target file so that a later fit against profiler logs (``hb_perf``, ``hrt_model_exec --profile``)
only has to rewrite YAML.

How one trial is priced (all times in ms):

* Device and precision. A quantizable node runs at ``config.precision_of(name)``; ``float`` means
  CPU. An op type in ``target.cpu_ops`` runs on the CPU whatever the precision. A non-quantizable
  node (Reshape, Slice, Transpose, ...) follows the producer of its first input that has one
  (device and precision); a node fed only by graph inputs or initializers runs on the NPU at int8. An NPU
  precision the target lacks raises ``ConfigError``.
* NPU node: ``max(flops / (tops[precision] * 1e12 * efficiency[op]), bytes / bandwidth) +
  node_overhead_ms``; bytes are the activations read and written (input tensors + outputs) at
  1 B/element (int8) or 2 B/element (int16) plus weights at 1 B/element (int8 in both cases).
* CPU node: ``max(flops / cpu_gflops, float32 bytes / cpu_bandwidth) + cpu_node_overhead_ms``.
* Boundary: each tensor crossing NPU<->CPU costs ``boundary_ms + float32 bytes /
  boundary_bandwidth``, counted once per (tensor, consumer device) however many consumers sit on
  that device. Graph inputs and outputs are not boundaries (the host feeds/reads them anyway).
* Precision convert: a tensor passed between NPU nodes of different precision (int8 <-> int16)
  is re-quantized on the NPU: ``convert_ms + elements * (source width + destination width) /
  npu_bandwidth``, counted once per (tensor, destination precision). Small, but it is why
  scattering single int16 nodes is not free.
* ``free_ops`` (default ``Constant``) are folded by compilers: zero time, never a boundary.

FLOPs are ``NodeInfo.flops`` (or ``2 * macs`` when flops is 0) and count as ops against TOPS.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from autoq.errors import ConfigError
from autoq.plan import Precision, QuantConfig
from autoq.registry import Registry

if TYPE_CHECKING:
    from autoq.model.graph import NodeInfo

__all__ = ["LatencyEstimate", "TARGETS", "TARGET_DIR", "Target", "estimate_latency", "load_target"]

NPU = "npu"
CPU = "cpu"
NPU_PRECISIONS = ("int8", "int16")
# Activation bytes per element on the NPU; weights are always int8 (1 B).
_ACT_WIDTH = {Precision.INT8: 1, Precision.INT16: 2}
_F32 = 4

TARGET_DIR = Path(__file__).with_name("targets")


@dataclass(frozen=True)
class Target:
    """One hardware target: the numbers of the roofline model (see the module docstring).

    The YAML file uses these field names as keys. ``name`` defaults to the file stem;
    ``description``, ``op_efficiency``, ``cpu_ops``, ``cpu_node_overhead_ms``, ``convert_ms`` and
    ``free_ops`` are optional.
    """

    name: str
    description: str
    precisions: tuple[str, ...]
    npu_tops: Mapping[str, float]
    npu_bandwidth_gbs: float
    op_efficiency: Mapping[str, float]
    cpu_ops: tuple[str, ...]
    cpu_gflops: float
    cpu_bandwidth_gbs: float
    boundary_ms: float
    boundary_bandwidth_gbs: float
    node_overhead_ms: float
    cpu_node_overhead_ms: float = 0.0
    convert_ms: float = 0.002
    free_ops: tuple[str, ...] = ("Constant",)

    def efficiency(self, op_type: str) -> float:
        """Fraction of peak TOPS an op type reaches (``"*"`` is the default, 1.0 when absent)."""
        eff = self.op_efficiency
        return eff.get(op_type, eff.get("*", 1.0))


# --------------------------------------------------------------------------- target files

TARGETS: Registry[Any] = Registry("hardware target")
for _path in sorted(TARGET_DIR.glob("*.yaml")):
    TARGETS.add(_path.stem, _path)

_REQUIRED = (
    "precisions",
    "npu_tops",
    "npu_bandwidth_gbs",
    "cpu_gflops",
    "cpu_bandwidth_gbs",
    "boundary_ms",
    "boundary_bandwidth_gbs",
    "node_overhead_ms",
)
_POSITIVE = ("npu_bandwidth_gbs", "cpu_gflops", "cpu_bandwidth_gbs", "boundary_bandwidth_gbs")
_NON_NEGATIVE = ("boundary_ms", "node_overhead_ms", "cpu_node_overhead_ms", "convert_ms")
_FIELDS = tuple(f.name for f in fields(Target))


def load_target(name_or_path: str | Path, *, key: str = "target.name") -> Target:
    """Returns a target by built-in name, ``package.module:attribute`` or path to a ``.yaml`` file.

    ``key`` names where the value came from, so errors point at the line to fix.

    Example:
        >>> load_target("generic-npu").npu_tops["int8"]
        4.0
    """
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or text.endswith((".yaml", ".yml")) or "/" in text or "\\" in text:
        path = Path(text).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"{key}: target file {path} does not exist; give an existing .yaml path "
                f"or one of: {', '.join(TARGETS.names())}"
            )
        return _target_from_file(path)
    if text not in TARGETS and ":" not in text:
        raise ConfigError(
            f"{key}: unknown hardware target {text!r}; known: {', '.join(TARGETS.names())}, "
            "or give a path to a target .yaml file"
        )
    obj = TARGETS.get(text, key=key)
    if isinstance(obj, Target):
        return obj
    if isinstance(obj, (str, Path)):
        return _target_from_file(Path(obj))
    if isinstance(obj, Mapping):
        return target_from_dict(obj, source=text)
    raise ConfigError(f"{key}: {text!r} is a {type(obj).__name__}, not a Target, a mapping or a .yaml path")


def _target_from_file(path: Path) -> Target:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"target file {path}: cannot read it as YAML ({exc}); fix the file") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"target file {path}: expected a mapping of keys such as npu_tops; fix the file")
    data = dict(data)
    data.setdefault("name", path.stem)
    return target_from_dict(data, source=f"target file {path}")


def target_from_dict(data: Mapping[str, Any], *, source: str = "target") -> Target:
    """Validates a target mapping (the YAML body) and builds a ``Target``; errors name source + key."""

    def fail(k: str, what: str) -> ConfigError:
        return ConfigError(f"{source}: key {k!r} {what}")

    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise fail(unknown[0], f"is not a target key; known keys: {', '.join(_FIELDS)}")
    for k in _REQUIRED:
        if k not in data:
            raise fail(k, "is missing; add it (see autoq/surrogates/targets/generic-npu.yaml)")

    def number(k: str, *, positive: bool) -> float:
        v = data[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise fail(k, f"must be a number, got {v!r}")
        if (v <= 0) if positive else (v < 0):
            raise fail(k, f"must be {'> 0' if positive else '>= 0'}, got {v!r}")
        return float(v)

    def names(k: str, default: tuple[str, ...]) -> tuple[str, ...]:
        v = data.get(k, default)
        if v is None:
            return ()
        if isinstance(v, str) or not isinstance(v, Sequence) or not all(isinstance(x, str) for x in v):
            raise fail(k, f"must be a list of names, got {v!r}")
        return tuple(v)

    precisions = names("precisions", ())
    bad = [p for p in precisions if p not in NPU_PRECISIONS]
    if not precisions or bad:
        raise fail("precisions", f"must be a non-empty list from {list(NPU_PRECISIONS)}, got {list(precisions)!r}")

    tops = data["npu_tops"]
    if not isinstance(tops, Mapping):
        raise fail("npu_tops", f"must map precision -> TOPS, got {tops!r}")
    for p in precisions:
        if p not in tops:
            raise fail("npu_tops", f"has no entry for {p!r}, which is listed in precisions")
    npu_tops = {}
    for p, v in tops.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise fail("npu_tops", f"entry {p!r} must be a number > 0, got {v!r}")
        npu_tops[str(p)] = float(v)

    eff_in = data.get("op_efficiency") or {}
    if not isinstance(eff_in, Mapping):
        raise fail("op_efficiency", f"must map op type -> fraction of peak, got {eff_in!r}")
    op_efficiency = {}
    for op, v in eff_in.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
            raise fail("op_efficiency", f"entry {op!r} must be a fraction in (0, 1], got {v!r}")
        op_efficiency[str(op)] = float(v)

    name = data.get("name", "target")
    description = data.get("description", "") or ""
    if not isinstance(name, str) or not name:
        raise fail("name", f"must be a non-empty string, got {name!r}")
    optional = {k: number(k, positive=False) for k in ("cpu_node_overhead_ms", "convert_ms") if k in data}
    return Target(
        name=name,
        description=str(description).strip(),
        precisions=precisions,
        npu_tops=MappingProxyType(npu_tops),
        npu_bandwidth_gbs=number("npu_bandwidth_gbs", positive=True),
        op_efficiency=MappingProxyType(op_efficiency),
        cpu_ops=names("cpu_ops", ()),
        cpu_gflops=number("cpu_gflops", positive=True),
        cpu_bandwidth_gbs=number("cpu_bandwidth_gbs", positive=True),
        boundary_ms=number("boundary_ms", positive=False),
        boundary_bandwidth_gbs=number("boundary_bandwidth_gbs", positive=True),
        node_overhead_ms=number("node_overhead_ms", positive=False),
        free_ops=names("free_ops", ("Constant",)),
        **optional,
    )


# --------------------------------------------------------------------------- estimate


@dataclass(frozen=True)
class LatencyEstimate:
    """Predicted latency of one QuantConfig on one target, with where the time goes.

    ``per_node`` holds each node's own time; boundary and convert costs are edge costs and are
    reported in ``boundary_ms`` / ``convert_ms`` (``total_ms`` includes them). ``segments`` are
    runs of consecutive nodes on one device, in graph order (free ops such as Constant skipped).
    """

    total_ms: float
    per_node: Mapping[str, float]
    devices: Mapping[str, str]
    segments: tuple[tuple[str, int, float], ...]
    boundaries: int
    boundary_ms: float = 0.0
    converts: int = 0
    convert_ms: float = 0.0

    def breakdown(self) -> dict[str, float]:
        """Flat numbers for logging (MLflow metrics, TrialResult.latency_breakdown)."""
        npu_ms = cpu_ms = 0.0
        npu_nodes = cpu_nodes = 0
        for name, ms in self.per_node.items():
            if self.devices[name] == NPU:
                npu_ms += ms
                npu_nodes += 1
            else:
                cpu_ms += ms
                cpu_nodes += 1
        return {
            "total_ms": self.total_ms,
            "npu_ms": npu_ms,
            "cpu_ms": cpu_ms,
            "boundary_ms": self.boundary_ms,
            "convert_ms": self.convert_ms,
            "boundaries": float(self.boundaries),
            "converts": float(self.converts),
            "npu_nodes": float(npu_nodes),
            "cpu_nodes": float(cpu_nodes),
            "segments": float(len(self.segments)),
        }


def estimate_latency(nodes: Sequence[NodeInfo], config: QuantConfig, target: Target) -> LatencyEstimate:
    """Predicts the latency of ``nodes`` (in graph order) quantized by ``config`` on ``target``.

    Raises ``ConfigError`` when an NPU node needs a precision the target does not run.

    Example:
        >>> model = load_model("yolox_nano.onnx")                                   # doctest: +SKIP
        >>> est = estimate_latency(model.nodes, QuantConfig.uniform("int8"), load_target("generic-npu"))  # doctest: +SKIP
        >>> est.total_ms, est.breakdown()["boundaries"]                             # doctest: +SKIP
    """
    n = len(nodes)
    producer: dict[str, tuple[int, int]] = {}
    for i, node in enumerate(nodes):
        for j, t in enumerate(node.outputs):
            if t:
                producer[t] = (i, j)

    cpu_ops = frozenset(target.cpu_ops)
    free_ops = frozenset(target.free_ops)
    supported = frozenset(target.precisions)
    npu_tops = target.npu_tops
    eff_default = target.op_efficiency.get("*", 1.0)
    op_eff = target.op_efficiency
    npu_bps = target.npu_bandwidth_gbs * 1e9
    cpu_fps = target.cpu_gflops * 1e9
    cpu_bps = target.cpu_bandwidth_gbs * 1e9
    npu_over = target.node_overhead_ms
    cpu_over = target.cpu_node_overhead_ms
    int8, int16, flt = Precision.INT8, Precision.INT16, Precision.FLOAT
    precision_of = config.precision_of

    is_npu = [True] * n
    precs: list[Precision] = [int8] * n
    free = [False] * n
    per_node: dict[str, float] = {}
    devices: dict[str, str] = {}

    for i, node in enumerate(nodes):
        op = node.op_type
        if op in free_ops:
            free[i] = True
        if node.quantizable:
            p = precision_of(node.name)
        else:
            p = int8
            src = _source(node, producer, i)
            if src is not None:
                p = precs[src]
        if p is flt or op in cpu_ops:
            p = flt
            npu = False
        else:
            npu = True
            if p.value not in supported:
                raise ConfigError(
                    f"target {target.name} cannot run {p.value} (node {node.name!r}); "
                    f"remove {p.value} from space.precisions or pick a target that runs it"
                )
        is_npu[i] = npu
        precs[i] = p
        devices[node.name] = NPU if npu else CPU
        if free[i]:
            per_node[node.name] = 0.0
            continue
        ops = node.flops or 2 * node.macs
        act = _input_elements(node, producer) + node.activation_bytes / _F32  # read inputs, write outputs
        weights = node.param_bytes / _F32
        if npu:
            tops = npu_tops[p.value] * 1e12 * op_eff.get(op, eff_default)
            s = ops / tops
            m = (act * _ACT_WIDTH[p] + weights) / npu_bps
            per_node[node.name] = (s if s > m else m) * 1e3 + npu_over
        else:
            s = ops / cpu_fps
            m = (act + weights) * _F32 / cpu_bps
            per_node[node.name] = (s if s > m else m) * 1e3 + cpu_over

    # Edges: NPU<->CPU boundaries and int8<->int16 converts, once per (tensor, destination).
    b_fixed = target.boundary_ms
    b_bps = target.boundary_bandwidth_gbs * 1e9
    c_fixed = target.convert_ms
    seen: set[tuple[str, object]] = set()
    boundaries = converts = 0
    boundary_ms = convert_ms = 0.0
    for c, node in enumerate(nodes):
        if free[c]:
            continue
        dev_c = is_npu[c]
        prec_c = precs[c]
        for t in node.inputs:
            pr = producer.get(t)
            if pr is None:
                continue
            pi = pr[0]
            if pi >= c or free[pi]:
                continue
            if is_npu[pi] != dev_c:
                k = (t, dev_c)
                if k in seen:
                    continue
                seen.add(k)
                boundaries += 1
                boundary_ms += b_fixed + _elements(nodes[pi], pr[1]) * _F32 / b_bps * 1e3
            elif dev_c and precs[pi] is not prec_c:
                k = (t, prec_c)
                if k in seen:
                    continue
                seen.add(k)
                converts += 1
                width = _ACT_WIDTH[precs[pi]] + _ACT_WIDTH[prec_c]
                convert_ms += c_fixed + _elements(nodes[pi], pr[1]) * width / npu_bps * 1e3

    segments: list[tuple[str, int, float]] = []
    cur_dev: bool | None = None
    count = 0
    seg_ms = 0.0
    for i, node in enumerate(nodes):
        if free[i]:
            continue
        if is_npu[i] is not cur_dev:
            if count:
                segments.append((NPU if cur_dev else CPU, count, seg_ms))
            cur_dev, count, seg_ms = is_npu[i], 0, 0.0
        count += 1
        seg_ms += per_node[node.name]
    if count:
        segments.append((NPU if cur_dev else CPU, count, seg_ms))

    total = sum(per_node.values()) + boundary_ms + convert_ms
    return LatencyEstimate(
        total_ms=total,
        per_node=MappingProxyType(per_node),
        devices=MappingProxyType(devices),
        segments=tuple(segments),
        boundaries=boundaries,
        boundary_ms=boundary_ms,
        converts=converts,
        convert_ms=convert_ms,
    )


def _source(node: NodeInfo, producer: Mapping[str, tuple[int, int]], index: int) -> int | None:
    """The node a non-quantizable node follows: producer of its first produced input, if any."""
    for t in node.inputs:
        pr = producer.get(t)
        if pr is not None and pr[0] < index:
            return pr[0]
    return None


def _elements(node: NodeInfo, output_index: int) -> float:
    """Elements of one output tensor; falls back to an even share of the node's output bytes."""
    shapes = node.output_shapes
    if output_index < len(shapes):
        n = _numel(shapes[output_index])
        if n:
            return n
    return node.activation_bytes / _F32 / max(1, len(node.outputs))


def _input_elements(node: NodeInfo, producer: Mapping[str, tuple[int, int]]) -> float:
    """Activation elements a node reads: produced inputs, plus unproduced ones beyond its weights.

    ``NodeInfo`` does not mark which unproduced inputs are initializers, so graph inputs are
    counted as what remains after subtracting ``param_bytes``.
    """
    produced = other = 0.0
    shapes = node.input_shapes
    for k, t in enumerate(node.inputs):
        if not t or k >= len(shapes):
            continue
        n = _numel(shapes[k])
        if t in producer:
            produced += n
        else:
            other += n
    if other:
        other = max(0.0, other - node.param_bytes / _F32)
    return produced + other


def _numel(shape: tuple[int, ...] | None) -> float:
    """Elements of a static shape; 0 when unknown or dynamic."""
    if shape is None:
        return 0.0
    n = 1
    for d in shape:
        if not isinstance(d, int) or d <= 0:
            return 0.0
        n *= d
    return float(n)
