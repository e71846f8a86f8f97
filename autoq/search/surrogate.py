"""Additive drop predictor, its ridge refit on finished trials, and the knapsack seeds.

`DropModel`: predicted ``map_drop`` of a configuration = sum over the layout's parameters of a term per
(parameter, precision) + a term per non-default calibration choice. The prior comes from the sensitivity
sweep: a parameter's int16 term is the all-int16 drop times its share of the nodes; its int8 term is that
plus the summed damage of its units scaled so that all-int8 predicts the measured all-int8 drop; float is 0.
(A unit in a parameter is entirely in it: parameters are unions of units.)
`DropModel.refit` solves a ridge regression on the finished trials, shrunk toward that prior (so with few
trials it stays the prior, with many it follows the data).

`knapsack`: minimize the cost model's latency subject to predicted drop <= ``bound`` (multiple-choice
knapsack, dynamic programming over the drop discretized upward, so the exact predicted drop of the answer
is <= ``bound``). Latency per (parameter, precision) is the cost model's marginal change from all-int8,
which is additive up to the convert/boundary edges between parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autoq.plan import Calibration, Precision, QuantConfig
from autoq.search.space import GRANULARITY, METHOD, PERCENTILE, SpaceLayout
from autoq.surrogates.cost_model import estimate_latency

__all__ = ["DropModel", "KnapsackItem", "knapsack", "knapsack_items"]


@dataclass
class DropModel:
    """Linear drop predictor over (parameter, precision) indicators and calibration one-hots."""
    layout: SpaceLayout
    prior: dict[tuple[str, str], float]  # (param, precision) -> drop term (0..1 scale)
    extra: tuple[tuple[str, str], ...] = ()  # (calibration param, value) features, prior 0
    lam: float = 1.0  # ridge strength (toward the prior)
    coef: dict[tuple[str, str], float] = field(default_factory=dict)
    rmse: float = float("nan")
    n_fit: int = 0

    @classmethod
    def from_sensitivity(cls, layout: SpaceLayout, sens, precisions: Sequence[Precision], *,
                         calibration_choices: Mapping[str, Sequence[Any]] | None = None) -> DropModel:
        gain = {u.unit: u.damage for u in sens.units}
        unit_of = {m: u.unit for u in sens.units for m in u.nodes}
        n_total = max(len(unit_of), 1)
        total = sum(gain.values())
        spread = max(sens.int8_drop - sens.probe_drop, 0.0)
        scale = spread / total if total > 0 else 0.0
        d16 = max(sens.probe_drop, 0.0) if sens.probe == "int16" else 0.0
        prior: dict[tuple[str, str], float] = {}
        for name, members in layout.params:
            units = {unit_of[m] for m in members if m in unit_of}
            share = len(members) / n_total
            w8 = scale * sum(gain[u] for u in units) + d16 * share
            for p in precisions:
                prior[(name, p.value)] = {"int8": w8, "int16": d16 * share, "float": 0.0}[p.value]
        extra = tuple((k, str(v)) for k, vs in (calibration_choices or {}).items() for v in list(vs)[1:])
        model = cls(layout, prior, extra)
        model.coef = dict(prior)
        return model

    def _features(self, params: Mapping[str, Any]) -> np.ndarray:
        keys = list(self.prior) + list(self.extra)
        x = np.zeros(len(keys))
        for i, (k, v) in enumerate(keys):
            if str(params.get(k)) == str(v):
                x[i] = 1.0
        return x

    def _theta0(self) -> np.ndarray:
        return np.array([self.prior[k] for k in self.prior] + [0.0] * len(self.extra))

    def predict_params(self, params: Mapping[str, Any]) -> float:
        keys = list(self.prior) + list(self.extra)
        theta = np.array([self.coef.get(k, 0.0) for k in keys])
        return float(self._features(params) @ theta)

    def predict(self, config: QuantConfig) -> float:
        return self.predict_params(self.params_of(config))

    def params_of(self, config: QuantConfig) -> dict[str, Any]:
        p: dict[str, Any] = dict(self.layout.precision_params(config))
        p[GRANULARITY] = config.calibration.granularity
        p[METHOD] = config.calibration.method
        if config.calibration.percentile is not None:
            p[PERCENTILE] = float(config.calibration.percentile)
        return p

    def refit(self, rows: Sequence[tuple[Mapping[str, Any], float]]) -> None:
        """Ridge toward the prior on ``rows`` = [(parameter values, measured map_drop)]."""
        if not rows:
            return
        X = np.stack([self._features(p) for p, _ in rows])
        y = np.array([d for _, d in rows], dtype=np.float64)
        t0 = self._theta0()
        r = y - X @ t0
        A = X.T @ X + self.lam * np.eye(X.shape[1])
        delta = np.linalg.solve(A, X.T @ r)
        theta = t0 + delta
        keys = list(self.prior) + list(self.extra)
        self.coef = dict(zip(keys, theta.tolist()))
        resid = y - X @ theta
        self.n_fit = len(rows)
        self.rmse = float(math.sqrt(np.mean(resid ** 2)))


@dataclass(frozen=True)
class KnapsackItem:
    name: str  # the layout parameter
    members: tuple[str, ...]
    choices: tuple[tuple[str, float, float], ...]  # (precision, predicted drop, latency delta ms)


def knapsack_items(model: DropModel, nodes, target, precisions: Sequence[Precision], calibration: Calibration,
                   realize: Callable[[QuantConfig], QuantConfig] = lambda c: c) -> tuple[list[KnapsackItem], float]:
    """Per layout parameter: each of its choices' predicted drop and marginal latency vs all-int8, priced
    as the toolchain builds it (``realize``).

    Returns (items, all-int8 latency). Precisions the cost model refuses for a parameter are left out.
    """

    base_cfg = QuantConfig.uniform(Precision.INT8, calibration=calibration)
    base = estimate_latency(nodes, realize(base_cfg), target).total_ms
    items = []
    values = [p.value for p in precisions]
    for name, members in model.layout.params:
        choices = []
        for v in model.layout.choices_of(name, values):
            p = Precision(v)
            try:
                lat = base if p is Precision.INT8 else estimate_latency(
                    nodes, realize(QuantConfig(default=Precision.INT8, calibration=calibration, nodes={m: p for m in members})),
                    target).total_ms
            except Exception:
                continue
            choices.append((p.value, max(model.coef.get((name, p.value), 0.0), 0.0), lat - base))
        if choices:
            items.append(KnapsackItem(name, members, tuple(choices)))
    return items, base


def knapsack(items: Sequence[KnapsackItem], bound: float, *, bins: int = 400) -> tuple[dict[str, str], float, float] | None:
    """Minimum total latency delta with sum of predicted drops <= ``bound``.

    Returns ({parameter: precision}, predicted drop, latency delta) or None when nothing fits (e.g.
    ``bound`` below the sum of every parameter's smallest drop). Drops are rounded *up* to the bin grid,
    so the exact predicted drop of the answer never exceeds ``bound``.
    """
    if bound < 0 or not items:
        return None
    step = bound / bins if bound > 0 else 1.0
    INF = float("inf")
    dp = np.full(bins + 1, INF)
    dp[0] = 0.0
    choice = []
    for it in items:
        new = np.full(bins + 1, INF)
        arg = np.full(bins + 1, -1, dtype=np.int64)
        for ci, (_, d, lat) in enumerate(it.choices):
            w = int(math.ceil(d / step - 1e-9)) if bound > 0 else (0 if d <= 0 else bins + 1)
            if w > bins:
                continue
            shifted = np.full(bins + 1, INF)
            shifted[w:] = dp[: bins + 1 - w] + lat
            better = shifted < new
            new[better] = shifted[better]
            arg[better] = ci
        choice.append(arg)
        dp = new
    best = int(np.argmin(dp))
    if not np.isfinite(dp[best]):
        return None
    # walk back
    out: dict[str, str] = {}
    k = best
    drop_sum = lat_sum = 0.0
    for it, arg in zip(reversed(items), reversed(choice)):
        ci = int(arg[k])
        p, d, lat = it.choices[ci]
        out[it.name] = p
        drop_sum += d
        lat_sum += lat
        w = int(math.ceil(d / step - 1e-9)) if bound > 0 else 0
        k -= w
    return out, drop_sum, lat_sum
