"""`tune_session`: the fastest ORT session settings for this machine, measured once per project."""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autoq.cache import read_json, try_write_json
from autoq.runtime.runner import run_model
from autoq.runtime.session import SessionSettings, create_session, usable_cores

if TYPE_CHECKING:
    from autoq.data.preprocess import Preprocess

__all__ = ["candidates", "tune_session"]

_FORMAT = 1


def candidates(symbolic_batch: bool, images: int) -> list[SessionSettings]:
    """The settings `tune_session` measures."""
    threads = sorted({t for t in (1, 2, usable_cores()) if t <= usable_cores()})  # a pinned worker: its cores
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

    path = Path(cache_dir) / f"session-{key}.json" if cache_dir is not None else None
    data = read_json(path) if path is not None else None
    if isinstance(data, dict) and data.get("format") == _FORMAT:
        try:
            return SessionSettings(**data["best"])
        except (KeyError, TypeError, ValueError):
            pass  # another version's fields: measure again
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
        try_write_json(path, record)
    return winner


def _label(s: SessionSettings) -> str:
    return f"threads={s.intra_op_threads} opt={s.graph_optimization} batch={s.batch_size}"
