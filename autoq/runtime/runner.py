"""The one way autoq runs a model over cached images: `run_model` (a whole pass) and `stream_model`
(the same pass on a background thread, batches consumed as they finish). Every caller that needs a
model's raw outputs (the float baseline, trials, sensitivity, diagnose, the cosine reference, session
tuning) goes through here, so batching, fixed-batch padding and preprocessing are written once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from autoq.data.preprocess import Preprocess, to_input
from autoq.runtime.session import SessionSettings, create_session
from autoq.runtime.stream import StreamedOutputs

if TYPE_CHECKING:
    import onnxruntime

__all__ = ["run_model", "stream_model"]


def run_model(
    session_or_bytes: onnxruntime.InferenceSession | bytes,
    eval_images: np.ndarray,
    pp: Preprocess,
    *,
    batch_size: int = 1,
    input_name: str | None = None,
    settings: SessionSettings | None = None,
) -> list[list[np.ndarray]]:
    """One ORT pass over cached uint8 NHWC images; returns the raw outputs of each batch.

    A model with a fixed batch dimension runs at that batch size (the last batch is padded with
    copies of its last image and the padding trimmed from the outputs).
    """
    session = create_session(session_or_bytes, settings=settings) if isinstance(session_or_bytes, (bytes, bytearray)) else session_or_bytes
    return list(_batches(session, eval_images, pp, batch_size, input_name))


def stream_model(
    session: onnxruntime.InferenceSession,
    eval_images: np.ndarray,
    pp: Preprocess,
    *,
    batch_size: int = 1,
    background: bool = True,
) -> StreamedOutputs:
    """`run_model` on a background thread: the batches are scored while the next ones run
    (``background=False``: the whole pass first, for sessions that use every core)."""
    size = _batch_size(session, None, batch_size)[1]
    batches = _batches(session, eval_images, pp, batch_size, None)
    return StreamedOutputs(batches, -(-len(eval_images) // size), background=background)


def _batch_size(session: onnxruntime.InferenceSession, input_name: str | None, batch_size: int) -> tuple[str, int, int]:
    """(input name, batch size run, the model's fixed batch dim or 0)."""
    inputs = session.get_inputs()
    meta = next((i for i in inputs if i.name == input_name), inputs[0]) if input_name else inputs[0]
    fixed = meta.shape[0] if meta.shape and isinstance(meta.shape[0], int) and meta.shape[0] > 0 else 0
    return meta.name, fixed or max(1, int(batch_size)), fixed


def _batches(
    session: onnxruntime.InferenceSession, eval_images: np.ndarray, pp: Preprocess, batch_size: int, input_name: str | None
) -> Iterator[list[np.ndarray]]:
    name, batch_size, fixed = _batch_size(session, input_name, batch_size)
    for start in range(0, len(eval_images), batch_size):
        batch = eval_images[start : start + batch_size]
        real = len(batch)
        if fixed and real < fixed:
            batch = np.concatenate([batch, np.repeat(batch[-1:], fixed - real, axis=0)])
        result = session.run(None, {name: to_input(batch, pp)})
        if real < len(batch):
            result = [np.asarray(r)[:real] for r in result]
        yield result
