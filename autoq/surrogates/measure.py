"""Measured latency on this machine: median of timed ONNX Runtime runs of a (QDQ) model.

Used by the ``ort-cpu`` target in ``mode: measured`` (``Project.latency``) and by the cost-model
benchmark. Warm-up runs are excluded; the thread count is fixed so numbers are comparable.

Example:
    >>> m = measure_latency(proto.SerializeToString(), runs=10, threads=1)   # doctest: +SKIP
    >>> m.median_ms, m.times_ms                                              # doctest: +SKIP
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Measured", "measure_latency", "measure_many"]


@dataclass(frozen=True)
class Measured:
    """Timed runs of one model (ms), warm-up excluded."""

    median_ms: float
    times_ms: tuple[float, ...]
    threads: int
    input_shape: tuple[int, ...]


def measure_latency(
    model: bytes,
    *,
    input_shape: Sequence[int] | None = None,
    runs: int = 10,
    warmup: int = 2,
    threads: int = 1,
    seed: int = 0,
) -> Measured:
    """Times ``runs`` inferences of ``model`` (serialized ONNX) on the CPU and returns the median.

    ``input_shape`` fills symbolic/unknown input dims (default: the declared shape, 1 for
    symbolic dims). The input is random uniform data in the model's float range (timings of
    these convolutional graphs do not depend on the values). One session, ``threads`` intra-op
    threads, sequential execution, full graph optimizations.
    """
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    if input_shape is None:
        input_shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    shape = tuple(int(d) for d in input_shape)
    dtype = np.float16 if "float16" in inp.type else np.float32
    x = np.random.default_rng(seed).uniform(0, 255, size=shape).astype(dtype)
    feed = {inp.name: x}
    for _ in range(max(0, warmup)):
        sess.run(None, feed)
    times = []
    for _ in range(max(1, runs)):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t) * 1e3)
    return Measured(statistics.median(times), tuple(times), int(threads), shape)


def measure_many(
    models: Sequence[bytes],
    input_shapes: Sequence[Sequence[int]],
    *,
    runs: int = 10,
    warmup: int = 2,
    threads: int = 1,
    seed: int = 0,
) -> list[Measured]:
    """Like `measure_latency` for several models, interleaved: round k runs every model once.

    On a shared machine a burst of load then hits every model alike instead of a few, which keeps
    the ranking between models stable (the median per model is taken over the rounds).
    """
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    rng = np.random.default_rng(seed)
    sessions = []
    for model, shape in zip(models, input_shapes):
        sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        x = rng.uniform(0, 255, size=tuple(int(d) for d in shape)).astype(np.float32)
        sessions.append((sess, {inp.name: x}, tuple(int(d) for d in shape)))
    for sess, feed, _ in sessions:
        for _ in range(max(0, warmup)):
            sess.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(max(1, runs)):
        for k, (sess, feed, _) in enumerate(sessions):
            t = time.perf_counter()
            sess.run(None, feed)
            times[k].append((time.perf_counter() - t) * 1e3)
    return [Measured(statistics.median(ts), tuple(ts), int(threads), s) for ts, (_, _, s) in zip(times, sessions)]
