"""Calibration statistics, computed once per model variant and cached on disk.

Every trial of a study needs activation ranges, but they depend only on the model variant and the
calibration images, never on the trial's precision choices. So `collect_stats` runs ONNX Runtime's
MinMax calibrator once, stores the result as ``stats-<key>.npz`` and every later call with the same
key loads the file. `activation_ranges` then turns the statistics into per-tensor ranges with a
named range estimator (a small registry, so percentile/MSE/KL estimators can be added by name).

Example:
    >>> key = stats_key(model.sha256, "letterbox-416-bgr", *calibration_files)   # doctest: +SKIP
    >>> stats = collect_stats(model, batches, cache_dir=Path(".autoq/cache"), key=key)  # doctest: +SKIP
    >>> ranges = activation_ranges(stats, Calibration(method="minmax"))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from autoq.errors import DataError
from autoq.plan import Calibration
from autoq.registry import Registry

if TYPE_CHECKING:
    from autoq.model.graph import LoadedModel

__all__ = [
    "CALIBRATION_PASSES",
    "ActivationStats",
    "RANGE_ESTIMATORS",
    "activation_ranges",
    "collect_stats",
    "stats_key",
]

#: How many real calibration passes ran in this process (a cache hit does not count); tests assert on it.
CALIBRATION_PASSES: int = 0

# Version of the npz layout: "names" (str array), "min", "max" (float32 arrays aligned with names).
# Later statistics (histograms, ...) go under new keys so old files stay readable.
_STATS_FORMAT = 1


@dataclass(frozen=True)
class ActivationStats:
    """Per-tensor statistics of every float activation (graph input and outputs included).

    ``minmax`` maps a tensor name to the (min, max) seen over all calibration batches, exactly as
    ONNX Runtime's MinMax calibrator reports it (zero is not yet included; see `activation_ranges`).
    """

    minmax: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        """Writes the statistics as npz, atomically (parallel workers may share one cache)."""
        names = sorted(self.minmax)
        arrays = {
            "format": np.array(_STATS_FORMAT, dtype=np.int64),
            "names": np.array(names, dtype=np.str_),
            "min": np.array([self.minmax[n][0] for n in names], dtype=np.float32),
            "max": np.array([self.minmax[n][1] for n in names], dtype=np.float32),
        }
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(buffer.getvalue())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> ActivationStats:
        """Reads a file written by `save`; raises ValueError when it is not one."""
        with np.load(path, allow_pickle=False) as data:
            if int(data["format"]) > _STATS_FORMAT:
                raise ValueError(f"{path} was written by a newer autoq (format {int(data['format'])})")
            names = [str(n) for n in data["names"]]
            lows, highs = data["min"], data["max"]
            if not (len(names) == len(lows) == len(highs)):
                raise ValueError(f"{path} is inconsistent")
            return cls(minmax={n: (float(lo), float(hi)) for n, lo, hi in zip(names, lows, highs)})


def stats_key(model_sha: str, *parts: str) -> str:
    """A short cache key from the model hash and whatever else the statistics depend on.

    Pass the preprocessing description and the calibration file list as ``parts``.
    """
    joined = "\x00".join((model_sha, *(str(p) for p in parts)))
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()[:16]


def collect_stats(
    model: LoadedModel,
    batches: Iterable[np.ndarray],
    *,
    cache_dir: Path | None,
    key: str,
) -> ActivationStats:
    """Min/max of every float activation over ``batches`` (float32 NCHW), cached as ``stats-<key>.npz``.

    With a cache hit nothing runs. Otherwise ONNX Runtime's MinMax calibrator runs once over the
    batches (``CALIBRATION_PASSES`` counts these passes) and the result is written to the cache.
    """
    global CALIBRATION_PASSES

    cache_file = Path(cache_dir) / f"stats-{key}.npz" if cache_dir is not None else None
    if cache_file is not None and cache_file.is_file():
        try:
            return ActivationStats.load(cache_file)
        except Exception:
            pass  # unreadable or stale cache file: recompute and overwrite it

    stats = _run_minmax_calibration(model, batches)
    CALIBRATION_PASSES += 1
    if cache_file is not None:
        stats.save(cache_file)
    return stats


def _run_minmax_calibration(model: LoadedModel, batches: Iterable[np.ndarray]) -> ActivationStats:
    import onnx
    from onnxruntime.quantization.calibrate import CalibrationDataReader, CalibrationMethod, create_calibrator

    input_name = model.input_name
    expected = model.input_shape
    fixed_batch = bool(expected) and expected[0] == 1

    def feeds() -> Iterator[dict[str, np.ndarray]]:
        count = 0
        for batch in batches:
            array = np.ascontiguousarray(batch, dtype=np.float32)
            _check_batch(array, expected, model.path)
            # A model exported with batch 1 gets the images one by one (min/max do not care).
            pieces = [array[i : i + 1] for i in range(array.shape[0])] if fixed_batch else [array]
            for piece in pieces:
                count += 1
                yield {input_name: piece}
        if count == 0:
            raise DataError(
                f"no calibration images were given for {model.path}; check the calibration set in autoq.yaml"
            )

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = feeds()

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    with tempfile.TemporaryDirectory(prefix="autoq-calib-") as tmp:
        model_path = Path(tmp) / "model.onnx"
        onnx.save_model(model.proto, str(model_path))
        calibrator = create_calibrator(
            model_path,
            None,  # every float tensor, so any later precision/op choice finds its range
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=CalibrationMethod.MinMax,
        )
        try:
            calibrator.collect_data(_Reader())
            tensors = calibrator.compute_data()
        finally:
            # Release the session before the temp dir goes away (Windows keeps files open).
            calibrator.infer_session = None
    minmax = {
        name: (float(np.asarray(td.range_value[0]).item()), float(np.asarray(td.range_value[1]).item()))
        for name, td in tensors.items()
    }
    return ActivationStats(minmax=minmax)


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


# ------------------------------------------------------------------------------- range estimators

RangeEstimator = Callable[[ActivationStats, Calibration], dict[str, tuple[float, float]]]

#: Range estimators by name (``Calibration.method``); register new ones with
#: ``@RANGE_ESTIMATORS.register("name")`` or name a function as ``package.module:function``.
RANGE_ESTIMATORS: Registry[RangeEstimator] = Registry("range estimator")


def _with_zero(name: str, lo: float, hi: float) -> tuple[float, float]:
    """Quantized zero must be exact (padding, ReLU), so ORT widens every range to contain 0."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise DataError(
            f"calibration gave tensor {name!r} the non-finite range ({lo}, {hi}); check the calibration "
            "images and preprocessing (NaN or inf in the input)"
        )
    return (min(float(lo), 0.0), max(float(hi), 0.0))


@RANGE_ESTIMATORS.register("minmax")
def minmax_ranges(stats: ActivationStats, calibration: Calibration) -> dict[str, tuple[float, float]]:
    """The observed min and max of each tensor, widened to contain zero."""
    return {name: _with_zero(name, lo, hi) for name, (lo, hi) in stats.minmax.items()}


def activation_ranges(stats: ActivationStats, calibration: Calibration) -> dict[str, tuple[float, float]]:
    """Per-tensor (low, high) ranges from ``stats`` with the estimator ``calibration.method``.

    Raises ValueError naming the known estimators when the method is unknown.
    """
    method = calibration.method
    if method not in RANGE_ESTIMATORS and ":" not in method:
        known = ", ".join(RANGE_ESTIMATORS.names())
        raise ValueError(f"unknown calibration method {method!r}; known: {known}")
    estimator = RANGE_ESTIMATORS.get(method, key="calibration.method")
    return estimator(stats, calibration)
