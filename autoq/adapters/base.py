"""What every adapter returns, and what it receives about each image's preprocessing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class ImageMeta:
    """How an original image was mapped onto the network input.

    Network-input pixel (x, y) corresponds to original pixel ((x - pad_x) / scale_x, (y - pad_y) / scale_y).
    """

    image_id: int
    orig_h: int
    orig_w: int
    scale_x: float
    scale_y: float
    pad_x: float = 0.0
    pad_y: float = 0.0

    def to_original(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Maps network-input xyxy boxes to original-image pixels, clipped to the image."""
        out = np.asarray(boxes_xyxy, dtype=np.float32).copy()
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.scale_x
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / self.scale_y
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, self.orig_w)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, self.orig_h)
        return out


@dataclass(frozen=True)
class Detections:
    """One image's detections: xyxy boxes in original-image pixels, scores, class indices 0..C-1."""

    boxes: np.ndarray  # (N, 4) float32
    scores: np.ndarray  # (N,) float32
    labels: np.ndarray  # (N,) int64

    @staticmethod
    def empty() -> Detections:
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return int(self.scores.shape[0])


class Adapter(Protocol):
    """Turns raw outputs of one batch (each array has the batch dim first) into detections per image."""

    def __call__(self, outputs: Sequence[np.ndarray], metas: Sequence[ImageMeta]) -> list[Detections]: ...
