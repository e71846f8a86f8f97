"""Range estimators: cached activation statistics -> per-tensor (low, high) clipping ranges.

Every estimator is a function ``estimator(stats, calibration, *, bits) -> {tensor: (low, high)}``
registered by name in `RANGE_ESTIMATORS` (``Calibration.method``); a user names their own as
``package.module:function``. ``bits`` is the activation bit width the ranges are for (8 or 16): the
best clip of a tensor depends on it (int16 has 256x finer steps, so clipping outliers pays off much
less). `activation_ranges` asks for the int8 ranges of every tensor and, when the trial has int16
tensors, for their int16 ranges, and memoizes both on the statistics object, so a trial pays a dict
merge (microseconds) after the first trial of each (method, percentile, bits).

Built-in estimators (all work on `ActivationStats`: exact min/max plus a signed histogram of
``HIST_BINS`` bins over ``[-T, T]``, ``T = max(|min|, |max|)``, ONNX Runtime's layout):

* ``minmax`` - the observed min and max (ORT ``CalibrationMethod.MinMax``).
* ``percentile`` - cuts ``(100 - p) / 2`` percent of the values on each side, clamped to the
  observed min/max: ORT ``CalibrationMethod.Percentile`` with ``symmetric=False``. ``p`` is
  ``calibration.percentile`` (default `DEFAULT_PERCENTILE`).
* ``mse`` - the (low, high) minimizing the expected squared error of asymmetric ``bits``-bit
  fake quantization over the histogram: clipping error of the values outside the range plus
  ``step**2 / 12`` rounding noise for the values inside, ``step = (high - low) / (2**bits - 1)``;
  low and high optimized alternately over the histogram's bin edges. ORT has no MSE calibrator.
* ``kl`` - TensorRT/ORT entropy calibration: the |x| threshold whose 128-level quantized
  distribution is closest (KL divergence) to the clipped one, intersected with the observed range.
  For int16 tensors (32768 levels: no useful clipping at histogram resolution) it returns minmax.

Every range is widened to contain 0 (quantized zero must be exact for padding and ReLU).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING

import numpy as np

from autoq.errors import DataError
from autoq.plan import Calibration
from autoq.registry import Registry

if TYPE_CHECKING:
    from autoq.quant.calibrate import ActivationStats

__all__ = [
    "DEFAULT_PERCENTILE",
    "RANGE_ESTIMATORS",
    "RangeEstimator",
    "activation_ranges",
    "kl_ranges",
    "minmax_ranges",
    "mse_ranges",
    "percentile_ranges",
    "quantization_mse",
]

Range = tuple[float, float]
RangeEstimator = Callable[..., dict[str, Range]]

#: ORT's default percentile (``extra_options["percentile"]``), used when Calibration.percentile is None.
DEFAULT_PERCENTILE = 99.999
#: Quantized levels per side in the KL search (ORT/TensorRT use 128 for int8).
KL_QUANTIZED_BINS = 128
_KL_ABS_BINS = 2048  # |x| bins the KL search runs on (TensorRT's)
_KL_STRIDE = 16  # candidate thresholds every >= 16 bins from 128 (TensorRT tries every bin) ...
_KL_CANDIDATES = 48  # ... and at most ~48 of them per tensor (keeps `kl` ranges ~1 s for 400 tensors)

#: Range estimators by name (``Calibration.method``); register new ones with
#: ``@RANGE_ESTIMATORS.register("name")`` or name a function as ``package.module:function``.
RANGE_ESTIMATORS: Registry[RangeEstimator] = Registry("range estimator")


def _with_zero(name: str, lo: float, hi: float) -> Range:
    """Quantized zero must be exact (padding, ReLU), so ORT widens every range to contain 0."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise DataError(
            f"calibration gave tensor {name!r} the non-finite range ({lo}, {hi}); check the calibration "
            "images and preprocessing (NaN or inf in the input)"
        )
    return (min(float(lo), 0.0), max(float(hi), 0.0))


def _hist_or_error(stats: ActivationStats, name: str, method: str):
    h = stats.histograms.get(name)
    if h is None:
        raise ValueError(
            f"calibration method {method!r} needs histograms, but the statistics of tensor {name!r} have none "
            "(statistics from an old cache or built without histograms); delete .autoq/cache and rerun"
        )
    return h


# ------------------------------------------------------------------------------------- estimators


@RANGE_ESTIMATORS.register("minmax")
def minmax_ranges(stats: ActivationStats, calibration: Calibration, *, bits: int = 8) -> dict[str, Range]:
    """The observed min and max of each tensor, widened to contain zero."""
    return {name: _with_zero(name, lo, hi) for name, (lo, hi) in stats.minmax.items()}


