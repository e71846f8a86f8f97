"""Head-agnostic decoders: ``boxes_scores`` (separate box and score tensors, before NMS) and
``dets_labels`` (post-NMS outputs as mmdet/mmdeploy export them).

Defaults follow mmdetection's test settings (``score_thr=0.05``, ``nms iou_threshold=0.5``,
``max_per_img=100``, multi-label ``multiclass_nms``) — the common source of such exports; set the
options to your model's own evaluation settings.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from autoq.adapters import ADAPTERS
from autoq.adapters._common import BOX_FORMATS, DecoderBase, postprocess, to_xyxy
from autoq.adapters.base import Detections, ImageMeta
from autoq.adapters.nms import batched_nms
from autoq.errors import ConfigError

__all__ = ["BoxesScoresAdapter", "DetsLabelsAdapter"]


def _scale_normalized(boxes: np.ndarray, size: tuple[int, int] | None, name: str) -> np.ndarray:
    if size is None:
        raise ConfigError(f"adapter {name}: normalized boxes need the network input size; set model.input_size")
    h, w = size
    return boxes * np.array([w, h, w, h], np.float32)


@ADAPTERS.register("boxes_scores")
class BoxesScoresAdapter(DecoderBase):
    """Two outputs: boxes [B, N, 4] (or [B, N, 1, 4]) and class scores [B, N, C].

    Scores [B, C, N] need ``scores_transposed``; [B, N] is one class.

    Args:
        boxes: index or name of the boxes output.
        scores: index or name of the scores output.
        box_format: ``xyxy`` | ``cxcywh`` (centre, size) | ``xywh`` (top-left, size).
        normalized: boxes are in 0..1 of the network input instead of network pixels.
        scores_transposed: scores are [B, C, N].
        sigmoid: scores are logits; apply a sigmoid first.
        background_class: index of a background column to drop (softmax heads such as SSD); None: none.
        num_classes: C (after dropping the background); None: from the output.
        score_threshold: keep (box, class) candidates with score > this (mmdet ``score_thr`` 0.05).
        nms_iou: NMS IoU threshold (mmdet 0.5); None: no NMS.
        max_detections: per image after NMS (mmdet ``max_per_img`` 100); <= 0: no limit.
        class_agnostic: one NMS over all classes.
        multi_label: a candidate per class above the threshold (mmdet) instead of only the best class.
        input_size: network input (h, w); set by the pipeline, needed for ``normalized`` boxes.

    Example:
        >>> adapter = BoxesScoresAdapter(boxes="boxes", scores="scores", box_format="cxcywh", normalized=True)
    """

    name = "boxes_scores"

    def __init__(
        self,
        *,
        boxes: int | str = 0,
        scores: int | str = 1,
        box_format: str = "xyxy",
        normalized: bool = False,
        scores_transposed: bool = False,
        sigmoid: bool = False,
        background_class: int | None = None,
        num_classes: int | None = None,
        score_threshold: float = 0.05,
        nms_iou: float | None = 0.5,
        max_detections: int = 100,
        class_agnostic: bool = False,
        multi_label: bool = True,
        input_size: Sequence[int] | None = None,
    ) -> None:
        self._init_common(
            score_threshold=score_threshold,
            nms_iou=nms_iou,
            max_detections=max_detections,
            class_agnostic=class_agnostic,
            multi_label=multi_label,
            input_size=input_size,
            num_classes=num_classes,
        )
        if box_format not in BOX_FORMATS:
            raise ConfigError(f"{self._where()}: box_format must be one of {list(BOX_FORMATS)}, got {box_format!r}")
        self.boxes = boxes
        self.scores = scores
        self.box_format = box_format
        self.normalized = bool(normalized)
        self.scores_transposed = bool(scores_transposed)
        self.sigmoid = bool(sigmoid)
        self.background_class = background_class

    def decode(self, outputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Raw batch -> (xyxy boxes in network pixels [B, N, 4], class scores [B, N, C])."""
        boxes = self._output(outputs, self.boxes, "boxes")
        scores = self._output(outputs, self.scores, "scores")
        if boxes.ndim == 4 and boxes.shape[2] == 1:
            boxes = boxes[:, :, 0]
        if self.scores_transposed and scores.ndim == 3:
            scores = scores.transpose(0, 2, 1)
        if scores.ndim == 2:  # [B, N]: one class
            scores = scores[..., None]
        if boxes.ndim != 3 or boxes.shape[-1] != 4 or scores.ndim != 3 or scores.shape[:2] != boxes.shape[:2]:
            raise ConfigError(
                f"adapter {self.name}: boxes {list(boxes.shape)} and scores {list(scores.shape)} do not match "
                "[B, N, 4] and [B, N, C]; check model.adapter_options (boxes, scores, scores_transposed)"
            )
        if self.sigmoid:
            scores = 1.0 / (1.0 + np.exp(-scores))
        if self.background_class is not None:
            scores = np.delete(scores, int(self.background_class), axis=-1)
        if self.num_classes is not None and scores.shape[-1] != self.num_classes:
            raise ConfigError(
                f"adapter {self.name}: scores have {scores.shape[-1]} classes but num_classes={self.num_classes}"
            )
        boxes = to_xyxy(boxes, self.box_format)
        if self.normalized:
            boxes = _scale_normalized(boxes, self.input_size, self.name)
        return boxes, scores

    def __call__(self, outputs: Sequence[np.ndarray], metas: Sequence[ImageMeta]) -> list[Detections]:
        boxes, scores = self.decode(outputs)
        self._check_batch(boxes.shape[0], metas)
        return [postprocess(b, s, meta, **self._nms_kwargs()) for b, s, meta in zip(boxes, scores, metas)]


