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
* ``npu_ops`` (optional, per precision) lists the op types the NPU runs in that precision; any
  other op type at that precision runs on the CPU (e.g. X3's BPU support list). A precision
  without an entry accepts every op type not in ``cpu_ops``.
* ``float_on_npu`` (optional): float nodes run on the NPU's fp16 path (Ascend, Vastai, RK3588
  hybrid) at ``npu_tops["float"]`` and 2 B/element instead of falling back to the CPU.
* ``op_efficiency`` entries are a fraction or a mapping precision -> fraction (fitted targets).
* ``fixed_ms`` (optional): per-inference cost outside the graph (runtime launch, input/output copy).
* ``export_format`` (optional): the `autoq export` format of the target's toolchain (default ``onnx-qdq``).
* ``capabilities`` (optional): per op type, the precisions the toolchain builds and what it does with
  others (`autoq.surrogates.capabilities`); configs are realized through it before they are priced.
* ``onchip_bytes`` / ``whole_tensor_ops`` (optional): an NPU op of these types whose inputs + outputs
  (at its precision's width) exceed the on-chip memory does not compile; the estimate lists it in
  ``infeasible`` and the search treats the trial as infeasible (a constraint, not a latency).
* ``fused_activations`` / ``float_eltwise_constants`` / ``int8_reads_convert`` (optional): what the
  target's compiler quantizes differently from ORT's QDQ model, simulated in every trial
  (`autoq.quant.toolchain_sim`; ``int8_reads_convert``: an int8 layer reads an int16 tensor converted
  to int8, see `autoq.quant.qdq.build_qdq`). ``activation_symmetric``: activations without zero point.

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
from autoq.surrogates.capabilities import Capabilities, capabilities_from_dict

if TYPE_CHECKING:
    from autoq.model.graph import NodeInfo

__all__ = [
    "LatencyEstimate",
    "TARGETS",
    "TARGET_DIR",
    "Target",
    "estimate_latency",
    "load_target",
    "plan_placement",
    "target_from_dict",
]

NPU = "npu"
CPU = "cpu"
NPU_PRECISIONS = ("int8", "int16")
# Activation bytes per element on the NPU (float on the NPU = fp16); weights are always int8 (1 B).
_ACT_WIDTH = {Precision.INT8: 1, Precision.INT16: 2, Precision.FLOAT: 2}
MODES = ("estimate", "measured")
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
    npu_ops: Mapping[str, frozenset[str]] = field(default_factory=lambda: MappingProxyType({}))
    float_on_npu: bool = False
    fixed_ms: float = 0.0
    fused_activations: tuple[str, ...] = ()
    float_eltwise_constants: bool = False
    int8_reads_convert: bool = False
    activation_symmetric: bool = False
    capabilities: Capabilities = field(default_factory=Capabilities)
    export_format: str = "onnx-qdq"  # the `autoq export` format of this target's toolchain
    onchip_bytes: int = 0
    whole_tensor_ops: tuple[str, ...] = ()
    mode: str = "estimate"
    runs: int = 10
    warmup: int = 2
    threads: int = 1

    def efficiency(self, op_type: str, precision: str = "int8") -> float:
        """Fraction of peak TOPS an op type reaches at ``precision`` (``"*"`` is the default, 1.0 when absent)."""
        eff = self.op_efficiency
        v = eff.get(op_type, eff.get("*", 1.0))
        if isinstance(v, Mapping):
            return v.get(precision, v.get("*", 1.0))
        return v

    def runs_on_npu(self, op_type: str, precision: str) -> bool:
        """Whether the NPU runs ``op_type`` at ``precision`` (float: only with ``float_on_npu``)."""
        if op_type in self.cpu_ops or (precision == "float" and not self.float_on_npu):
            return False
        allowed = self.npu_ops.get(precision)
        return allowed is None or op_type in allowed

    def to_dict(self) -> dict[str, Any]:
        """The YAML body of this target (``target_from_dict(t.to_dict()) == t``)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "capabilities":
                v = v.to_dict()
            elif f.name == "npu_ops":
                v = {p: sorted(ops) for p, ops in v.items()}
            elif f.name == "op_efficiency":
                v = {k: (dict(x) if isinstance(x, Mapping) else x) for k, x in v.items()}
            elif isinstance(v, Mapping):
                v = dict(v)
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out


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
    float_on_npu = data.get("float_on_npu", False)
    if not isinstance(float_on_npu, bool):
        raise fail("float_on_npu", f"must be true or false, got {float_on_npu!r}")
    flags = {}
    for k in ("float_eltwise_constants", "int8_reads_convert", "activation_symmetric"):
        flags[k] = data.get(k, False)
        if not isinstance(flags[k], bool):
            raise fail(k, f"must be true or false, got {flags[k]!r}")
    bad = [p for p in precisions if p not in NPU_PRECISIONS]
    if not precisions or bad:
        raise fail("precisions", f"must be a non-empty list from {list(NPU_PRECISIONS)}, got {list(precisions)!r}")

    tops = data["npu_tops"]
    if not isinstance(tops, Mapping):
        raise fail("npu_tops", f"must map precision -> TOPS, got {tops!r}")
    for p in precisions + (("float",) if float_on_npu else ()):
        if p not in tops:
            why = "which is listed in precisions" if p != "float" else "and float_on_npu is true"
            raise fail("npu_tops", f"has no entry for {p!r}, {why}")
    npu_tops = {}
    for p, v in tops.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise fail("npu_tops", f"entry {p!r} must be a number > 0, got {v!r}")
        npu_tops[str(p)] = float(v)

    eff_in = data.get("op_efficiency") or {}
    if not isinstance(eff_in, Mapping):
        raise fail("op_efficiency", f"must map op type -> fraction of peak, got {eff_in!r}")
    def fraction(op: str, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
            raise fail("op_efficiency", f"entry {op!r} must be a fraction in (0, 1], got {v!r}")
        return float(v)

    op_efficiency: dict[str, Any] = {}
    for op, v in eff_in.items():
        if isinstance(v, Mapping):
            op_efficiency[str(op)] = MappingProxyType({str(p): fraction(f"{op}.{p}", x) for p, x in v.items()})
        else:
            op_efficiency[str(op)] = fraction(str(op), v)

    ops_in = data.get("npu_ops") or {}
    if not isinstance(ops_in, Mapping):
        raise fail("npu_ops", f"must map precision -> list of op types, got {ops_in!r}")
    npu_ops: dict[str, frozenset[str]] = {}
    for p, v in ops_in.items():
        if p not in (*NPU_PRECISIONS, "float"):
            raise fail("npu_ops", f"entry {p!r} is not a precision (int8, int16, float)")
        if isinstance(v, str) or not isinstance(v, Sequence) or not all(isinstance(x, str) for x in v):
            raise fail("npu_ops", f"entry {p!r} must be a list of op types, got {v!r}")
        npu_ops[str(p)] = frozenset(v)

    mode = data.get("mode", "estimate")
    if mode not in MODES:
        raise fail("mode", f"must be one of {list(MODES)}, got {mode!r}")
    ints = {}
    for k, lo in (("runs", 1), ("warmup", 0), ("threads", 1)):
        if k in data:
            v = data[k]
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise fail(k, f"must be an integer >= {lo}, got {v!r}")
            ints[k] = v

    name = data.get("name", "target")
    description = data.get("description", "") or ""
    if not isinstance(name, str) or not name:
        raise fail("name", f"must be a non-empty string, got {name!r}")
    optional = {k: number(k, positive=False) for k in ("cpu_node_overhead_ms", "convert_ms", "fixed_ms") if k in data}
    onchip = data.get("onchip_bytes", 0)
    if isinstance(onchip, bool) or not isinstance(onchip, int) or onchip < 0:
        raise fail("onchip_bytes", f"must be an integer >= 0 (0 = no limit), got {onchip!r}")
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
        npu_ops=MappingProxyType(npu_ops),
        float_on_npu=float_on_npu,
        fused_activations=names("fused_activations", ()),
        **flags,
        capabilities=capabilities_from_dict(data.get("capabilities"), source=source, precisions=precisions),
        onchip_bytes=onchip,
        export_format=str(data.get("export_format", "onnx-qdq")),
        whole_tensor_ops=names("whole_tensor_ops", ()),
        mode=mode,
        **ints,
        **optional,
    )


# --------------------------------------------------------------------------- estimate


@dataclass(frozen=True)
class LatencyEstimate:
    """Predicted latency of one QuantConfig on one target, with where the time goes.

    ``per_node`` holds each node's own time; boundary and convert costs are edge costs and are
    reported in ``boundary_ms`` / ``convert_ms`` (``total_ms`` includes them and ``fixed_ms``).
    ``segments`` are runs of consecutive nodes on one device, in graph order (free ops such as
    Constant skipped): ``(device, node count, ms)``. ``segment_of`` maps a node to its segment
    index (-1 for free ops). With ``source == "measured"`` ``total_ms`` is a timing on this
    machine and ``estimated_ms`` keeps the model's prediction.
    """

    total_ms: float
    per_node: Mapping[str, float]
    devices: Mapping[str, str]
    segments: tuple[tuple[str, int, float], ...]
    boundaries: int
    boundary_ms: float = 0.0
    converts: int = 0
    convert_ms: float = 0.0
    fixed_ms: float = 0.0
    precisions: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    op_types: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    segment_of: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    source: str = "estimate"
    estimated_ms: float | None = None
    # why the toolchain would refuse to compile this config (on-chip memory), one line each; () = builds
    infeasible: tuple[str, ...] = ()

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
        out = {
            "total_ms": self.total_ms,
            "npu_ms": npu_ms,
            "cpu_ms": cpu_ms,
            "boundary_ms": self.boundary_ms,
            "convert_ms": self.convert_ms,
            "fixed_ms": self.fixed_ms,
            "boundaries": float(self.boundaries),
            "converts": float(self.converts),
            "npu_nodes": float(npu_nodes),
            "cpu_nodes": float(cpu_nodes),
            "segments": float(len(self.segments)),
        }
        if self.estimated_ms is not None:
            out["estimated_ms"] = self.estimated_ms
        return out

    def table(self) -> str:
        """CSV breakdown: one row per node, then one per segment, then edge and total rows.

        Columns ``node,op,device,precision,segment,ms``. Node rows are in graph order; segment rows
        are named ``segment:<i>`` (op ``segment``, precision = node count); ``(boundaries)``,
        ``(converts)``, ``(fixed)`` and ``(total)`` close the table. Log it as an MLflow artifact.
        """
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["node", "op", "device", "precision", "segment", "ms"])
        for name, ms in self.per_node.items():
            w.writerow([name, self.op_types.get(name, ""), self.devices[name], self.precisions.get(name, ""),
                        self.segment_of.get(name, -1), f"{ms:.6f}"])
        for i, (dev, count, ms) in enumerate(self.segments):
            w.writerow([f"segment:{i}", "segment", dev, count, i, f"{ms:.6f}"])
        w.writerow(["(boundaries)", "boundary", "", self.boundaries, "", f"{self.boundary_ms:.6f}"])
        w.writerow(["(converts)", "convert", "", self.converts, "", f"{self.convert_ms:.6f}"])
        w.writerow(["(fixed)", "fixed", "", "", "", f"{self.fixed_ms:.6f}"])
        w.writerow(["(total)", self.source, "", "", "", f"{self.total_ms:.6f}"])
        return buf.getvalue()


@dataclass
class _Plan:
    """Where and at what precision each node runs, plus the raw amounts the times are made of.

    Shared by ``estimate_latency`` and the fit (``autoq.surrogates.fit``), so both price exactly
    the same placement. Amounts: ``ops`` (FLOPs), ``act`` (activation elements read + written),
    ``weights`` (weight elements); edges are ``(kind, elements, src precision, dst precision)``.
    """

    names: list[str]
    op_types: list[str]
    is_npu: list[bool]
    precs: list[Precision]
    free: list[bool]
    ops: list[float]
    act: list[float]
    weights: list[float]
    edges: list[tuple[str, float, Precision, Precision]]


def plan_placement(nodes: Sequence[NodeInfo], config: QuantConfig, target: Target) -> _Plan:
    """Device and precision of every node and the edges that cross devices or precisions.

    Raises ``ConfigError`` when an NPU node needs a precision the target does not run.
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
    npu_ops = target.npu_ops
    float_on_npu = target.float_on_npu
    int8, flt = Precision.INT8, Precision.FLOAT
    precision_of = config.precision_of

    is_npu = [True] * n
    precs: list[Precision] = [int8] * n
    free = [False] * n
    ops = [0.0] * n
    act = [0.0] * n
    weights = [0.0] * n
    for i, node in enumerate(nodes):
        op = node.op_type
        if op in free_ops:
            free[i] = True
        follows_cpu = False
        if node.quantizable:
            p = precision_of(node.name)
        else:
            p = int8
            src = _source(node, producer, i)
            if src is not None:
                p = precs[src]
                follows_cpu = not is_npu[src]
        if op in cpu_ops or follows_cpu:
            npu = False
        elif p is flt:
            npu = float_on_npu
        else:
            npu = True
            if p.value not in supported:
                raise ConfigError(
                    f"target {target.name} cannot run {p.value} (node {node.name!r}); "
                    f"remove {p.value} from space.precisions or pick a target that runs it"
                )
        if npu and not free[i]:
            allowed = npu_ops.get(p.value)
            if allowed is not None and op not in allowed:
                npu = False
        if not npu:
            p = flt
        is_npu[i] = npu
        precs[i] = p
        if free[i]:
            continue
        ops[i] = float(node.flops or 2 * node.macs)
        act[i] = _input_elements(node, producer) + node.activation_bytes / _F32  # read inputs, write outputs
        weights[i] = node.param_bytes / _F32

    # Edges: NPU<->CPU boundaries and precision converts on the NPU, once per (tensor, destination).
    seen: set[tuple[str, object]] = set()
    edges: list[tuple[str, float, Precision, Precision]] = []
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
                edges.append(("boundary", _elements(nodes[pi], pr[1]), precs[pi], prec_c))
            elif dev_c and precs[pi] is not prec_c:
                k = (t, prec_c)
                if k in seen:
                    continue
                seen.add(k)
                edges.append(("convert", _elements(nodes[pi], pr[1]), precs[pi], prec_c))
    return _Plan([nd.name for nd in nodes], [nd.op_type for nd in nodes], is_npu, precs, free, ops, act, weights, edges)


def estimate_latency(nodes: Sequence[NodeInfo], config: QuantConfig, target: Target) -> LatencyEstimate:
    """Predicts the latency of ``nodes`` (in graph order) quantized by ``config`` on ``target``.

    Raises ``ConfigError`` when an NPU node needs a precision the target does not run.

    Example:
        >>> model = load_model("yolox_nano.onnx")                                   # doctest: +SKIP
        >>> est = estimate_latency(model.nodes, QuantConfig.uniform("int8"), load_target("generic-npu"))  # doctest: +SKIP
        >>> est.total_ms, est.breakdown()["boundaries"]                             # doctest: +SKIP
        >>> print(est.table())                                                      # doctest: +SKIP
    """
    plan = plan_placement(nodes, config, target)
    npu_bps = target.npu_bandwidth_gbs * 1e9
    cpu_fps = target.cpu_gflops * 1e9
    cpu_bps = target.cpu_bandwidth_gbs * 1e9
    npu_over = target.node_overhead_ms
    cpu_over = target.cpu_node_overhead_ms
    npu_tops = target.npu_tops
    efficiency = target.efficiency

    per_node: dict[str, float] = {}
    devices: dict[str, str] = {}
    precisions: dict[str, str] = {}
    op_types: dict[str, str] = {}
    tops_cache: dict[tuple[str, Precision], float] = {}
    for i, name in enumerate(plan.names):
        npu = plan.is_npu[i]
        p = plan.precs[i]
        op = plan.op_types[i]
        devices[name] = NPU if npu else CPU
        precisions[name] = p.value if npu else "float"
        op_types[name] = op
        if plan.free[i]:
            per_node[name] = 0.0
            continue
        if npu:
            key = (op, p)
            tops = tops_cache.get(key)
            if tops is None:
                tops = tops_cache[key] = npu_tops[p.value] * 1e12 * efficiency(op, p.value)
            s = plan.ops[i] / tops
            m = (plan.act[i] * _ACT_WIDTH[p] + plan.weights[i]) / npu_bps
            per_node[name] = (s if s > m else m) * 1e3 + npu_over
        else:
            s = plan.ops[i] / cpu_fps
            m = (plan.act[i] + plan.weights[i]) * _F32 / cpu_bps
            per_node[name] = (s if s > m else m) * 1e3 + cpu_over

    b_fixed = target.boundary_ms
    b_bps = target.boundary_bandwidth_gbs * 1e9
    c_fixed = target.convert_ms
    boundaries = converts = 0
    boundary_ms = convert_ms = 0.0
    for kind, elements, src, dst in plan.edges:
        if kind == "boundary":
            boundaries += 1
            boundary_ms += b_fixed + elements * _F32 / b_bps * 1e3
        else:
            converts += 1
            convert_ms += c_fixed + elements * (_ACT_WIDTH[src] + _ACT_WIDTH[dst]) / npu_bps * 1e3

    segments: list[tuple[str, int, float]] = []
    segment_of: dict[str, int] = {}
    cur_dev: bool | None = None
    count = 0
    seg_ms = 0.0
    for i, name in enumerate(plan.names):
        if plan.free[i]:
            segment_of[name] = -1
            continue
        if plan.is_npu[i] is not cur_dev:
            if count:
                segments.append((NPU if cur_dev else CPU, count, seg_ms))
            cur_dev, count, seg_ms = plan.is_npu[i], 0, 0.0
        count += 1
        seg_ms += per_node[name]
        segment_of[name] = len(segments)
    if count:
        segments.append((NPU if cur_dev else CPU, count, seg_ms))

    infeasible = []
    if target.onchip_bytes and target.whole_tensor_ops:
        for i, name in enumerate(plan.names):
            if plan.is_npu[i] and plan.op_types[i] in target.whole_tensor_ops:
                io = int(plan.act[i] * _ACT_WIDTH[plan.precs[i]])
                if io > target.onchip_bytes:
                    infeasible.append(f"{plan.op_types[i]} {name}: io {io} B > on-chip memory {target.onchip_bytes} B "
                                      f"at {plan.precs[i].value} (whole tensor on chip)")
    total = sum(per_node.values()) + boundary_ms + convert_ms + target.fixed_ms
    return LatencyEstimate(
        infeasible=tuple(infeasible),
        total_ms=total,
        per_node=MappingProxyType(per_node),
        devices=MappingProxyType(devices),
        segments=tuple(segments),
        boundaries=boundaries,
        boundary_ms=boundary_ms,
        converts=converts,
        convert_ms=convert_ms,
        fixed_ms=target.fixed_ms,
        precisions=MappingProxyType(precisions),
        op_types=MappingProxyType(op_types),
        segment_of=MappingProxyType(segment_of),
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