@RANGE_ESTIMATORS.register("percentile")
def percentile_ranges(stats: ActivationStats, calibration: Calibration, *, bits: int = 8) -> dict[str, Range]:
    """ORT's non-symmetric Percentile calibrator on the cached histograms (same bins, same cut)."""
    p = DEFAULT_PERCENTILE if calibration.percentile is None else float(calibration.percentile)
    if not 0 < p <= 100:
        raise ValueError(f"percentile must be in (0, 100], not {p}")
    cut = (100.0 - p) / 200.0
    out: dict[str, Range] = {}
    for name, (lo, hi) in stats.minmax.items():
        h = _hist_or_error(stats, name, "percentile")
        total = h.counts.sum()
        if total == 0:
            out[name] = _with_zero(name, lo, hi)
            continue
        cdf = np.cumsum(h.counts / total)
        edges = h.edges
        left = edges[np.searchsorted(cdf, cut)]
        right = edges[np.searchsorted(cdf, 1.0 - cut)]
        out[name] = _with_zero(name, max(float(left), lo), min(float(right), hi))
    return out


def _levels(bits: int) -> int:
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, not {bits}")
    return (1 << bits) - 1  # steps between qmin and qmax of ORT's QInt8 / QInt16 (asymmetric)


@RANGE_ESTIMATORS.register("mse")
def mse_ranges(stats: ActivationStats, calibration: Calibration, *, bits: int = 8) -> dict[str, Range]:
    """Per tensor, the clip minimizing expected ``bits``-bit quantization MSE (see module doc)."""
    steps = _levels(bits)
    out: dict[str, Range] = {}
    for name, (lo, hi) in stats.minmax.items():
        h = _hist_or_error(stats, name, "mse")
        out[name] = _with_zero(name, *_mse_clip(h.counts, h.edges, lo, hi, steps))
    return out


def _mse_clip(counts: np.ndarray, edges: np.ndarray, lo: float, hi: float, steps: int) -> Range:
    lo0, hi0 = min(lo, 0.0), max(hi, 0.0)
    n = counts.astype(np.float64)
    total = n.sum()
    if total == 0 or hi0 - lo0 <= 0:
        return lo0, hi0
    e = edges.astype(np.float64)
    x = np.clip((e[:-1] + e[1:]) * 0.5, lo0, hi0)  # bin centers as the values of each bin
    nx, nxx = n * x, n * x * x
    # suffix sums over bins >= j (values right of edge j) and prefix sums over bins < k (left of edge k)
    s0 = np.concatenate([np.cumsum(n[::-1])[::-1], [0.0]])
    s1 = np.concatenate([np.cumsum(nx[::-1])[::-1], [0.0]])
    s2 = np.concatenate([np.cumsum(nxx[::-1])[::-1], [0.0]])
    p0 = np.concatenate([[0.0], np.cumsum(n)])
    p1 = np.concatenate([[0.0], np.cumsum(nx)])
    p2 = np.concatenate([[0.0], np.cumsum(nxx)])
    # candidate highs: edges strictly inside (0, hi0) plus hi0 itself (no clipping on that side)
    hj = np.nonzero((e > 0) & (e < hi0))[0]
    hi_c = np.concatenate([e[hj], [hi0]])
    hi_err = np.concatenate([s2[hj] - 2 * e[hj] * s1[hj] + e[hj] ** 2 * s0[hj], [0.0]])
    hi_out = np.concatenate([s0[hj], [0.0]])
    lk = np.nonzero((e < 0) & (e > lo0))[0]
    lo_c = np.concatenate([e[lk], [lo0]])
    lo_err = np.concatenate([e[lk] ** 2 * p0[lk] - 2 * e[lk] * p1[lk] + p2[lk], [0.0]])
    lo_out = np.concatenate([p0[lk], [0.0]])
    best_lo, best_lo_err, best_lo_out = lo0, 0.0, 0.0
    best_hi, best_hi_err, best_hi_out = hi0, 0.0, 0.0
    for _ in range(4):  # alternate: the two sides interact only through the step size
        inside = total - best_lo_out - hi_out
        cost = hi_err + inside * ((hi_c - best_lo) / steps) ** 2 / 12.0
        i = int(np.argmin(cost))
        best_hi, best_hi_err, best_hi_out = float(hi_c[i]), float(hi_err[i]), float(hi_out[i])
        inside = total - lo_out - best_hi_out
        cost = lo_err + inside * ((best_hi - lo_c) / steps) ** 2 / 12.0
        k = int(np.argmin(cost))
        if float(lo_c[k]) == best_lo:
            break
        best_lo, best_lo_err, best_lo_out = float(lo_c[k]), float(lo_err[k]), float(lo_out[k])
    return best_lo, best_hi


@RANGE_ESTIMATORS.register("kl")
def kl_ranges(stats: ActivationStats, calibration: Calibration, *, bits: int = 8) -> dict[str, Range]:
    """Entropy calibration on |x| (TensorRT's algorithm), intersected with the observed range."""
    if bits != 8:
        return minmax_ranges(stats, calibration, bits=bits)
    out: dict[str, Range] = {}
    for name, (lo, hi) in stats.minmax.items():
        h = _hist_or_error(stats, name, "kl")
        t = _kl_threshold(h.counts, h.edges)
        out[name] = _with_zero(name, max(lo, -t), min(hi, t)) if t is not None else _with_zero(name, lo, hi)
    return out


