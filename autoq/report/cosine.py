"""Per-output cosine similarity of every trial's raw outputs to the float model's (MLflow ``cos/<output>``).

The float outputs are computed once per project and kept in memory. When all of them fit in
``budget_bytes`` (default 32 MB) every evaluation image is compared; otherwise only the first
``K`` images whose outputs fit (at least one), so a big detector (YOLOX-nano at 416: 1.2 MB of
raw output per image) costs a bounded amount of memory. When the project already holds the full
float outputs (label-free mode, ``cosine`` metric), those are reused.

Cosine is per image (each output tensor flattened), averaged over the compared images; two
all-zero vectors count as 1.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from autoq.pipeline import Project

__all__ = ["DEFAULT_BUDGET_BYTES", "CosineReference", "metric_name", "per_image_cosine"]

DEFAULT_BUDGET_BYTES = 32 * 1024 * 1024

Outputs = Sequence[Sequence[np.ndarray]]


def metric_name(output: str) -> str:
    """An MLflow-safe metric key for output ``output``: ``cos/<output>``."""
    return "cos/" + (re.sub(r"[^A-Za-z0-9_\-. /]", "_", output) or "output")


def per_image_cosine(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Cosine similarity per leading index (image) of two equally shaped arrays."""
    a = np.asarray(ref, np.float32).reshape(ref.shape[0], -1)
    b = np.asarray(got, np.float32).reshape(got.shape[0], -1)
    dot = np.einsum("ij,ij->i", a, b, dtype=np.float64)
    na = np.sqrt(np.einsum("ij,ij->i", a, a, dtype=np.float64))
    nb = np.sqrt(np.einsum("ij,ij->i", b, b, dtype=np.float64))
    denom = na * nb
    safe = np.where(denom > 0, denom, 1.0)
    cos = np.where(denom > 0, dot / safe, np.where((na == 0) & (nb == 0), 1.0, 0.0))
    return np.clip(cos, -1.0, 1.0)


def _stack(outputs: Outputs, count: int) -> list[np.ndarray]:
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


@dataclass(frozen=True)
class CosineReference:
    """The float model's outputs on the first ``images`` evaluation images, per output name."""

    names: tuple[str, ...]
    reference: tuple[np.ndarray, ...]
    images: int
    total_images: int

    @classmethod
    def from_outputs(cls, names: Sequence[str], float_outputs: Outputs, *, budget_bytes: int = DEFAULT_BUDGET_BYTES):
        total = sum(int(np.asarray(b[0]).shape[0]) for b in float_outputs) if float_outputs else 0
        first = [np.asarray(a) for a in float_outputs[0]] if float_outputs else []
        per_image = sum(a.nbytes // max(a.shape[0], 1) for a in first if a.ndim) or 1
        keep = max(1, min(total, budget_bytes // per_image)) if total else 0
        return cls(tuple(names), tuple(_stack(float_outputs, keep)), keep, total)

    @classmethod
    def for_project(cls, project: Project, *, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> CosineReference:
        """Reuses ``project.float_outputs`` when already computed, else runs the float model on as
        many leading eval images as fit in ``budget_bytes`` (one image first to measure the size)."""
        names = project.model.output_names
        if "float_outputs" in project.__dict__:
            return cls.from_outputs(names, project.float_outputs, budget_bytes=budget_bytes)
        from autoq.objectives.accuracy import create_session, run_model

        images = project.eval_set.images
        settings = project.session_settings
        session = create_session(project.model.serialized(), settings=settings)
        probe = run_model(session, images[:1], project.preprocess, batch_size=1, settings=settings)
        per_image = sum(np.asarray(a).nbytes for a in probe[0]) or 1
        keep = max(1, min(len(images), budget_bytes // per_image))
        outs = probe if keep == 1 else run_model(
            session, images[:keep], project.preprocess, batch_size=settings.batch_size, settings=settings
        )
        return cls(tuple(names), tuple(_stack(outs, keep)), keep, len(images))

    def cosines(self, outputs: Outputs) -> dict[str, float]:
        """``{output name: mean cosine}`` of a trial's raw outputs over the kept images (nan on a shape mismatch)."""
        if not self.images or not outputs:
            return {}
        got = _stack(outputs, self.images)
        result: dict[str, float] = {}
        for name, ref, arr in zip(self.names, self.reference, got):
            ok = ref.shape == arr.shape and ref.ndim > 0
            result[name] = float(per_image_cosine(ref, arr).mean()) if ok else float("nan")
        return result
