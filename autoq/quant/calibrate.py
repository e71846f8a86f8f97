"""Calibration statistics, computed once per model variant and cached on disk.

Every trial of a study needs activation ranges, but they depend only on the model variant and the
calibration images, never on the trial's precision choices. So `collect_stats` runs the float
model once over the calibration images in ONE ONNX Runtime session whose outputs are every float
activation, and keeps per tensor:

* the exact min and max (what ORT's MinMax calibrator reports), and
* a signed histogram of `HIST_BINS` equal bins over ``[-T, T]`` with ``T = max(|min|, |max|)``,
  i.e. exactly the histogram ORT's Percentile (``symmetric=False``) and Entropy calibrators
  build (``np.histogram(values, bins, range=(-T, T))`` over all calibration values), only with
  4x more bins than ORT's 2048 default: >= 4096 bins over the side of zero that holds the values,
  fine enough for the int16 MSE clip (see `autoq.quant.ranges`).

The histogram range needs the global min/max, so the images are run once and the activations kept
in memory while they fit in `KEEP_BYTES`; a larger model/calibration set runs a second,
histogram-only pass. Either way it is one statistics computation (``CALIBRATION_PASSES`` += 1).
The result is stored as ``stats-<key>.npz`` (format `STATS_FORMAT`; a file of another format is
recomputed) and every later call with the same key loads it. `autoq.quant.ranges.activation_ranges`
turns the statistics into per-tensor ranges.

Example:
    >>> key = stats_key(model.sha256, "letterbox-416-bgr", *calibration_files)   # doctest: +SKIP
    >>> stats = collect_stats(model, batches, cache_dir=Path(".autoq/cache"), key=key)  # doctest: +SKIP
    >>> ranges = activation_ranges(stats, Calibration(method="mse"))  # doctest: +SKIP
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autoq.cache import content_key, write_atomic
from autoq.errors import DataError

if TYPE_CHECKING:
    import onnx

    from autoq.model.graph import LoadedModel

__all__ = [
    "CALIBRATION_PASSES",
    "HIST_BINS",
    "ActivationStats",
    "Histogram",
    "collect_stats",
    "stats_from_arrays",
    "stats_key",
]

#: How many statistics computations ran in this process (a cache hit does not count); tests assert on it.
CALIBRATION_PASSES: int = 0

#: Histogram bins over [-T, T] (ORT's default is 2048; int16 MSE wants finer bins near the clip).
HIST_BINS = 8192

#: Activations kept in memory between the min/max and the histogram step; beyond it, a second pass.
KEEP_BYTES = 512 * 1024 * 1024

# npz layout: "format", "names" (str), "min", "max", "threshold" (float32), "bins" (int64 bins per
# tensor), "counts" (int64, the histograms concatenated in name order). Another format = recompute.
STATS_FORMAT = 2
_FLOAT_TYPES = frozenset({1, 10})  # FLOAT, FLOAT16: what ORT's calibrators calibrate


@dataclass(frozen=True)
class Histogram:
    """Counts of a tensor's values in ``counts.size`` equal bins over ``[-threshold, threshold]``."""

    counts: np.ndarray
    threshold: np.float32

    @cached_property
    def edges(self) -> np.ndarray:
        """Bin edges exactly as ``np.histogram(values, bins, range=(-T, T))`` makes them (float32)."""
        t = np.float32(self.threshold)
        return np.histogram_bin_edges(np.empty(0, np.float32), bins=self.counts.size, range=(-t, t))


