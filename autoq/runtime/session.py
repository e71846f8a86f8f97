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
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnxruntime

__all__ = ["GRAPH_OPTIMIZATIONS", "SessionSettings", "create_session", "session_options", "usable_cores"]

#: autoq's names for ORT's GraphOptimizationLevel values.
GRAPH_OPTIMIZATIONS = ("disabled", "basic", "extended", "all")


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


def create_session(
    model: bytes | str | os.PathLike[str], *, threads: int = 0, settings: SessionSettings | None = None
) -> onnxruntime.InferenceSession:
    """A CPU session with ``settings`` (default: every core, all graph optimizations; see
    `autoq.runtime.tune.tune_session`); ``threads`` > 0 overrides the intra-op thread count."""
    import onnxruntime as ort

    settings = settings or SessionSettings()
    if threads > 0:
        settings = SessionSettings(threads, settings.graph_optimization, settings.batch_size)
    opts = session_options(settings)
    source = bytes(model) if isinstance(model, (bytes, bytearray)) else os.fspath(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