def _kl_threshold(counts: np.ndarray, edges: np.ndarray, q_bins: int = KL_QUANTIZED_BINS) -> float | None:
    nb = counts.size
    if nb % 2 or counts.sum() == 0:
        return None
    half = nb // 2
    a = (counts[half:] + counts[:half][::-1]).astype(np.float64)  # |x| histogram over [0, T]
    merge = max(1, half // _KL_ABS_BINS)  # TensorRT's layout: 2048 bins over [0, T]
    if half % merge == 0 and merge > 1:
        a = a.reshape(-1, merge).sum(axis=1)
    else:
        merge = 1
    top = int(np.max(np.nonzero(a)[0])) + 1
    if top <= q_bins:
        return float(edges[half + top * merge])  # all mass within q_bins bins: no clipping helps
    best_kl, best_i = np.inf, top
    stride = max(_KL_STRIDE, (top - q_bins) // _KL_CANDIDATES + 1)
    candidates = list(range(q_bins, top, stride)) + [top]
    for i in candidates:
        p = a[:i].copy()
        p[-1] += a[i:].sum()
        # quantize a[:i] (without the outliers) into q_bins groups, spreading each group's mass over
        # its non-empty bins (TensorRT); the last group takes the remainder when i % q_bins != 0
        width = i // q_bins
        groups = np.minimum(np.arange(i) // width, q_bins - 1)
        nz = a[:i] != 0
        sums = np.bincount(groups, weights=a[:i], minlength=q_bins)
        cnt = np.bincount(groups, weights=nz.astype(np.float64), minlength=q_bins)
        q = np.where(nz, (sums / np.maximum(cnt, 1.0))[groups], 0.0)
        kl = _kl(p, q)
        if kl < best_kl:
            best_kl, best_i = kl, i
    return float(edges[half + best_i * merge])


def _smooth(p: np.ndarray, eps: float = 1e-4) -> np.ndarray | None:
    zeros = p == 0
    n_zero = int(zeros.sum())
    n_nonzero = p.size - n_zero
    if n_nonzero == 0:
        return None
    return p + eps * zeros - (eps * n_zero / n_nonzero) * (~zeros)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    ps, qs = _smooth(p), _smooth(q)
    if ps is None or qs is None:
        return np.inf
    ps = ps / ps.sum()
    qs = qs / qs.sum()
    m = ps > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.sum(ps[m] * np.log(ps[m] / np.maximum(qs[m], 1e-300))))


# ------------------------------------------------------------------------------------------ entry


def activation_ranges(
    stats: ActivationStats,
    calibration: Calibration,
    *,
    int16_tensors: Collection[str] = (),
) -> dict[str, Range]:
    """Per-tensor (low, high) ranges from ``stats`` with the estimator ``calibration.method``.

    Tensors in ``int16_tensors`` get the estimator's int16 range, every other tensor its int8
    range. Results per (method, percentile, bits) are memoized on ``stats``. Raises ValueError
    naming the known estimators when the method is unknown.

    Example:
        >>> ranges = activation_ranges(stats, Calibration(method="mse"), int16_tensors={"s"})  # doctest: +SKIP
    """
    method = calibration.method
    if method not in RANGE_ESTIMATORS and ":" not in method:
        known = ", ".join(RANGE_ESTIMATORS.names())
        raise ValueError(f"unknown calibration method {method!r}; known: {known}")
    ranges = dict(_memoized(stats, calibration, 8))
    wanted16 = [t for t in int16_tensors if t in ranges]
    if wanted16:
        r16 = _memoized(stats, calibration, 16)
        for t in wanted16:
            ranges[t] = r16[t]
    return ranges


def _memoized(stats: ActivationStats, calibration: Calibration, bits: int) -> Mapping[str, Range]:
    key = (calibration.method, calibration.percentile, bits)
    memo = stats.memo
    if key not in memo:
        estimator = RANGE_ESTIMATORS.get(calibration.method, key="calibration.method")
        memo[key] = estimator(stats, calibration, bits=bits)
    return memo[key]


def quantization_mse(x: np.ndarray, lo: float, hi: float, bits: int = 8) -> float:
    """Mean squared error of ORT-style asymmetric ``bits``-bit fake quantization of ``x`` to [lo, hi].

    Scale and zero point as ORT computes them (range widened to contain 0, zero point rounded).
    """
    qmin, qmax = (-128, 127) if bits == 8 else (-32768, 32767)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / (qmax - qmin) if hi > lo else 1.0
    zp = round(qmin - lo / scale)
    q = np.clip(np.rint(x / scale) + zp, qmin, qmax)
    return float(np.mean(((q - zp) * scale - x) ** 2))
