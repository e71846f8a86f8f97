"""QuantConfig <-> Optuna trial parameters.

Three layouts (`SpaceLayout`), all over *units* (node groups whose precisions must agree, a Conv with
its fused activation and tail, `autoq.search.sensitivity.node_units`), never over single ONNX nodes:

- ``units``: one categorical parameter ``unit:<name>`` per unit (``space.per_node_top_k: 0``, or no
  sensitivity sweep);
- ``grouped``: one parameter ``unit:<name>`` for each of the ``space.per_node_top_k`` most sensitive units
  and one ``band:<i>`` per sensitivity band of the other units (band 1 = the most sensitive of them);
- ``per_node``: one parameter per node (``node:<name>``), kept only by studies created before units.

A parameter proposes only the precisions the target's toolchain builds for its unit, each once
(`autoq.surrogates.capabilities.unit_choices`); a unit with a single such precision has no parameter.

Plus the calibration granularity and range method (and percentile, resolution, variant when searched).
`params_of` maps a QuantConfig back onto the layout; on a grouped layout a parameter takes the most
common precision of its member nodes, so a config that mixes precisions inside a unit is rounded (the
search enqueues such seeds with the exact config attached, see `autoq.search.seeds`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autoq.model.resolution import format_resolution, parse_resolution
from autoq.plan import Calibration, Precision, QuantConfig
from autoq.quant.ranges import DEFAULT_PERCENTILE
from autoq.surrogates.capabilities import nearest

NODE_PREFIX = "node:"
UNIT_PREFIX = "unit:"
BAND_PREFIX = "band:"
GRANULARITY = "granularity"
METHOD = "method"
PERCENTILE = "percentile"  # only suggested when method == "percentile" (a conditional parameter)
RESOLUTION = "resolution"  # "HxW" over space.resolutions (only when configured)
VARIANT = "variant"  # "" (original) + rewrite sets + user variants (only when configured)
DEFAULT_PERCENTILES = (99.99, 99.999)


def suggest_config(
    trial: Any,
    node_names: Sequence[str],
    precisions: Sequence[Precision],
    granularities: Sequence[str],
    methods: Sequence[str],
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    *,
    resolutions: Sequence[str] = (),
    variants: Sequence[str] = (),
) -> QuantConfig:
    """Asks the trial for every parameter and returns the QuantConfig it decides.

    ``percentile`` is asked only when the trial's method is ``percentile``; ``resolution`` ("HxW") and
    ``variant`` only when ``resolutions`` / ``variants`` are given. Node parameters are keyed by the
    original model's node names; a variant ignores the ones it lacks (`Project.variant`).
    """
    return _suggest(trial, lambda choices: {n: trial.suggest_categorical(NODE_PREFIX + n, choices) for n in node_names},
                    precisions, granularities, methods, percentiles, resolutions=resolutions, variants=variants)


def _suggest(
    trial: Any,
    ask_nodes: Callable[[list[str]], dict[str, str]],
    precisions: Sequence[Precision],
    granularities: Sequence[str],
    methods: Sequence[str],
    percentiles: Sequence[float],
    *,
    resolutions: Sequence[str],
    variants: Sequence[str],
) -> QuantConfig:
    """The parameters every layout asks, in one fixed order; ``ask_nodes(choices)`` asks the
    precision parameters and returns ``{node: precision}``."""
    resolution = None
    if resolutions:

        resolution = parse_resolution(trial.suggest_categorical(RESOLUTION, list(resolutions)))
    variant = str(trial.suggest_categorical(VARIANT, list(variants))) if variants else ""
    choices = [p.value for p in precisions]
    assignment = ask_nodes(choices)
    granularity = trial.suggest_categorical(GRANULARITY, list(granularities))
    method = trial.suggest_categorical(METHOD, list(methods))
    percentile = None
    if method == "percentile":
        percentile = float(trial.suggest_categorical(PERCENTILE, [float(p) for p in percentiles]))
    calibration = Calibration(granularity=granularity, method=method, percentile=percentile)
    # The most common precision becomes the default, so `nodes` holds only the exceptions.
    default = Counter(assignment.values()).most_common(1)[0][0] if assignment else choices[0]
    return QuantConfig(resolution=resolution, variant=variant, calibration=calibration, default=Precision(default),
                       nodes=assignment)


def params_of(
    config: QuantConfig, node_names: Sequence[str], *, resolutions: Sequence[str] = (), variants: Sequence[str] = ()
) -> dict[str, Any]:
    """The trial parameters that reproduce ``config`` (for ``study.enqueue_trial``).

    ``resolution`` / ``variant`` are included when searched and set in ``config`` (else the sampler picks).
    """
    params: dict[str, Any] = {NODE_PREFIX + n: config.precision_of(n).value for n in node_names}
    if resolutions and config.resolution is not None:

        params[RESOLUTION] = format_resolution(config.resolution)
    if variants and config.variant in variants:
        params[VARIANT] = config.variant
    params[GRANULARITY] = config.calibration.granularity
    params[METHOD] = config.calibration.method
    if config.calibration.method == "percentile":

        p = config.calibration.percentile
        params[PERCENTILE] = float(DEFAULT_PERCENTILE if p is None else p)
    return params


@dataclass(frozen=True)
class SpaceLayout:
    """How node precisions map onto trial parameters: ``params`` = ((parameter name, member nodes), ...);
    ``choices`` = ((parameter name, precisions the toolchain can build for it), ...) where they are fewer
    than the space's (`autoq.surrogates.capabilities.unit_choices`)."""
    kind: str  # "per_node" (legacy studies) | "units" | "grouped"
    params: tuple[tuple[str, tuple[str, ...]], ...]
    choices: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @classmethod
    def per_node(cls, node_names: Sequence[str]) -> SpaceLayout:
        return cls("per_node", tuple((NODE_PREFIX + n, (n,)) for n in node_names))

    @classmethod
    def units(cls, units: Sequence[tuple[str, Sequence[str]]], choices: Mapping[str, Sequence[str]]) -> SpaceLayout:
        """One parameter per unit with more than one realizable choice (``choices``: unit -> precisions)."""
        return cls.grouped(units, len(units), 1, choices, kind="units")

    @classmethod
    def grouped(cls, ranked_units: Sequence[tuple[str, Sequence[str]]], top_k: int, bands: int,
                choices: Mapping[str, Sequence[str]] | None = None, *, kind: str = "grouped") -> SpaceLayout:
        """``ranked_units``: (unit name, nodes), most sensitive first. Units with a single realizable choice
        (``choices``) get no parameter (the toolchain decides them); of the rest, the first ``top_k`` get
        their own parameter and the others are split in rank order into ``bands`` bands of equal count."""
        choices = {u: tuple(str(p) for p in ps) for u, ps in (choices or {}).items()}
        searched = [(u, tuple(nodes)) for u, nodes in ranked_units if u not in choices or len(choices[u]) > 1]
        top = [(UNIT_PREFIX + name, nodes) for name, nodes in searched[:top_k]]
        own = [(UNIT_PREFIX + name, choices[name]) for name, _ in searched[:top_k] if name in choices]
        rest = searched[top_k:]
        out = list(top)
        nb = min(bands, len(rest))
        for b in range(nb):
            lo, hi = b * len(rest) // nb, (b + 1) * len(rest) // nb
            members = tuple(m for _, nodes in rest[lo:hi] for m in nodes)
            if members:
                out.append((f"{BAND_PREFIX}{b + 1}", members))
                if choices:
                    union = {p for u, _ in rest[lo:hi] for p in choices.get(u, ())}
                    own.append((f"{BAND_PREFIX}{b + 1}", tuple(p.value for p in Precision if p.value in union)))
        return cls(kind, tuple(out), tuple(own))

    def choices_of(self, name: str, default: Sequence[str]) -> list[str]:
        """The precisions parameter ``name`` proposes: its realizable ones among ``default``, in that order."""
        own = dict(self.choices).get(name)
        return list(default) if own is None else [p for p in default if p in own] or list(own)

    @property
    def signature(self) -> str:
        return hashlib.sha256(json.dumps([self.kind, self.params, self.choices]).encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "params": [[k, list(v)] for k, v in self.params],
                           "choices": [[k, list(v)] for k, v in self.choices]})

    @classmethod
    def from_json(cls, text: str) -> SpaceLayout:
        d = json.loads(text)
        return cls(d["kind"], tuple((k, tuple(v)) for k, v in d["params"]),
                   tuple((k, tuple(v)) for k, v in d.get("choices", ())))

    def precision_params(self, config) -> dict[str, str]:
        """The precision parameter values that reproduce ``config`` (most common precision per parameter,
        projected onto the parameter's choices: the nearest one that the toolchain builds)."""
        out = {}
        for name, members in self.params:
            counts = Counter(config.precision_of(m).value for m in members)
            value = counts.most_common(1)[0][0] if counts else config.default.value
            allowed = dict(self.choices).get(name)
            if allowed is not None and value not in allowed:
                value = nearest(Precision(value), {Precision(p) for p in allowed}).value
            out[name] = value
        return out

    def config_nodes(self, values: Mapping[str, str]) -> dict[str, str]:
        """Node -> precision for parameter ``values`` (one entry per parameter)."""
        return {m: values[name] for name, members in self.params for m in members}


