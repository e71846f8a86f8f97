"""Inference on a background thread while the metric scores the batches already done.

A trial is one inference pass followed by scoring (adapter decode, NMS, COCOeval). Run one after the
other, scoring adds 15-25 % to the pass. ORT releases the GIL inside ``session.run``, so a thread
runs the batches while the calling thread scores each finished one: on two cores the scoring hides
behind the inference. `StreamedOutputs` is an ordinary ``Sequence`` of batches whose items block
until that batch is done, so any metric works on it unchanged; a metric that consumes batches in
order (`autoq.objectives.metrics.CocoMap` does) overlaps, one that needs them all just waits.

Overlap only pays when ORT leaves a core free: with as many intra-op threads as cores, the scoring
thread preempts one of ORT's workers and every parallel section waits for it (measured on
YOLOX-nano, 2 threads on 2 cores: the pass 14 % slower, more than the scoring it hid). Then
``background=False`` runs the pass first, with the same interface.
"""

from __future__ import annotations

import operator
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

__all__ = ["PrefixedOutputs", "StreamedOutputs"]

Batch = list[np.ndarray]

# While a stream runs: how soon a thread busy in Python yields the GIL to the inference thread
# returning from ``session.run`` (CPython's default, 5 ms, would idle the inference per batch).
_SWITCH_INTERVAL = 0.0005


class StreamedOutputs(Sequence[Batch]):
    """Batches of raw outputs produced by ``batches`` on a thread; ``outputs[i]`` waits for batch i.

    Use as a context manager: leaving it stops the thread after its current batch (on an error in
    the scoring) and re-raises an inference error. ``seconds`` is the inference thread's wall time.
    """

    def __init__(self, batches: Iterator[Batch], count: int, *, background: bool = True) -> None:
        self._count = count
        self._items: list[Batch] = []
        self._error: BaseException | None = None
        self._done = False
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self.seconds = 0.0
        self._switch = sys.getswitchinterval()
        self._thread: threading.Thread | None = None
        if not background:  # every batch now, on this thread (no free core to overlap with)
            self._run(batches)
            return
        sys.setswitchinterval(min(self._switch, _SWITCH_INTERVAL))
        self._thread = threading.Thread(target=self._run, args=(batches,), name="autoq-inference", daemon=True)
        self._thread.start()

    def _run(self, batches: Iterator[Batch]) -> None:
        start = time.perf_counter()
        try:
            for batch in batches:
                with self._cond:
                    self._items.append(batch)
                    self._cond.notify_all()
                if self._stop.is_set():
                    break
        except BaseException as exc:  # handed to the consumer, raised where it reads
            self._error = exc
        finally:
            self.seconds = time.perf_counter() - start
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _wait_for(self, n: int) -> None:
        with self._cond:
            while len(self._items) < n and not self._done:
                self._cond.wait()
        if len(self._items) < n:
            if self._error is not None:
                raise self._error
            raise RuntimeError(f"inference stopped after {len(self._items)} of {self._count} batches")

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            picked = range(*index.indices(self._count))
            self._wait_for(max(picked, default=-1) + 1)
            return [self._items[i] for i in picked]
        i = operator.index(index)
        i = i + self._count if i < 0 else i
        if not 0 <= i < self._count:
            raise IndexError(f"batch {index} of {self._count}")
        self._wait_for(i + 1)
        return self._items[i]

    def __iter__(self) -> Iterator[Batch]:
        for i in range(self._count):
            yield self[i]

    def finish(self) -> list[Batch]:
        """Every batch (waits for the thread); raises the inference error, if any."""
        self._wait_for(self._count)
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        return list(self._items)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        sys.setswitchinterval(self._switch)

    def __enter__(self) -> StreamedOutputs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PrefixedOutputs(Sequence[Batch]):
    """Batches already computed (``head``, e.g. an early-stop subset's) followed by ``rest`` (a
    `StreamedOutputs` of the remaining images): the whole eval set's outputs, without running the
    head's images again."""

    def __init__(self, head: Sequence[Batch], rest: Sequence[Batch]) -> None:
        self._head, self._rest = list(head), rest

    def __len__(self) -> int:
        return len(self._head) + len(self._rest)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = operator.index(index)
        i = i + len(self) if i < 0 else i
        if not 0 <= i < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        return self._head[i] if i < len(self._head) else self._rest[i - len(self._head)]

    def __iter__(self) -> Iterator[Batch]:
        yield from self._head
        yield from self._rest
