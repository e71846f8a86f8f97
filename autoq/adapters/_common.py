"""What the built-in decoders share: option checks, output lookup by index or name, score
selection (best class or multi-label) followed by NMS and top-k, box format conversion.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from autoq.adapters.base import Detections, ImageMeta
from autoq.adapters.nms import batched_nms
from autoq.errors import ConfigError

__all__ = ["BOX_FORMATS", "DecoderBase", "postprocess", "to_xyxy"]

BOX_FORMATS = ("xyxy", "cxcywh", "xywh")

# Candidates kept (best scores first) before NMS, as YOLOv5/Ultralytics do (max_nms = 30000):
# bounds the NMS cost when a quantized model emits thousands of low-score boxes.
MAX_CANDIDATES = 30000


def to_xyxy(boxes: np.ndarray, fmt: str) -> np.ndarray:
    """[..., 4] boxes in ``xyxy`` | ``cxcywh`` (centre, size) | ``xywh`` (top-left, size) -> xyxy."""
    boxes = np.asarray(boxes, np.float32)
    if fmt == "xyxy":
        return boxes
    if fmt == "cxcywh":
        half = boxes[..., 2:4] * 0.5
        return np.concatenate([boxes[..., 0:2] - half, boxes[..., 0:2] + half], axis=-1)
    if fmt == "xywh":
        return np.concatenate([boxes[..., 0:2], boxes[..., 0:2] + boxes[..., 2:4]], axis=-1)
    raise ConfigError(f"box format must be one of {BOX_FORMATS}, got {fmt!r}")


def postprocess(
    boxes: np.ndarray,
    scores: np.ndarray,
    meta: ImageMeta,
    *,
    score_threshold: float,
    nms_iou: float | None,
    max_detections: int,
    class_agnostic: bool = False,
    multi_label: bool = False,
) -> Detections:
    """One image: xyxy network-pixel ``boxes`` [N, 4] and class ``scores`` [N, C] -> Detections.

    ``multi_label`` makes a candidate of every (box, class) pair above the threshold (YOLOv5 /
    Ultralytics validation, mmdet); otherwise each box keeps only its best class. ``nms_iou``
    None skips NMS (outputs that are already suppressed); ``max_detections`` <= 0 keeps all.
    """
    if multi_label:
        idx, labels = np.nonzero(scores > score_threshold)
        conf = scores[idx, labels]
    else:
        labels = scores.argmax(axis=1) if scores.shape[1] else np.zeros(scores.shape[0], np.int64)
        conf = scores[np.arange(scores.shape[0]), labels] if scores.shape[1] else np.zeros(0, np.float32)
        idx = np.nonzero(conf > score_threshold)[0]
        labels, conf = labels[idx], conf[idx]
    if idx.size == 0:
        return Detections.empty()
    if idx.size > MAX_CANDIDATES:
        top = np.argpartition(-conf, MAX_CANDIDATES)[:MAX_CANDIDATES]
        idx, labels, conf = idx[top], labels[top], conf[top]
    b = boxes[idx]
    if nms_iou is None:
        keep = np.argsort(-conf, kind="stable")
        if max_detections > 0:
            keep = keep[:max_detections]
    else:
        keep = batched_nms(b, conf, labels, nms_iou, class_agnostic=class_agnostic, max_keep=max_detections)
    return Detections(
        boxes=meta.to_original(b[keep]),
        scores=conf[keep].astype(np.float32),
        labels=labels[keep].astype(np.int64),
    )


class DecoderBase:
    """Common options and hooks of the built-in decoders (see `autoq.adapters`).

    Subclasses set ``name`` and call `_init_common` from their keyword-only constructor.
    """

    name = "decoder"

    def _init_common(
        self,
        *,
        score_threshold: float,
        nms_iou: float | None,
        max_detections: int,
        class_agnostic: bool,
        multi_label: bool,
        input_size: Sequence[int] | None,
        num_classes: int | None = None,
    ) -> None:
        where = self._where()
        if isinstance(score_threshold, bool) or not isinstance(score_threshold, (int, float)):
            raise ConfigError(f"{where}: score_threshold must be a number, got {score_threshold!r}")
        if nms_iou is not None and not 0.0 <= float(nms_iou) <= 1.0:
            raise ConfigError(f"{where}: nms_iou must be within [0, 1] (or null: no NMS), got {nms_iou!r}")
        if isinstance(max_detections, bool) or not isinstance(max_detections, int):
            raise ConfigError(f"{where}: max_detections must be an integer (<= 0: no limit), got {max_detections!r}")
        if input_size is not None and len(input_size) != 2:
            raise ConfigError(f"{where}: input_size must be [h, w], got {input_size!r}")
        if num_classes is not None and (
            isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
        ):
            raise ConfigError(
                f"{where}: num_classes must be a positive integer (or null: from the output), got {num_classes!r}"
            )
        self.score_threshold = float(score_threshold)
        self.nms_iou = None if nms_iou is None else float(nms_iou)
        self.max_detections = int(max_detections)
        self.class_agnostic = bool(class_agnostic)
        self.multi_label = bool(multi_label)
        self.input_size = None if input_size is None else (int(input_size[0]), int(input_size[1]))
        self.num_classes = num_classes
        self.output_names: tuple[str, ...] = ()

    def _where(self) -> str:
        return f"model.adapter_options for adapter {self.name}"

    def __repr__(self) -> str:
        items = self.__dict__.items()
        opts = ", ".join(f"{k}={v!r}" for k, v in items if not k.startswith("_") and k != "output_names")
        return f"{type(self).__name__}({opts})"

    def _clone(self, **changes: Any):
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.__dict__.update(changes)
        return clone

    def with_input_size(self, size: tuple[int, int]):
        """The same decoder for network input (h, w); returns self when nothing changes."""
        size = (int(size[0]), int(size[1]))
        return self if size == self.input_size else self._clone(input_size=size)

    def with_output_names(self, names: Sequence[str]):
        """The same decoder knowing the model's output names (for outputs chosen by name)."""
        names = tuple(str(n) for n in names)
        return self if names == self.output_names else self._clone(output_names=names)

    def _output(self, outputs: Sequence[np.ndarray], which: int | str, option: str) -> np.ndarray:
        """The output chosen by index or name (``option`` names the adapter option for errors)."""
        if isinstance(which, str):
            if which not in self.output_names:
                known = list(self.output_names) or "(unknown: the caller did not pass the model's output names)"
                raise ConfigError(
                    f"{self._where()}: {option}={which!r} is not an output of the model; outputs: {known}"
                )
            which = self.output_names.index(which)
        if not -len(outputs) <= int(which) < len(outputs):
            raise ConfigError(f"{self._where()}: {option}={which} but the model has {len(outputs)} output(s)")
        return np.asarray(outputs[int(which)], dtype=np.float32)

    def _check_batch(self, n: int, metas: Sequence[ImageMeta]) -> None:
        if n != len(metas):
            raise ValueError(f"adapter {self.name}: batch of {n} outputs but {len(metas)} image metas")

    def _nms_kwargs(self) -> dict[str, Any]:
        return {
            "score_threshold": self.score_threshold,
            "nms_iou": self.nms_iou,
            "max_detections": self.max_detections,
            "class_agnostic": self.class_agnostic,
            "multi_label": self.multi_label,
        }
