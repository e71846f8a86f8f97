"""Giving each local worker its own cores (`autoq search --workers K`).

One trial already keeps two cores busy (ORT's intra-op threads, or the inference thread plus the
streamed scoring), so K unpinned workers on a 2-core machine fight over the same cores and the
scheduler migrates their threads: 2 workers measured x0.93-1.00 the trials/hour of one. Split the
process's cores into K disjoint groups, pin worker i to group i (Linux ``sched_setaffinity``) and
let its session use exactly that many intra-op threads: each worker then runs its trials, scoring
included, on its own cores.

Example:
    >>> split_cores(2, [0, 1, 2, 3])
    [(0, 1), (2, 3)]
    >>> split_cores(3, [0, 1])  # fewer cores than workers: no split
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence

__all__ = ["affinity", "format_cores", "parse_cores", "pin_to_cores", "pinned", "split_cores"]


def affinity() -> tuple[int, ...] | None:
    """The cores this process may run on, or None where the OS does not say (not Linux)."""
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except AttributeError:
        return None


def split_cores(workers: int, cores: Iterable[int] | None = None) -> list[tuple[int, ...]] | None:
    """``workers`` disjoint, contiguous groups of ``cores`` (default: this process's), the first groups
    one core larger when they do not divide evenly; None when there are fewer cores than workers
    (or affinity is unknown): the workers then share every core, as before."""
    cores = sorted(set(cores)) if cores is not None else affinity()
    if not cores or workers < 1 or len(cores) < workers:
        return None
    size, extra = divmod(len(cores), workers)
    groups, start = [], 0
    for i in range(workers):
        n = size + (1 if i < extra else 0)
        groups.append(tuple(cores[start : start + n]))
        start += n
    return groups


def format_cores(cores: Sequence[int]) -> str:
    """``(0, 1)`` -> ``"0,1"`` (the form `parse_cores` and ``autoq worker --cores`` read)."""
    return ",".join(str(c) for c in cores)


def parse_cores(text: str) -> tuple[int, ...]:
    """``"0,1"`` or ``"2-3"`` -> core numbers; ValueError on anything else."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"{text!r}: write cores as numbers, e.g. 0,1 or 2-3")
        out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    if not out:
        raise ValueError(f"{text!r}: no cores")
    return tuple(sorted(set(out)))


def pin_to_cores(cores: Sequence[int]) -> bool:
    """Restricts this process to ``cores``: every thread it has (Linux sets affinity per thread, and
    imports such as numpy's BLAS start threads early) and, by inheritance, the ones started later.
    False where the OS cannot (not Linux) or refuses (cores not available to this process)."""
    try:
        os.sched_setaffinity(0, set(cores))
    except (AttributeError, OSError, ValueError):
        return False
    try:
        threads = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        threads = []
    for tid in threads:
        with contextlib.suppress(OSError):  # a thread that has just exited
            os.sched_setaffinity(tid, set(cores))
    return True


@contextlib.contextmanager
def pinned(cores: Sequence[int] | None) -> Iterator[bool]:
    """This process on ``cores`` for the block, its previous affinity restored after (None: no change)."""
    before = affinity()
    ok = bool(cores) and before is not None and pin_to_cores(cores)  # type: ignore[arg-type]
    try:
        yield ok
    finally:
        if ok and before is not None:
            pin_to_cores(before)
