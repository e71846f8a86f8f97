"""The records one trial decides (`QuantConfig`) and what it measures (`TrialResult`)."""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1


class Precision(str, enum.Enum):
    """How one node runs: int8 or int16 activations (weights int8), or float (left unquantized, CPU)."""

    INT8 = "int8"
    INT16 = "int16"
    FLOAT = "float"

    def __str__(self) -> str:
        return self.value


class FrozenMap(Mapping[str, Precision]):
    """An immutable, hashable node -> precision map (so QuantConfig can be a dict key)."""

    __slots__ = ("_items", "_hash")

    def __init__(self, items: Mapping[str, Precision | str] | Iterable[tuple[str, Precision | str]] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        self._items = {str(k): Precision(v) for k, v in sorted(pairs)}
        self._hash = hash(tuple(self._items.items()))

    def __getitem__(self, key: str) -> Precision:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self._items) == dict(other)

    def __repr__(self) -> str:
        return f"FrozenMap({self._items!r})"


GRANULARITIES = ("per_tensor", "per_channel")


@dataclass(frozen=True)
class Calibration:
    """Where activation ranges come from and how weights are scaled.

    ``granularity`` is the weight granularity (activations are always per tensor);
    ``method`` names a range estimator; ``percentile`` is used by the ``percentile`` method.
    """

    granularity: str = "per_tensor"
    method: str = "minmax"
    percentile: float | None = None

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, not {self.granularity!r}")


@dataclass(frozen=True)
class QuantConfig:
    """Everything one trial decides. ``nodes`` holds only the overrides of ``default``.

    Example:
        >>> cfg = QuantConfig(default=Precision.INT8, nodes={"conv_0": "int16"})
        >>> cfg.precision_of("conv_0"), cfg.precision_of("conv_1")
        (<Precision.INT16: 'int16'>, <Precision.INT8: 'int8'>)
    """

    resolution: tuple[int, int] | None = None
    variant: str = ""
    calibration: Calibration = field(default_factory=Calibration)
    default: Precision = Precision.INT8
    nodes: Mapping[str, Precision] = field(default_factory=FrozenMap)

    def __post_init__(self) -> None:
        object.__setattr__(self, "default", Precision(self.default))
        # Store only real overrides, so equal assignments compare (and hash) equal.
        nodes = {k: Precision(v) for k, v in dict(self.nodes).items() if Precision(v) != self.default}
        object.__setattr__(self, "nodes", FrozenMap(nodes))
        if self.resolution is not None:
            object.__setattr__(self, "resolution", (int(self.resolution[0]), int(self.resolution[1])))

    def precision_of(self, node: str) -> Precision:
        return self.nodes.get(node, self.default)

    def assignment(self, node_names: Iterable[str]) -> dict[str, Precision]:
        """The precision of every node in ``node_names``."""
        return {n: self.precision_of(n) for n in node_names}

    def counts(self, node_names: Iterable[str]) -> dict[str, int]:
        """How many of ``node_names`` run in each precision, e.g. {"int8": 90, "int16": 3, "float": 1}."""
        out = {p.value: 0 for p in Precision}
        for n in node_names:
            out[self.precision_of(n).value] += 1
        return out

    @classmethod
    def uniform(cls, precision: Precision | str, **kwargs: Any) -> QuantConfig:
        return cls(default=Precision(precision), **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "resolution": list(self.resolution) if self.resolution else None,
            "variant": self.variant,
            "calibration": {
                "granularity": self.calibration.granularity,
                "method": self.calibration.method,
                "percentile": self.calibration.percentile,
            },
            "default": self.default.value,
            "nodes": {k: v.value for k, v in self.nodes.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantConfig:
        cal = data.get("calibration") or {}
        res = data.get("resolution")
        return cls(
            resolution=tuple(res) if res else None,  # type: ignore[arg-type]
            variant=data.get("variant", "") or "",
            calibration=Calibration(
                granularity=cal.get("granularity", "per_tensor"),
                method=cal.get("method", "minmax"),
                percentile=cal.get("percentile"),
            ),
            default=Precision(data.get("default", "int8")),
            nodes=data.get("nodes") or {},
        )


@dataclass(frozen=True)
class TrialResult:
    """What one trial measured. ``map_drop`` is against the float original at its own resolution.

    ``map``/``map_drop`` are the objective metric's value and drop (`autoq.objectives.metrics`); for a
    metric other than ``coco_map`` ``map`` holds its value, ``map50``/size APs are nan and
    ``per_class_ap`` is empty. In label-free mode they measure agreement with the float model.
    """

    map: float
    map50: float
    map_small: float
    map_medium: float
    map_large: float
    per_class_ap: Mapping[str, float]
    map_drop: float
    latency_ms: float
    latency_breakdown: Mapping[str, float]
    images: int
    partial: bool = False
    seconds: Mapping[str, float] = field(default_factory=dict)
    # output similarity to the float model (label-free mode, cosine metric): cosine, l1, l2, chebyshev
    similarity: Mapping[str, float] = field(default_factory=dict)
    # per node and per segment: CSV node,op,device,precision,segment,ms (logged as an artifact)
    latency_table: str = ""
    # cosine similarity to the float model's raw outputs, per output name (MLflow ``cos/<output>``)
    output_cosine: Mapping[str, float] = field(default_factory=dict)
    # why the target's toolchain would refuse to compile it (on-chip memory), one line each
    infeasible: tuple[str, ...] = ()
    # paired bootstrap samples of map_drop over the eval images (autoq.objectives.bootstrap); () = none
    drop_boot: tuple[float, ...] = ()
    # COCOeval per-image results (autoq.objectives.bootstrap.ImageStats): paired comparisons of trials
    image_stats: Any = field(default=None, compare=False, repr=False)

    @property
    def drop_ci(self) -> tuple[float, float] | None:
        """95% interval of ``map_drop`` (0..1 scale), or None without per-image results."""
        return percentile_interval(self.drop_boot) if self.drop_boot else None

    def metrics(self) -> dict[str, float]:
        """The scalar metrics logged per trial."""
        return {
            "map": self.map,
            "map50": self.map50,
            "map_small": self.map_small,
            "map_medium": self.map_medium,
            "map_large": self.map_large,
            "map_drop": self.map_drop,
            "latency_ms": self.latency_ms,
            "images": float(self.images),
            **(dict(zip(("map_drop_lo", "map_drop_hi"), self.drop_ci)) if self.drop_ci else {}),
            **{f"sim_{k}": float(v) for k, v in self.similarity.items()},
            **{cosine_metric_name(k): float(v) for k, v in self.output_cosine.items()},
        }


def percentile_interval(samples: Iterable[float], level: float = 0.95) -> tuple[float, float]:
    """The ``level`` percentile interval of bootstrap ``samples`` (linear interpolation, as numpy's default)."""
    a = sorted(float(x) for x in samples)
    if not a:
        raise ValueError("no samples")

    def q(f: float) -> float:
        pos = f * (len(a) - 1)
        i = int(pos)
        return a[i] if i + 1 >= len(a) else a[i] + (a[i + 1] - a[i]) * (pos - i)

    return q((1 - level) / 2), q(1 - (1 - level) / 2)


def cosine_metric_name(output: str) -> str:
    """An MLflow-safe metric key for model output ``output``: ``cos/<output>``."""
    return "cos/" + (re.sub(r"[^A-Za-z0-9_\-. /]", "_", output) or "output")
