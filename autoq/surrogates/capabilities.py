"""What a target's toolchain runs per op type: the precisions it builds, and what it does with others.

A target declares chip-wide ``precisions``, but its compiler decides per op: hb_mapper demotes int16
on an op without an int16 kernel to int8, pulsar2 has no FP32 Conv, AMCT quantizes only Conv, Gemm
and ConvTranspose (int16 only those), vamc and TensorRT have no int16. A search that assumed every op
runs every precision showed points the toolchain builds differently (the failure users report most:
float layers became int8 on export). So every target YAML has a ``capabilities`` table, and every
trial's config is *realized* through it before it is simulated, priced, recorded and exported::

    capabilities:
      "*":      {runs: [int8, float], else: int8, source: "ASSUMPTION: ..."}
      Conv:     {runs: [int8, int16, float], source: "vendor doc ..."}
      "Conv:depthwise": {runs: [int8, float]}
      Softmax:  {runs: [float], else: float}

``runs``: the precisions the toolchain builds for that op type (``float`` = left unquantized: on the
CPU, or fp16 on the NPU with ``float_on_npu``). ``else``: what it does with any other precision:
``int8`` (demotes silently), ``float`` (moves the op off the quantized path), ``reject`` (the tool
refuses or cannot express it: autoq never proposes it). Default ``int8`` when int8 runs, else
``reject``. Keys are op types, optionally ``Op:depthwise`` (a Conv whose group equals its input
channels); ``"*"`` covers every op type not listed. A target without the table is permissive.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from autoq.errors import ConfigError
from autoq.plan import Precision, QuantConfig

__all__ = ["ANY", "Capabilities", "OpRule", "Realization", "capabilities_from_dict", "nearest", "op_kind", "realize",
           "unit_choices"]

ANY = "*"
REJECT = "reject"
OTHERWISE = ("int8", "float", REJECT)
DEPTHWISE = "depthwise"
# Where a rejected precision goes when a choice covers many units (a band): the nearest one that runs.
_NEAREST = {
    Precision.FLOAT: (Precision.INT16, Precision.INT8),
    Precision.INT16: (Precision.INT8, Precision.FLOAT),
    Precision.INT8: (Precision.INT16, Precision.FLOAT),
}


def nearest(requested: Precision, allowed) -> Precision:
    """The precision among ``allowed`` closest to ``requested`` (float -> int16 -> int8, int8 -> int16 -> float)."""
    return next(p for p in _NEAREST[requested] if p in allowed)


@dataclass(frozen=True)
class OpRule:
    """One row of the table: what the toolchain runs for one op kind."""

    runs: frozenset[Precision]
    otherwise: str = "int8"  # "int8" | "float" | "reject"
    source: str = ""

    def realize(self, requested: Precision) -> Precision | None:
        """The precision the toolchain uses when ``requested`` is asked; None when it refuses it."""
        if requested in self.runs:
            return requested
        if self.otherwise == REJECT:
            return None
        return Precision(self.otherwise)

    def fallback(self, requested: Precision) -> Precision:
        """The realized precision, or for a refused one the nearest precision this op runs."""
        got = self.realize(requested)
        if got is not None:
            return got
        return nearest(requested, self.runs)


_PERMISSIVE = OpRule(frozenset(Precision), "int8", "permissive: no capability table")


@dataclass(frozen=True)
class Capabilities:
    """The ``capabilities`` table of a target (empty = every op runs every precision)."""

    rules: Mapping[str, OpRule] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def permissive(self) -> bool:
        return not self.rules

    def rule(self, kind: str) -> OpRule:
        """The row for an op kind (``Conv:depthwise`` falls back to ``Conv``, then ``*``)."""
        r = self.rules
        return r.get(kind) or r.get(kind.split(":", 1)[0]) or r.get(ANY) or _PERMISSIVE

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, rule in self.rules.items():
            row: dict[str, Any] = {"runs": [p.value for p in Precision if p in rule.runs], "else": rule.otherwise}
            if rule.source:
                row["source"] = rule.source
            out[k] = row
        return out


def capabilities_from_dict(data: Any, *, source: str, precisions: tuple[str, ...]) -> Capabilities:
    """Validates the YAML table; errors name ``source``, the row and what to write instead."""
    if data is None:
        return Capabilities()
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: key 'capabilities' must map op type -> {{runs: [...], else: ...}}")
    known = {*precisions, "float"}
    rules: dict[str, OpRule] = {}
    for kind, row in data.items():
        where = f"{source}: capabilities.{kind}"
        op, _, attr = str(kind).partition(":")
        if attr not in ("", DEPTHWISE) or (attr and op == ANY):
            raise ConfigError(f"{where}: unknown selector {attr!r}; use an op type, 'Op:{DEPTHWISE}' or '*'")
        if not isinstance(row, Mapping) or set(row) - {"runs", "else", "source"}:
            raise ConfigError(f"{where}: expected {{runs: [int8, ...], else: int8|float|reject, source: ...}}")
        runs = row.get("runs")
        if isinstance(runs, str) or not isinstance(runs, list) or not runs or set(runs) - known:
            raise ConfigError(f"{where}: runs must be a non-empty list from {sorted(known)} (the target's "
                              f"precisions and float), got {runs!r}")
        prec = frozenset(Precision(p) for p in runs)
        otherwise = row.get("else", "int8" if Precision.INT8 in prec else REJECT)
        if otherwise not in OTHERWISE or (otherwise != REJECT and Precision(otherwise) not in prec):
            raise ConfigError(f"{where}: else must be reject or one of its runs {sorted(p.value for p in prec)}, "
                              f"got {otherwise!r}")
        rules[str(kind)] = OpRule(prec, str(otherwise), str(row.get("source", "")))
    return Capabilities(MappingProxyType(rules))


def op_kind(node: Any, channels_in: int | None) -> str:
    """The table key of an ONNX NodeProto: ``Conv:depthwise`` for a Conv whose group equals its
    ``channels_in`` (> 1), else its op type."""
    if node.op_type in ("Conv", "ConvTranspose") and channels_in and channels_in > 1:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if group == channels_in:
            return f"{node.op_type}:{DEPTHWISE}"
    return node.op_type


@dataclass(frozen=True)
class Realization:
    """A config as the toolchain builds it, and what it changed.

    ``changed``: node -> (requested, realized) for every node the toolchain runs differently;
    ``refused``: the nodes among them whose requested precision the toolchain refuses outright
    (realized to the nearest precision it runs)."""

    config: QuantConfig
    changed: Mapping[str, tuple[Precision, Precision]]
    refused: frozenset[str] = frozenset()


def realize(config: QuantConfig, kinds: Mapping[str, str], caps: Capabilities) -> Realization:
    """``config`` through the capability table; ``kinds``: quantizable node -> op kind (`op_kind`)."""
    if caps.permissive:
        return Realization(config, MappingProxyType({}))
    nodes, changed, refused = dict(config.nodes), {}, set()
    for name, kind in kinds.items():
        rule = caps.rule(kind)
        req = config.precision_of(name)
        got = rule.realize(req)
        if got is None:
            refused.add(name)
            got = rule.fallback(req)
        if got is not req:
            changed[name] = (req, got)
            nodes[name] = got
    if not changed:
        return Realization(config, MappingProxyType({}))
    out = QuantConfig(resolution=config.resolution, variant=config.variant, calibration=config.calibration,
                      default=config.default, nodes=nodes)
    return Realization(out, MappingProxyType(changed), frozenset(refused))


def unit_choices(members: tuple[str, ...], kinds: Mapping[str, str], caps: Capabilities,
                 precisions: tuple[Precision, ...]) -> tuple[Precision, ...]:
    """The precisions worth proposing for a unit (nodes that share one precision parameter): those no
    member refuses, and of those that the toolchain builds identically only the first."""
    seen, out = set(), []
    for p in precisions:
        built = tuple(caps.rule(kinds[m]).realize(p) if m in kinds else p for m in members)
        if None in built or built in seen:
            continue
        seen.add(built)
        out.append(p)
    return tuple(out) or precisions[:1]  # every precision refused by some member: realized per node
