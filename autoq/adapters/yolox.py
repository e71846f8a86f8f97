"""YOLOX head decoder (``yolox``) and the shipped demo detector's adapter (``demo``).

YOLOX exports one tensor [B, N, 5 + C]: per anchor point over strides 8/16/32, grid offsets x, y,
log-sizes w, h, then objectness and C class scores (already sigmoided). Decoding:
``cx = (x + grid_x) * stride``, ``w = exp(w) * stride``, score = objectness * class score, then
per-class NMS and the top ``max_detections`` per image.

The anchor grids depend on the network input (h, w). The accuracy objective passes it through
``with_input_size``; when nobody did, a square input is inferred from N (ConfigError if N fits none).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from autoq.adapters import ADAPTERS
from autoq.adapters.base import Detections, ImageMeta
from autoq.adapters.nms import batched_nms
from autoq.demo.synthetic import CLASSES as DEMO_CLASSES
from autoq.errors import ConfigError

__all__ = ["DemoAdapter", "YoloxAdapter"]


@ADAPTERS.register("yolox")
class YoloxAdapter:
    """Decodes YOLOX outputs into detections in original-image pixels.

    Args:
        num_classes: C in the [B, N, 5 + C] output.
        strides: feature-map strides, in the order the head concatenates them.
        score_threshold: keep boxes with objectness * class score >= this.
        nms_iou: boxes overlapping a better one by IoU > this are suppressed (per class).
        max_detections: per image after NMS (<= 0: no limit).
        class_agnostic: one NMS over all classes instead of per class.
        multi_label: every class above the threshold makes a box (mmdet style) instead of only the
            best class per anchor point (the YOLOX reference evaluation).
        decoded: the graph already decodes boxes (YOLOX export with ``decode_in_inference=True``):
            x, y, w, h are the box centre and size in network-input pixels.
        input_size: network input (h, w); normally set by the caller through `with_input_size`.

    Example:
        >>> adapter = YoloxAdapter(num_classes=80).with_input_size((416, 416))
        >>> detections = adapter([raw_output], metas)  # doctest: +SKIP
    """

    name = "yolox"

    def __init__(
        self,
        *,
        num_classes: int = 80,
        strides: Sequence[int] = (8, 16, 32),
        score_threshold: float = 0.01,
        nms_iou: float = 0.65,
        max_detections: int = 100,
        class_agnostic: bool = False,
        multi_label: bool = False,
        decoded: bool = False,
        input_size: Sequence[int] | None = None,
    ) -> None:
        where = f"model.adapter_options for adapter {self.name}"
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"{where}: num_classes must be a positive integer, got {num_classes!r}")
        strides = tuple(int(s) for s in strides)
        if not strides or min(strides) < 1:
            raise ConfigError(f"{where}: strides must be positive integers, got {strides!r}")
        if not 0.0 <= float(nms_iou) <= 1.0:
            raise ConfigError(f"{where}: nms_iou must be within [0, 1], got {nms_iou!r}")
        if input_size is not None and len(input_size) != 2:
            raise ConfigError(f"{where}: input_size must be [h, w], got {input_size!r}")
        self.num_classes = num_classes
        self.strides = strides
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)
        self.max_detections = int(max_detections)
        self.class_agnostic = bool(class_agnostic)
        self.multi_label = bool(multi_label)
        self.decoded = bool(decoded)
        self.input_size = None if input_size is None else (int(input_size[0]), int(input_size[1]))
        self._grids: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_classes={self.num_classes}, strides={self.strides}, "
            f"score_threshold={self.score_threshold}, nms_iou={self.nms_iou}, "
            f"max_detections={self.max_detections}, class_agnostic={self.class_agnostic}, "
            f"multi_label={self.multi_label}, decoded={self.decoded}, input_size={self.input_size})"
        )

    def with_input_size(self, size: tuple[int, int]) -> YoloxAdapter:
        """The same decoder for network input (h, w); returns self when nothing changes."""
        size = (int(size[0]), int(size[1]))
        if size == self.input_size:
            return self
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.input_size = size
        clone._grids = {}
        return clone

    def _feature_sizes(self, n: int) -> list[tuple[int, int]]:
        if self.input_size is not None:
            h, w = self.input_size
            sizes = [(h // s, w // s) for s in self.strides]
            if sum(a * b for a, b in sizes) != n:
                raise ConfigError(
                    f"adapter {self.name}: output has {n} anchor points but input {h}x{w} with strides "
                    f"{self.strides} gives {sum(a * b for a, b in sizes)}; check model.adapter_options.strides"
                )
            return sizes
        # square input: n = side^2 * sum(1 / s^2)
        side = round(math.sqrt(n / sum(1.0 / (s * s) for s in self.strides)))
        sizes = [(side // s, side // s) for s in self.strides]
        if sum(a * b for a, b in sizes) != n:
            raise ConfigError(
                f"adapter {self.name}: cannot infer the anchor grids from {n} anchor points with strides "
                f"{self.strides} (non-square input?); set model.adapter_options.input_size: [h, w]"
            )
        return sizes

    def grids(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(grid xy [N, 2], stride [N, 1]) for N anchor points, row-major per stride like the YOLOX head."""
        cached = self._grids.get(n)
        if cached is None:
            xy, st = [], []
            for (gh, gw), s in zip(self._feature_sizes(n), self.strides):
                yv, xv = np.meshgrid(np.arange(gh, dtype=np.float32), np.arange(gw, dtype=np.float32), indexing="ij")
                xy.append(np.stack([xv.ravel(), yv.ravel()], axis=1))
                st.append(np.full((gh * gw, 1), s, np.float32))
            cached = (np.concatenate(xy), np.concatenate(st))
            self._grids[n] = cached
        return cached

    def _check(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        raw = np.asarray(outputs[0]) if len(outputs) else np.zeros(0)
        if raw.ndim != 3 or raw.shape[-1] != 5 + self.num_classes:
            raise ConfigError(
                f"adapter {self.name} expects [B, N, 5+C] with C=num_classes={self.num_classes}, "
                f"got shape {list(raw.shape)}; set model.adapter_options.num_classes"
            )
        return raw.astype(np.float32, copy=False)

    def decode(self, outputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Raw batch -> (boxes xyxy in network pixels [B, N, 4], scores obj*cls [B, N, C])."""
        raw = self._check(outputs)
        grid, stride = self.grids(raw.shape[1])
        return self._boxes(raw, grid, stride), raw[..., 4:5] * raw[..., 5:]

    def _boxes(self, pred: np.ndarray, grid: np.ndarray, stride: np.ndarray) -> np.ndarray:
        """xyxy boxes in network pixels from the first four channels of ``pred``."""
        if self.decoded:
            cxy, half = pred[..., 0:2], pred[..., 2:4] * 0.5
        else:
            cxy = (pred[..., 0:2] + grid) * stride
            half = np.exp(pred[..., 2:4]) * (stride * 0.5)
        return np.concatenate([cxy - half, cxy + half], axis=-1)

    def __call__(self, outputs: Sequence[np.ndarray], metas: Sequence[ImageMeta]) -> list[Detections]:
        raw = self._check(outputs)
        if raw.shape[0] != len(metas):
            raise ValueError(f"adapter {self.name}: batch of {raw.shape[0]} outputs but {len(metas)} image metas")
        grid, stride = self.grids(raw.shape[1])
        result: list[Detections] = []
        for b, meta in enumerate(metas):
            pred = raw[b]
            obj = pred[:, 4]
            cls = pred[:, 5:]
            if self.multi_label:
                scores_all = obj[:, None] * cls
                idx, labels = np.nonzero(scores_all >= self.score_threshold)
                scores = scores_all[idx, labels]
            else:
                labels = cls.argmax(axis=1)
                scores = obj * cls[np.arange(cls.shape[0]), labels]
                idx = np.nonzero(scores >= self.score_threshold)[0]
                labels, scores = labels[idx], scores[idx]
            if idx.size == 0:
                result.append(Detections.empty())
                continue
            boxes = self._boxes(pred[idx], grid[idx], stride[idx])
            keep = batched_nms(
                boxes, scores, labels, self.nms_iou, class_agnostic=self.class_agnostic, max_keep=self.max_detections
            )
            result.append(
                Detections(
                    boxes=meta.to_original(boxes[keep]),
                    scores=scores[keep].astype(np.float32),
                    labels=labels[keep].astype(np.int64),
                )
            )
        return result


@ADAPTERS.register("demo")
class DemoAdapter(YoloxAdapter):
    """The shipped demo detector: YOLOX format with the decode in the graph (``decode_in_inference``),
    strides 8/16/32, classes of `autoq.demo.synthetic`."""

    name = "demo"

    def __init__(
        self,
        *,
        num_classes: int | None = None,
        strides: Sequence[int] = (8, 16, 32),
        score_threshold: float = 0.01,
        nms_iou: float = 0.65,
        max_detections: int = 100,
        class_agnostic: bool = False,
        multi_label: bool = False,
        decoded: bool = True,
        input_size: Sequence[int] | None = None,
    ) -> None:
        super().__init__(
            num_classes=len(DEMO_CLASSES) if num_classes is None else num_classes,
            strides=strides,
            score_threshold=score_threshold,
            nms_iou=nms_iou,
            max_detections=max_detections,
            class_agnostic=class_agnostic,
            multi_label=multi_label,
            decoded=decoded,
            input_size=input_size,
        )
