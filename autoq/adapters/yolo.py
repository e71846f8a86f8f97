"""Ultralytics-style heads: ``yolov5`` (also ``yolov7``) and ``yolov8``.

Both decode the tensor the official ONNX export emits (boxes already decoded to network-input
pixels, scores already sigmoided), then select, NMS and keep the top ``max_detections``.

Defaults are the original repositories' COCO evaluation settings:

- YOLOv5 ``val.py``: ``conf_thres=0.001``, ``iou_thres=0.6``, ``max_det=300`` and
  ``non_max_suppression(..., multi_label=True, agnostic=single_cls)``. YOLOv7's ``test.py`` uses
  ``conf_thres=0.001, iou_thres=0.65``; set ``nms_iou: 0.65`` to match it exactly.
- Ultralytics YOLOv8 ``cfg/default.yaml``: ``conf`` 0.001 for val, ``iou: 0.7``, ``max_det: 300``, and
  ``DetectionValidator.postprocess`` runs NMS with ``multi_label=True``.

Both keep a (box, class) candidate when its score is strictly above ``score_threshold`` (as the
originals do) and keep at most 30000 candidates before NMS (their ``max_nms``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from autoq.adapters import ADAPTERS
from autoq.adapters._common import DecoderBase, postprocess, to_xyxy
from autoq.adapters.base import Detections, ImageMeta
from autoq.errors import ConfigError

__all__ = ["Yolov5Adapter", "Yolov8Adapter"]


@ADAPTERS.register("yolov5")
@ADAPTERS.register("yolov7")
class Yolov5Adapter(DecoderBase):
    """YOLOv5 / YOLOv7 export: one tensor [B, N, 5 + C] = cx, cy, w, h (network pixels), objectness, C class scores.

    Score of a (box, class) = objectness * class score.

    Args:
        num_classes: C; None infers it from the output (last dim - 5).
        score_threshold: keep candidates with score > this (YOLOv5 val ``conf_thres`` 0.001).
        nms_iou: IoU above which a lower-scored box of the same class is suppressed (``iou_thres`` 0.6);
            None: no NMS.
        max_detections: per image after NMS (``max_det`` 300); <= 0: no limit.
        class_agnostic: one NMS over all classes (YOLOv5 ``--single-cls`` / ``agnostic``).
        multi_label: a candidate for every class above the threshold (YOLOv5 val) instead of only the best.
        output: index or name of the model output holding the tensor.
        input_size: network input (h, w); set by the pipeline, unused by the decoding.

    Example:
        >>> adapter = Yolov5Adapter(num_classes=80)
        >>> detections = adapter([raw], metas)  # doctest: +SKIP
    """

    name = "yolov5"

    def __init__(
        self,
        *,
        num_classes: int | None = None,
        score_threshold: float = 0.001,
        nms_iou: float | None = 0.6,
        max_detections: int = 300,
        class_agnostic: bool = False,
        multi_label: bool = True,
        output: int | str = 0,
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
        self.output = output

    def _raw(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        raw = self._output(outputs, self.output, "output")
        c = self.num_classes
        if raw.ndim != 3 or raw.shape[-1] < 6 or (c is not None and raw.shape[-1] != 5 + c):
            want = f"5+C with C=num_classes={c}" if c is not None else "5+C"
            raise ConfigError(
                f"adapter {self.name} expects [B, N, {want}] (cx, cy, w, h, objectness, classes), "
                f"got shape {list(raw.shape)}; check model.adapter_options (num_classes, output)"
            )
        return raw

    def __call__(self, outputs: Sequence[np.ndarray], metas: Sequence[ImageMeta]) -> list[Detections]:
        raw = self._raw(outputs)
        self._check_batch(raw.shape[0], metas)
        result = []
        for pred, meta in zip(raw, metas):
            pred = pred[pred[:, 4] > self.score_threshold]  # objectness first, as YOLOv5 does
            scores = pred[:, 4:5] * pred[:, 5:]
            result.append(postprocess(to_xyxy(pred[:, :4], "cxcywh"), scores, meta, **self._nms_kwargs()))
        return result


@ADAPTERS.register("yolov8")
class Yolov8Adapter(DecoderBase):
    """Ultralytics YOLOv8 (and v9/v11 detect heads) export: [B, 4 + C, N] = cx, cy, w, h, C class scores.

    No objectness: the score of a (box, class) is the class score.

    Args:
        num_classes: C; None infers it from the output (channels - 4; an output with more channels
            than anchors is then refused as probably transposed).
        transposed: the output is [B, N, 4 + C] (anchors first, e.g. after a Transpose added for an NPU).
        score_threshold: keep candidates with class score > this (val ``conf`` 0.001).
        nms_iou: IoU threshold of the NMS (``iou`` 0.7); None: no NMS.
        max_detections: per image after NMS (``max_det`` 300); <= 0: no limit.
        class_agnostic: one NMS over all classes (``agnostic_nms``).
        multi_label: a candidate for every class above the threshold (Ultralytics val) instead of only the best.
        output: index or name of the model output holding the tensor.
        input_size: network input (h, w); set by the pipeline, unused by the decoding.

    Example:
        >>> adapter = Yolov8Adapter(num_classes=80, transposed=True)
    """

    name = "yolov8"

    def __init__(
        self,
        *,
        num_classes: int | None = None,
        transposed: bool = False,
        score_threshold: float = 0.001,
        nms_iou: float | None = 0.7,
        max_detections: int = 300,
        class_agnostic: bool = False,
        multi_label: bool = True,
        output: int | str = 0,
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
        self.transposed = bool(transposed)
        self.output = output

    def _raw(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        """[B, N, 4 + C] whatever the layout."""
        raw = self._output(outputs, self.output, "output")
        c = self.num_classes
        ch = raw.shape[-1] if self.transposed else (raw.shape[1] if raw.ndim == 3 else -1)
        if raw.ndim != 3 or ch < 5 or (c is not None and ch != 4 + c):
            layout = "[B, N, 4+C]" if self.transposed else "[B, 4+C, N]"
            hint = "" if self.transposed else " (anchors first? set transposed: true)"
            raise ConfigError(
                f"adapter {self.name} expects {layout} with C={c if c is not None else 'num_classes'}, "
                f"got shape {list(raw.shape)}{hint}; check model.adapter_options"
            )
        if not self.transposed and c is None and raw.shape[1] > raw.shape[2]:
            raise ConfigError(
                f"adapter {self.name}: output {list(raw.shape)} has more channels than anchors, so it is likely "
                "[B, N, 4+C]: set transposed: true (or num_classes, to confirm [B, 4+C, N])"
            )
        return raw if self.transposed else raw.transpose(0, 2, 1)

    def __call__(self, outputs: Sequence[np.ndarray], metas: Sequence[ImageMeta]) -> list[Detections]:
        raw = self._raw(outputs)
        self._check_batch(raw.shape[0], metas)
        return [
            postprocess(to_xyxy(pred[:, :4], "cxcywh"), pred[:, 4:], meta, **self._nms_kwargs())
            for pred, meta in zip(raw, metas)
        ]