@ADAPTERS.register("dets_labels")
class DetsLabelsAdapter(DecoderBase):
    """Post-NMS outputs (mmdet / mmdeploy end2end): dets [B, N, 5] = x1, y1, x2, y2, score and labels [B, N].

    Rows with score <= 0 or a negative label (padding) are dropped. No NMS by default: the model did it.

    Args:
        dets: index or name of the dets output.
        labels: index or name of the labels output.
        box_format: of the four box values: ``xyxy`` | ``cxcywh`` | ``xywh``.
        normalized: boxes are in 0..1 of the network input.
        score_threshold: keep detections with score > this (0: every real detection; mmdet already applied
            its ``score_thr``).
        nms_iou: None (default): no NMS; a number runs NMS again.
        max_detections: per image, highest scores first (mmdet ``max_per_img`` 100); <= 0: no limit.
        class_agnostic: for the optional NMS.
        input_size: network input (h, w); set by the pipeline, needed for ``normalized`` boxes.

    Example:
        >>> adapter = DetsLabelsAdapter(dets="dets", labels="labels")
    """

    name = "dets_labels"

    def __init__(
        self,
        *,
        dets: int | str = 0,
        labels: int | str = 1,
        box_format: str = "xyxy",
        normalized: bool = False,
        score_threshold: float = 0.0,
        nms_iou: float | None = None,
        max_detections: int = 100,
        class_agnostic: bool = False,
        input_size: Sequence[int] | None = None,
    ) -> None:
        self._init_common(
            score_threshold=score_threshold,
            nms_iou=nms_iou,
            max_detections=max_detections,
            class_agnostic=class_agnostic,
            multi_label=False,
            input_size=input_size,
        )
        if box_format not in BOX_FORMATS:
            raise ConfigError(f"{self._where()}: box_format must be one of {list(BOX_FORMATS)}, got {box_format!r}")
        self.dets = dets
        self.labels = labels
        self.box_format = box_format
        self.normalized = bool(normalized)

    def __call__(self, outputs: Sequence[np.ndarray], metas: Sequence[ImageMeta]) -> list[Detections]:
        dets = self._output(outputs, self.dets, "dets")
        labels = self._output(outputs, self.labels, "labels")
        if labels.ndim == 3 and labels.shape[-1] == 1:
            labels = labels[..., 0]
        if dets.ndim != 3 or dets.shape[-1] != 5 or labels.shape != dets.shape[:2]:
            raise ConfigError(
                f"adapter {self.name}: dets {list(dets.shape)} and labels {list(labels.shape)} do not match "
                "[B, N, 5] and [B, N]; check model.adapter_options (dets, labels)"
            )
        self._check_batch(dets.shape[0], metas)
        boxes = to_xyxy(dets[..., :4], self.box_format)
        if self.normalized:
            boxes = _scale_normalized(boxes, self.input_size, self.name)
        result = []
        for b, d, lab, meta in zip(boxes, dets, labels, metas):
            score = d[:, 4]
            ok = (score > max(self.score_threshold, 0.0)) & (lab >= 0)
            b, score, lab = b[ok], score[ok], lab[ok].astype(np.int64)
            if self.nms_iou is None:
                order = np.argsort(-score, kind="stable")
                keep = order[: self.max_detections] if self.max_detections > 0 else order
            else:
                keep = batched_nms(
                    b, score, lab, self.nms_iou, class_agnostic=self.class_agnostic, max_keep=self.max_detections
                )
            if keep.size == 0:
                result.append(Detections.empty())
                continue
            result.append(Detections(meta.to_original(b[keep]), score[keep].astype(np.float32), lab[keep]))
        return result
