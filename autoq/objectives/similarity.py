"""How close a quantized model's raw outputs are to the float model's, output by output.

Per output tensor, each image's values are flattened and compared with the float model's:

- ``cosine``: cosine similarity (1 = same direction), mean over images; two all-zero vectors count as 1.
- ``l1``: mean absolute difference, mean over images.
- ``l2``: root-mean-square difference, mean over images.
- ``chebyshev``: largest absolute difference, max over images.

Needs no labels and no adapter, so it applies to any model. `CosineReference` keeps the float
outputs of the first K evaluation images whose outputs fit in ``budget_bytes`` (default 32 MB) to
log every trial's per-output cosine (MLflow ``cos/<output>``) at a bounded memory cost.

Example:
    >>> import numpy as np
    >>> ref = [[np.ones((2, 3), np.float32)]]
    >>> output_similarity(ref, ref)["cosine"]
    1.0
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_BUDGET_BYTES",
    "MEASURES",
    "CosineReference",
    "mean_cosine",
    "output_similarity",
    "norms",
    "per_image_cosine",
    "similarity_per_output",
    "stack_images",
]

MEASURES = ("cosine", "l1", "l2", "chebyshev")
DEFAULT_BUDGET_BYTES = 32 * 1024 * 1024

Outputs = Sequence[Sequence[np.ndarray]]  # per batch, per model output, [B, ...]


def per_image_cosine(ref: np.ndarray, got: np.ndarray, *, ref_norms: np.ndarray | None = None) -> np.ndarray:
    """Cosine similarity per leading index (image) of two equally shaped arrays (sums in float64);
    two all-zero vectors count as 1. ``ref_norms``: `norms` of ``ref``, when already known."""
    a = np.asarray(ref).reshape(ref.shape[0], -1)
    b = np.asarray(got).reshape(got.shape[0], -1)
    dot = np.einsum("ij,ij->i", a, b, dtype=np.float64)
    na = norms(a) if ref_norms is None else ref_norms
    nb = norms(b)
    denom = na * nb
    safe = np.where(denom > 0, denom, 1.0)
    cos = np.where(denom > 0, dot / safe, np.where((na == 0) & (nb == 0), 1.0, 0.0))
    return np.clip(cos, -1.0, 1.0)


def norms(x: np.ndarray) -> np.ndarray:
    """L2 norm per leading index (image), summed in float64."""
    a = np.asarray(x).reshape(x.shape[0], -1)
    return np.sqrt(np.einsum("ij,ij->i", a, a, dtype=np.float64))


def stack_images(outputs: Outputs, count: int) -> list[np.ndarray]:
    """Per model output, the first ``count`` images of the batched ``outputs`` as one array."""
    if not outputs:
        return []
    n_out = len(outputs[0])
    out: list[np.ndarray] = []
    for k in range(n_out):
        parts, have = [], 0
        for batch in outputs:
            arr = np.asarray(batch[k])
            parts.append(arr)
            have += arr.shape[0] if arr.ndim else 1
            if have >= count:
                break
        joined = np.concatenate([p.reshape(p.shape if p.ndim else (1,)) for p in parts])
        out.append(np.ascontiguousarray(joined[:count], np.float32))
    return out


def _per_image(ref: np.ndarray, got: np.ndarray) -> dict[str, np.ndarray]:
    a = np.asarray(ref, np.float64).reshape(ref.shape[0], -1)
    b = np.asarray(got, np.float64).reshape(got.shape[0], -1)
    diff = a - b
    cos = per_image_cosine(a, b)
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


def mean_cosine(reference: Outputs, outputs: Outputs) -> float:
    """Mean per-image cosine over every output of equal shape (nan when none compare)."""
    n = sum(int(np.asarray(b[0]).shape[0]) for b in reference)
    vals = [per_image_cosine(r, o).mean() for r, o in zip(stack_images(reference, n), stack_images(outputs, n)) if r.shape == o.shape]
    return float(np.mean(vals)) if vals else float("nan")


@dataclass(frozen=True)
class CosineReference:
    """The float model's outputs on the first ``images`` evaluation images, per output name."""

    names: tuple[str, ...]
    reference: tuple[np.ndarray, ...]
    images: int
    total_images: int

    @classmethod
    def from_outputs(
        cls,
        names: Sequence[str],
        float_outputs: Outputs,
        *,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        total_images: int | None = None,
        keep: int | None = None,
    ) -> CosineReference:
        """Keeps the leading images of ``float_outputs`` that fit in ``budget_bytes`` (or ``keep``);
        ``total_images`` is the eval set's size when ``float_outputs`` covers only its start."""
        have = sum(int(np.asarray(b[0]).shape[0]) for b in float_outputs) if float_outputs else 0
        if keep is None:
            first = [np.asarray(a) for a in float_outputs[0]] if float_outputs else []
            per_image = sum(a.nbytes // max(a.shape[0], 1) for a in first if a.ndim) or 1
            keep = max(1, min(have, budget_bytes // per_image)) if have else 0
        total = have if total_images is None else total_images
        return cls(tuple(names), tuple(stack_images(float_outputs, keep)), keep, total)

    @functools.cached_property
    def _norms(self) -> tuple[np.ndarray, ...]:  # the reference's own norms: the same for every trial
        return tuple(norms(r) if r.ndim else np.zeros(0) for r in self.reference)

    def cosines(self, outputs: Outputs) -> dict[str, float]:
        """``{output name: mean cosine}`` of a trial's raw outputs over the kept images (nan on a shape mismatch).

        Batch by batch against the kept reference (no copy of the trial's outputs)."""
        if not self.images or not outputs:
            return {}
        result: dict[str, float] = {}
        for k, (name, ref) in enumerate(zip(self.names, self.reference)):
            parts, start = [], 0
            for batch in outputs:
                if start >= self.images or ref.ndim == 0 or k >= len(batch):
                    break
                arr = np.asarray(batch[k])
                n = min(arr.shape[0] if arr.ndim else 0, self.images - start)
                if arr.shape[1:] != ref.shape[1:] or n == 0:
                    break
                got = np.asarray(arr[:n], np.float32)
                parts.append(per_image_cosine(ref[start:start + n], got, ref_norms=self._norms[k][start:start + n]))
                start += n
            result[name] = float(np.concatenate(parts).mean()) if start == self.images else float("nan")
        return result
