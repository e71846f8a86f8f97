"""Greedy non-maximum suppression in numpy, fast enough to stay out of a trial's time.

One call handles all classes: boxes are shifted by ``label * (max coordinate + 1)`` so boxes of
different classes never overlap (the torchvision ``batched_nms`` trick). The greedy loop stops once
``max_keep`` boxes are kept, which gives the same result as "NMS then top-k" because boxes are
visited in descending score order.
"""

from __future__ import annotations

import numpy as np

__all__ = ["batched_nms", "nms"]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, *, max_keep: int = 0) -> np.ndarray:
    """Indices of the kept boxes (xyxy), highest score first; a box is dropped when IoU > threshold."""
    n = int(scores.shape[0])
    if n == 0:
        return np.zeros(0, np.int64)
    boxes = np.asarray(boxes, np.float64)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1).clip(min=0) * (y2 - y1).clip(min=0)
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep: list[int] = []
    limit = max_keep if max_keep > 0 else n
    while order.size:
        i = int(order[0])
        keep.append(i)
        if len(keep) >= limit or order.size == 1:
            break
        rest = order[1:]
        w = (np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])).clip(min=0)
        h = (np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])).clip(min=0)
        inter = w * h
        union = areas[i] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, np.int64)


def batched_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    iou_threshold: float,
    *,
    class_agnostic: bool = False,
    max_keep: int = 0,
) -> np.ndarray:
    """Per-class NMS (or class-agnostic) in one pass; returns kept indices, highest score first."""
    if scores.shape[0] == 0:
        return np.zeros(0, np.int64)
    boxes = np.asarray(boxes, np.float64)
    if not class_agnostic:
        # shift each class into its own region; coordinates relative to the global min keep offsets exact
        lo = float(boxes.min())
        span = float(boxes.max()) - lo + 1.0
        boxes = (boxes - lo) + (np.asarray(labels, np.float64) * span)[:, None]
    return nms(boxes, scores, iou_threshold, max_keep=max_keep)