@dataclass(frozen=True, eq=False)
class ActivationStats:
    """Per-tensor statistics of every float activation (graph input and outputs included).

    ``minmax`` maps a tensor name to the (min, max) seen over all calibration batches, exactly as
    ONNX Runtime's MinMax calibrator reports it (zero is not yet included; see `activation_ranges`).
    ``histograms`` holds the signed histogram of each tensor (see the module doc); estimators
    other than minmax need it. ``memo`` caches computed ranges (see `activation_ranges`).
    """

    minmax: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    histograms: Mapping[str, Histogram] = field(default_factory=dict)
    memo: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def save(self, path: Path) -> None:
        """Writes the statistics as npz, atomically (parallel workers may share one cache)."""
        names = sorted(self.minmax)
        hists = [self.histograms.get(n) for n in names]
        arrays = {
            "format": np.array(STATS_FORMAT, dtype=np.int64),
            "names": np.array(names, dtype=np.str_),
            "min": np.array([self.minmax[n][0] for n in names], dtype=np.float32),
            "max": np.array([self.minmax[n][1] for n in names], dtype=np.float32),
            "threshold": np.array([h.threshold if h else 0 for h in hists], dtype=np.float32),
            "bins": np.array([h.counts.size if h else 0 for h in hists], dtype=np.int64),
            "counts": np.concatenate([h.counts.astype(np.int64) for h in hists if h] or [np.zeros(0, np.int64)]),
        }
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        write_atomic(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> ActivationStats:
        """Reads a file written by `save`; raises ValueError when it is not one of this format."""
        with np.load(path, allow_pickle=False) as data:
            fmt = int(data["format"]) if "format" in data.files else 0
            if fmt != STATS_FORMAT:
                raise ValueError(f"{path} has statistics format {fmt}, this autoq writes {STATS_FORMAT}")
            names = [str(n) for n in data["names"]]
            lows, highs = data["min"], data["max"]
            thresholds, bins, counts = data["threshold"], data["bins"], data["counts"]
            if not (len(names) == len(lows) == len(highs) == len(thresholds) == len(bins)) or bins.sum() != len(
                counts
            ):
                raise ValueError(f"{path} is inconsistent")
            minmax = {n: (float(lo), float(hi)) for n, lo, hi in zip(names, lows, highs)}
            hists: dict[str, Histogram] = {}
            offset = 0
            for n, t, b in zip(names, thresholds, bins):
                if b:
                    hists[n] = Histogram(counts=counts[offset : offset + b], threshold=np.float32(t))
                    offset += int(b)
            return cls(minmax=minmax, histograms=hists)


def stats_key(model_sha: str, *parts: str) -> str:
    """A short cache key from the model hash and whatever else the statistics depend on.

    Pass the preprocessing/resolution description and the calibration file list as ``parts``.
    The statistics format and histogram size are part of the key.
    """
    return content_key(model_sha, f"stats-v{STATS_FORMAT}-bins{HIST_BINS}", *(str(p) for p in parts))


def collect_stats(
    model: LoadedModel,
    batches: Iterable[np.ndarray],
    *,
    cache_dir: Path | None,
    key: str,
    bins: int = HIST_BINS,
) -> ActivationStats:
    """Min/max and histogram of every float activation over ``batches`` (float32 NCHW).

    Cached as ``stats-<key>.npz`` in ``cache_dir``: with a cache hit nothing runs (``batches`` is
    not iterated). Otherwise the model runs over the batches (``CALIBRATION_PASSES`` counts these
    computations) and the result is written to the cache.
    """
    global CALIBRATION_PASSES

    cache_file = Path(cache_dir) / f"stats-{key}.npz" if cache_dir is not None else None
    if cache_file is not None and cache_file.is_file():
        try:
            return ActivationStats.load(cache_file)
        except Exception:
            pass  # unreadable, stale or old-format cache file: recompute and overwrite it

    stats = _run_calibration(model, batches, bins)
    CALIBRATION_PASSES += 1
    if cache_file is not None:
        stats.save(cache_file)
    return stats


def stats_from_arrays(values: Mapping[str, Iterable[np.ndarray]], *, bins: int = HIST_BINS) -> ActivationStats:
    """Statistics of given arrays (tensor name -> its values per batch); for tests and custom collectors."""
    lists = {n: [np.asarray(a, np.float32) for a in arrs] for n, arrs in values.items()}
    minmax = {n: (float(min(np.nanmin(a) for a in arrs)), float(max(np.nanmax(a) for a in arrs))) for n, arrs in lists.items()}
    acc = _HistAccumulator(minmax, bins)
    for n, arrs in lists.items():
        for a in arrs:
            acc.add(n, a)
    return ActivationStats(minmax=minmax, histograms=acc.result())


# ------------------------------------------------------------------------------------ collection


class _HistAccumulator:
    """Sums per-batch histograms with fixed bins over [-T, T] (T from the global min/max)."""

    def __init__(self, minmax: Mapping[str, tuple[float, float]], bins: int) -> None:
        self.bins = bins
        self.threshold = {
            n: np.float32(max(abs(np.float32(lo)), abs(np.float32(hi)))) for n, (lo, hi) in minmax.items()
        }
        self.counts = {n: np.zeros(bins, np.int64) for n in minmax}

    def add(self, name: str, values: np.ndarray) -> None:
        t = self.threshold[name]
        flat = np.asarray(values).ravel()
        if flat.size:
            hist, _ = np.histogram(flat, self.bins, range=(-t, t))
            self.counts[name] += hist

    def result(self) -> dict[str, Histogram]:
        return {n: Histogram(counts=c, threshold=self.threshold[n]) for n, c in self.counts.items()}


def tensors_to_calibrate(proto: onnx.ModelProto) -> list[str]:
    """Float (non-initializer) inputs/outputs of every node, as ORT's calibrators select them, in graph order."""
    value_infos = {vi.name: vi for vi in proto.graph.value_info}
    value_infos.update({o.name: o for o in proto.graph.output})
    value_infos.update({i.name: i for i in proto.graph.input})
    initializers = {t.name for t in proto.graph.initializer}
    out: dict[str, None] = {}
    for node in proto.graph.node:
        for name in (*node.input, *node.output):
            vi = value_infos.get(name)
            if (
                vi is not None
                and vi.type.HasField("tensor_type")
                and vi.type.tensor_type.elem_type in _FLOAT_TYPES
                and name not in initializers
            ):
                out[name] = None
    return list(out)


def _run_calibration(model: LoadedModel, batches: Iterable[np.ndarray], bins: int) -> ActivationStats:
    import onnx
    import onnxruntime as ort

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    wanted = tensors_to_calibrate(proto)
    inputs = {i.name for i in proto.graph.input}
    existing = {o.name for o in proto.graph.output}
    value_infos = {vi.name: vi for vi in proto.graph.value_info}
    for name in wanted:
        if name not in existing and name not in inputs:
            proto.graph.output.append(value_infos[name])
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    out_names = [o.name for o in session.get_outputs() if o.name in set(wanted)]
    input_name = model.input_name
    feeds = list(_feeds(model, batches))  # the calibration images, float32 (small next to activations)

    lows: dict[str, float] = {}
    highs: dict[str, float] = {}
    kept: list[dict[str, np.ndarray]] | None = []
    kept_bytes = 0

    def observe(name: str, arr: np.ndarray) -> None:
        if arr.size == 0:
            return
        lo, hi = np.nanmin(arr), np.nanmax(arr)
        lows[name] = min(lows.get(name, lo), lo)
        highs[name] = max(highs.get(name, hi), hi)

    def run(feed: np.ndarray) -> dict[str, np.ndarray]:
        result = dict(zip(out_names, session.run(out_names, {input_name: feed})))
        if input_name in wanted:
            result[input_name] = feed
        return result

    for feed in feeds:
        acts = run(feed)
        for name, arr in acts.items():
            observe(name, arr)
        if kept is not None:
            kept_bytes += sum(a.nbytes for a in acts.values())
            if kept_bytes <= KEEP_BYTES:
                kept.append(acts)
            else:
                kept = None  # too big to keep: a second, histogram-only pass follows
    minmax = {n: (float(lows.get(n, 0.0)), float(highs.get(n, 0.0))) for n in wanted if n in lows or n in highs}
    acc = _HistAccumulator({n: (lows[n], highs[n]) for n in minmax}, bins)
    for acts in kept if kept is not None else (run(f) for f in feeds):
        for name, arr in acts.items():
            if name in minmax:
                acc.add(name, arr)
    return ActivationStats(minmax=minmax, histograms=acc.result())


def _feeds(model: LoadedModel, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    expected = model.input_shape
    fixed_batch = bool(expected) and expected[0] == 1
    count = 0
    for batch in batches:
        array = np.ascontiguousarray(batch, dtype=np.float32)
        _check_batch(array, expected, model.path)
        # A model exported with batch 1 gets the images one by one (min/max/histograms do not care).
        pieces = [array[i : i + 1] for i in range(array.shape[0])] if fixed_batch else [array]
        for piece in pieces:
            count += 1
            yield piece
    if count == 0:
        raise DataError(f"no calibration images were given for {model.path}; check the calibration set in autoq.yaml")


def _check_batch(array: np.ndarray, expected: tuple[int | str, ...], path: Path) -> None:
    if not expected:
        return
    ok = array.ndim == len(expected) and all(
        not isinstance(e, int) or i == 0 or e == a for i, (e, a) in enumerate(zip(expected, array.shape))
    )
    if not ok:
        raise DataError(
            f"calibration batch of shape {tuple(array.shape)} does not fit the input {tuple(expected)} of "
            f"{path}; check the input size and preprocessing in autoq.yaml"
        )
