"""Letterbox/resize, colour order and mean/std: the exact input a detector was trained on.

Geometry and colour are applied once to uint8 images (cheap to cache); mean/std is applied in
`to_input` when a batch becomes float32, so one cached set serves every trial.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from autoq.adapters.base import ImageMeta
from autoq.errors import ConfigError, DataError

__all__ = ["Preprocess", "prepare_image", "read_image", "to_input"]

_RESIZE_MODES = ("letterbox", "resize")
_COLORS = ("bgr", "rgb")


@dataclass(frozen=True)
class Preprocess:
    """How the model expects its input.

    Attributes:
        resize: ``"letterbox"`` keeps the aspect ratio (OpenCV INTER_LINEAR, image at the top-left,
            the rest filled with ``pad_value``, as YOLOX does); ``"resize"`` stretches to the input size.
        pad_value: fill value of the letterbox canvas.
        color: channel order the model expects, ``"bgr"`` or ``"rgb"``.
        mean: per channel, in 0..255 pixel units and the model's colour order.
        std: per channel; input = (pixel - mean) / std. Raw 0..255 input is the default;
            YOLOv5/YOLOv8 use ``std=(255, 255, 255)``.
    """

    resize: str = "letterbox"
    pad_value: int = 114
    color: str = "bgr"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if self.resize not in _RESIZE_MODES:
            raise ConfigError(f"preprocess.resize must be one of {_RESIZE_MODES}, got {self.resize!r}")
        if self.color not in _COLORS:
            raise ConfigError(f"preprocess.color must be one of {_COLORS}, got {self.color!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError("preprocess.mean and preprocess.std need exactly 3 values (one per channel)")
        if any(float(s) == 0.0 for s in self.std):
            raise ConfigError("preprocess.std must not contain 0")
        # normalise to float tuples so equal configs hash equal (cache keys)
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    def is_raw(self) -> bool:
        """True when the model takes plain 0..255 pixels (no mean/std arithmetic needed)."""
        return all(m == 0.0 for m in self.mean) and all(s == 1.0 for s in self.std)


def read_image(path: Path) -> np.ndarray:
    """Reads an image as uint8 BGR HxWx3; DataError when it is missing or not an image."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found; check the images directory in autoq.yaml")
    # imdecode handles non-ASCII paths that cv2.imread cannot open on some platforms
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise DataError(f"{path}: cannot decode the image; replace or remove the file")
    return image


def prepare_image(
    image_bgr: np.ndarray, size: tuple[int, int], pp: Preprocess, image_id: int = 0
) -> tuple[np.ndarray, ImageMeta]:
    """Returns the uint8 HxWx3 network image (h, w = size) in the model's colour order, plus the mapping back to the original."""
    h, w = int(size[0]), int(size[1])
    ih, iw = image_bgr.shape[:2]
    if pp.resize == "letterbox":
        r = min(h / ih, w / iw)
        nw, nh = int(iw * r), int(ih * r)
        resized = cv2.resize(image_bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
        out = np.full((h, w, 3), pp.pad_value, dtype=np.uint8)
        out[:nh, :nw] = resized
        meta = ImageMeta(image_id=int(image_id), orig_h=ih, orig_w=iw, scale_x=r, scale_y=r)
    else:
        out = cv2.resize(image_bgr, (w, h), interpolation=cv2.INTER_LINEAR)
        meta = ImageMeta(image_id=int(image_id), orig_h=ih, orig_w=iw, scale_x=w / iw, scale_y=h / ih)
    if pp.color == "rgb":
        out = cv2.cvtColor(out, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(out), meta


def to_input(batch: np.ndarray, pp: Preprocess) -> np.ndarray:
    """uint8 NHWC batch -> float32 NCHW model input, applying mean/std."""
    if batch.ndim == 3:
        batch = batch[None]
    x = np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)
    if not pp.is_raw():
        mean = np.asarray(pp.mean, np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(pp.std, np.float32).reshape(1, 3, 1, 1)
        x -= mean
        x /= std
    return x
