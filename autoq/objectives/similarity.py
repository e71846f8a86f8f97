"""How close a quantized model's raw outputs are to the float model's, output by output.

Per output tensor, each image's values are flattened and compared with the float model's:

- ``cosine``: cosine similarity (1 = same direction), mean over images; two all-zero vectors count as 1.
- ``l1``: mean absolute difference, mean over images.
- ``l2``: root-mean-square difference, mean over images.
- ``chebyshev``: largest absolute difference, max over images.

Needs no labels and no adapter, so it applies to any model.

Example:
    >>> import numpy as np
    >>> ref = [[np.ones((2, 3), np.float32)]]
    >>> output_similarity(ref, ref)["cosine"]
    1.0
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["MEASURES", "output_similarity", "similarity_per_output"]

MEASURES = ("cosine", "l1", "l2", "chebyshev")

Outputs = Sequence[Sequence[np.ndarray]]  # per batch, per model output, [B, ...]


def _per_image(ref: np.ndarray, got: np.ndarray) -> dict[str, np.ndarray]:
    a = np.asarray(ref, np.float64).reshape(ref.shape[0], -1)
    b = np.asarray(got, np.float64).reshape(got.shape[0], -1)
    diff = a - b
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = (a * b).sum(axis=1)
    denom = na * nb
    cos = np.where(denom > 0, dot / np.where(denom > 0, denom, 1.0), np.where((na == 0) & (nb == 0), 1.0, 0.0))
    cos = np.clip(cos, -1.0, 1.0)  # rounding can give 1 + 1e-16 for identical outputs
    n = max(a.shape[1], 1)
    return {
        "cosine": cos,
        "l1": np.abs(diff).sum(axis=1) / n,
        "l2": np.sqrt((diff * diff).sum(axis=1) / n),
        "chebyshev": np.abs(diff).max(axis=1) if a.shape[1] else np.zeros(a.shape[0]),
    }


def similarity_per_output(reference: Outputs, outputs: Outputs) -> list[dict[str, float]]:
    """One dict of `MEASURES` per model output, comparing ``outputs`` with ``reference`` batch by batch."""
    if len(reference) != len(outputs):
        raise ValueError(f"{len(outputs)} batches of outputs but {len(reference)} reference batches")
    per_output: list[dict[str, list[np.ndarray]]] = []
    for ref_batch, batch in zip(reference, outputs):
        if len(ref_batch) != len(batch):
            raise ValueError(f"{len(batch)} outputs but the reference has {len(ref_batch)}")
        if not per_output:
            per_output = [{m: [] for m in MEASURES} for _ in batch]
        for k, (ref, got) in enumerate(zip(ref_batch, batch)):
            ref, got = np.asarray(ref), np.asarray(got)
            if ref.shape != got.shape:
                raise ValueError(f"output {k}: shape {list(got.shape)} but the reference has {list(ref.shape)}")
            for m, v in _per_image(ref, got).items():
                per_output[k][m].append(v)
    result = []
    for acc in per_output:
        values = {m: np.concatenate(v) if v else np.zeros(0) for m, v in acc.items()}
        result.append(
            {
                m: float(values[m].max() if m == "chebyshev" else values[m].mean()) if values[m].size else float("nan")
                for m in MEASURES
            }
        )
    return result


def output_similarity(reference: Outputs, outputs: Outputs) -> dict[str, float]:
    """Flat metrics: ``cosine``/``l1``/``l2`` mean over outputs, ``chebyshev`` max over outputs, and
    ``<measure>/<output index>`` for each output (MLflow-friendly names)."""
    per = similarity_per_output(reference, outputs)
    if not per:
        return {}
    flat: dict[str, float] = {}
    for m in MEASURES:
        vals = [p[m] for p in per]
        flat[m] = float(max(vals) if m == "chebyshev" else np.mean(vals))
    if len(per) > 1:
        for k, p in enumerate(per):
            flat.update({f"{m}/{k}": v for m, v in p.items()})
    return flat