def suggest_layout_config(
    trial: Any,
    layout: SpaceLayout,
    precisions: Sequence[Precision],
    granularities: Sequence[str],
    methods: Sequence[str],
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    *,
    resolutions: Sequence[str] = (),
    variants: Sequence[str] = (),
) -> QuantConfig:
    """`suggest_config` over a `SpaceLayout` (the per-node layout asks exactly what `suggest_config` asks)."""
    if layout.kind == "per_node":
        names = [members[0] for _, members in layout.params]
        return suggest_config(trial, names, precisions, granularities, methods, percentiles,
                              resolutions=resolutions, variants=variants)
    return _suggest(
        trial,
        lambda choices: layout.config_nodes(
            {name: trial.suggest_categorical(name, layout.choices_of(name, choices)) for name, _ in layout.params}),
        precisions, granularities, methods, percentiles, resolutions=resolutions, variants=variants,
    )


def layout_params_of(
    config: QuantConfig, layout: SpaceLayout, *, resolutions: Sequence[str] = (), variants: Sequence[str] = ()
) -> dict[str, Any]:
    """`params_of` over a `SpaceLayout` (identical to `params_of` for the per-node layout)."""
    if layout.kind == "per_node":
        return params_of(config, [m[0] for _, m in layout.params], resolutions=resolutions, variants=variants)
    params: dict[str, Any] = dict(layout.precision_params(config))
    base = params_of(config, [], resolutions=resolutions, variants=variants)
    return {**params, **base}
