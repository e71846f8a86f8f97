"""ONNX Runtime session settings chosen by measurement, once per project.

`tune_session` times a few candidate settings on the float model over a handful of cached
evaluation images (intra-op threads 1 / 2 / every usable core, graph optimization ``all`` vs
``basic``, and batch size 1 vs 4 vs 8 when the model's batch dimension is symbolic) and returns
the fastest as a `SessionSettings`; the choice and the timings are cached in
``<cache_dir>/session-<key>.json`` so a restarted study does not measure again.
`session_options` turns settings into one shared ``SessionOptions`` object (created once per
distinct settings). This module is the only place autoq translates its session choices into ORT's.

Measured (ORT 1.31.1, 2 cores): on yolox_nano (fixed batch 1) a quiet machine picks ``threads=2
opt=all`` (9.1 ms/img vs 14.3 with one thread, 14.3 / 22.2 with ``basic``); with the cores busy
with other work one thread won (16.1 vs 40.4 ms/img: ORT's spinning thread pool), which is why
this is measured per machine rather than fixed. The demo detector is small enough that one
thread wins either way, leaving the other core to score batches as they finish.

Example:
    >>> settings = tune_session(model_bytes, images[:8], pp, cache_dir=Path(".autoq/cache"), key=sha)  # doctest: +SKIP
    >>> session = create_session(qdq_bytes, settings=settings)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnxruntime

    from autoq.data.preprocess import Preprocess

__all__ = ["GRAPH_OPTIMIZATIONS", "SessionSettings", "session_options", "tune_session", "usable_cores"]

#: autoq's names for ORT's GraphOptimizationLevel values.
GRAPH_OPTIMIZATIONS = ("disabled", "basic", "extended", "all")
_FORMAT = 1


@dataclass(frozen=True)
class SessionSettings:
    """How trial sessions run: ``intra_op_threads`` (0 = every core), graph optimization, batch size."""

    intra_op_threads: int = 0
    graph_optimization: str = "all"
    batch_size: int = 1

    def __post_init__(self) -> None:
        if self.graph_optimization not in GRAPH_OPTIMIZATIONS:
            raise ValueError(f"graph_optimization must be one of {GRAPH_OPTIMIZATIONS}, not {self.graph_optimization!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {self.batch_size}")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells, else the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=16)
def session_options(settings: SessionSettings = SessionSettings()) -> onnxruntime.SessionOptions:
    """The (shared, created once) ORT SessionOptions for ``settings``."""
    import onnxruntime as ort

    levels = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = settings.intra_op_threads if settings.intra_op_threads > 0 else usable_cores()
    opts.graph_optimization_level = levels[settings.graph_optimization]
    opts.log_severity_level = 3
    # ORT's WeightBiasQuantization (level 1) gives a float-weight Conv/Gemm between a DQ and a Q
    # int8 weights. That Conv is a node the config keeps float (on the device's CPU); quantizing
    # its weights here made the integer path 7 points worse than fake-quant on a YOLOX-nano trial.
    opts.add_session_config_entry("optimization.disable_specified_optimizers", "WeightBiasQuantization")
    return opts


def candidates(symbolic_batch: bool, images: int) -> list[SessionSettings]:
    """The settings `tune_session` measures."""
    threads = sorted({1, 2, usable_cores()})
    batches = [b for b in ((1, 4, 8) if symbolic_batch else (1,)) if b <= max(1, images)]
    return [
        SessionSettings(intra_op_threads=t, graph_optimization=g, batch_size=b)
        for t in threads
        for g in ("all", "basic")
        for b in batches
    ]


def tune_session(
    model: bytes,
    images: np.ndarray,
    pp: Preprocess,
    *,
    cache_dir: Path | None,
    key: str,
    repeats: int = 2,
    log=lambda _msg: None,
) -> SessionSettings:
    """The fastest of `candidates` for ``model`` over ``images`` (uint8 NHWC), cached by ``key``.

    Each candidate: one session, one warm-up batch, then the best of ``repeats`` timed passes over
    ``images``. The cache file also records every candidate's seconds per image.
    """
    import onnxruntime as ort

    from autoq.objectives.accuracy import create_session, run_model

    path = Path(cache_dir) / f"session-{key}.json" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            data = json.loads(path.read_text())
            if data.get("format") == _FORMAT:
                return SessionSettings(**data["best"])
        except Exception:
            pass  # unreadable: measure again
    probe = create_session(model)
    shape = probe.get_inputs()[0].shape
    symbolic = bool(shape) and not (isinstance(shape[0], int) and shape[0] > 0)
    del probe
    timings: list[tuple[float, SessionSettings]] = []
    for cand in candidates(symbolic, len(images)):
        session = create_session(model, settings=cand)
        run_model(session, images[: cand.batch_size], pp, batch_size=cand.batch_size)  # warm-up
        best = float("inf")
        for _ in range(max(1, repeats)):
            t = time.perf_counter()
            run_model(session, images, pp, batch_size=cand.batch_size)
            best = min(best, time.perf_counter() - t)
        timings.append((best / max(1, len(images)), cand))
        del session
    per_image, winner = min(timings, key=lambda x: x[0])
    log(
        "session settings: "
        + ", ".join(f"{_label(c)} {s * 1000:.1f} ms/img" for s, c in timings)
        + f" -> {_label(winner)}"
    )
    if path is not None:
        record: dict[str, Any] = {
            "format": _FORMAT,
            "best": asdict(winner),
            "ms_per_image": {_label(c): round(s * 1000, 3) for s, c in timings},
            "onnxruntime": ort.__version__,
            "cpu_count": os.cpu_count(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, path)
    return winner


def _label(s: SessionSettings) -> str:
    return f"threads={s.intra_op_threads} opt={s.graph_optimization} batch={s.batch_size}"
