from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from autoq.adapters import ADAPTERS, bind_input_size, load_adapter
from autoq.adapters.base import ImageMeta
from autoq.adapters.nms import batched_nms, nms
from autoq.adapters.yolox import DemoAdapter, YoloxAdapter
from autoq.errors import ConfigError


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _brute_nms(boxes, scores, labels, thr, agnostic=False):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep: list[int] = []
    for i in order:
        if all(
            (not agnostic and labels[i] != labels[j]) or _iou(boxes[i], boxes[j]) <= thr for j in keep
        ):
            keep.append(i)
    return keep


def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.uniform(0, 100, (n, 2))
    wh = rng.uniform(5, 40, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


@pytest.mark.parametrize("agnostic", [False, True])
def test_nms_matches_brute_force(agnostic: bool) -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 120))
        boxes = _random_boxes(rng, n)
        scores = rng.permutation(n).astype(np.float32) / n  # distinct scores: unique order
        labels = rng.integers(0, 4, n)
        thr = float(rng.uniform(0.2, 0.8))
        got = batched_nms(boxes, scores, labels, thr, class_agnostic=agnostic).tolist()
        assert got == _brute_nms(boxes, scores, labels, thr, agnostic)
        top = batched_nms(boxes, scores, labels, thr, class_agnostic=agnostic, max_keep=3).tolist()
        assert top == got[:3]


def test_nms_edge_cases() -> None:
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)
    boxes = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 10, 10]], np.float32)  # zero-area boxes never suppress
    assert sorted(nms(boxes, np.array([0.9, 0.8, 0.7]), 0.5).tolist()) == [0, 1, 2]


def _yolox_output(num_classes: int, input_size: tuple[int, int], strides=(8, 16, 32)) -> np.ndarray:
    h, w = input_size
    n = sum((h // s) * (w // s) for s in strides)
    out = np.zeros((1, n, 5 + num_classes), np.float32)
    out[..., 2:4] = -10.0  # tiny boxes
    return out


def _anchor_index(input_size, strides, level: int, gx: int, gy: int) -> int:
    h, w = input_size
    offset = sum((h // s) * (w // s) for s in strides[:level])
    return offset + gy * (w // strides[level]) + gx


def test_yolox_decode_exact_boxes() -> None:
    size = (64, 96)  # non-square: grids 8x12, 4x6, 2x3
    strides = (8, 16, 32)
    out = _yolox_output(3, size)
    # box A: level 0, cell (gx=5, gy=2), offset (0.5, 0.25), w = 16, h = 8 -> class 1, score 0.9 * 0.8
    a = _anchor_index(size, strides, 0, 5, 2)
    out[0, a, :5] = [0.5, 0.25, np.log(2.0), np.log(1.0), 0.9]
    out[0, a, 5 + 1] = 0.8
    # box B: level 2, cell (gx=1, gy=1), offset (0, 0), w = 32, h = 64 -> class 2, score 0.5
    b = _anchor_index(size, strides, 2, 1, 1)
    out[0, b, :5] = [0.0, 0.0, np.log(1.0), np.log(2.0), 1.0]
    out[0, b, 5 + 2] = 0.5
    meta = ImageMeta(image_id=1, orig_h=128, orig_w=192, scale_x=0.5, scale_y=0.5)
    adapter = YoloxAdapter(num_classes=3).with_input_size(size)
    (det,) = adapter([out], [meta])
    cx, cy = (5 + 0.5) * 8, (2 + 0.25) * 8
    box_a = np.array([cx - 8, cy - 4, cx + 8, cy + 4]) / 0.5
    box_b = np.array([32 - 16, 32 - 32, 32 + 16, 32 + 32]) / 0.5
    np.testing.assert_allclose(det.boxes, np.stack([box_a, box_b]), atol=1e-4)
    np.testing.assert_allclose(det.scores, [0.72, 0.5], atol=1e-6)
    assert det.labels.tolist() == [1, 2] and det.labels.dtype == np.int64
    # the generic decode gives the same network-pixel boxes
    boxes, scores = adapter.decode([out])
    np.testing.assert_allclose(boxes[0, a], box_a * 0.5, atol=1e-4)
    assert scores.shape == (1, out.shape[1], 3)


def test_yolox_square_inference_and_threshold_and_max() -> None:
    size = (64, 64)
    out = np.repeat(_yolox_output(2, size), 2, axis=0)
    n = out.shape[1]
    rng = np.random.default_rng(1)
    out[..., 0:2] = rng.uniform(0, 1, (2, n, 2))
    out[..., 2:4] = 0.0
    out[..., 4] = rng.uniform(0, 1, (2, n))
    out[..., 5:] = rng.uniform(0, 1, (2, n, 2))
    out[1, :, 4] = 0.0  # second image: nothing above threshold
    metas = [ImageMeta(i, 64, 64, 1.0, 1.0) for i in range(2)]
    adapter = YoloxAdapter(num_classes=2, max_detections=7, nms_iou=0.99)  # no input size: square inferred
    d0, d1 = adapter([out], metas)
    assert len(d0) == 7 and len(d1) == 0
    assert np.all(np.diff(d0.scores) <= 0)
    assert YoloxAdapter(num_classes=2, multi_label=True, max_detections=0, nms_iou=1.0)([out], metas)[0].scores.size > n


def test_yolox_bad_shape_names_option() -> None:
    out = np.zeros((1, 84, 10), np.float32)
    with pytest.raises(ConfigError, match="num_classes"):
        YoloxAdapter(num_classes=80)([out], [ImageMeta(0, 1, 1, 1, 1)])
    with pytest.raises(ConfigError, match=r"5\+C"):
        YoloxAdapter(num_classes=5)([np.zeros((84, 10))], [ImageMeta(0, 1, 1, 1, 1)])
    with pytest.raises(ConfigError, match="input_size"):
        YoloxAdapter(num_classes=5)([np.zeros((1, 1000, 10))], [ImageMeta(0, 1, 1, 1, 1)])
    with pytest.raises(ConfigError, match="strides"):
        YoloxAdapter(num_classes=5, input_size=(64, 64))([np.zeros((1, 1000, 10))], [ImageMeta(0, 1, 1, 1, 1)])


def test_bind_input_size() -> None:
    a = YoloxAdapter()
    b = bind_input_size(a, (320, 416))
    assert b.input_size == (320, 416) and a.input_size is None
    assert bind_input_size(b, (320, 416)) is b

    def plain(outputs, metas):
        return []

    assert bind_input_size(plain, (32, 32)) is plain


def test_registry_and_load_adapter() -> None:
    assert {"yolox", "demo"} <= set(ADAPTERS.names())
    adapter = load_adapter("yolox", {"num_classes": 3, "nms_iou": 0.5})
    assert isinstance(adapter, YoloxAdapter) and adapter.num_classes == 3
    demo = load_adapter("demo")
    assert isinstance(demo, DemoAdapter) and demo.num_classes >= 1 and demo.strides == (8, 16, 32)
    with pytest.raises(ConfigError, match="known: .*yolox"):
        load_adapter("yolov99")
    with pytest.raises(ConfigError, match=r"model\.adapter_options.*accepted options: num_classes"):
        load_adapter("yolox", {"num_class": 3})


def test_user_adapter_function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_adapters_mod.py").write_text(
        textwrap.dedent(
            """
            from autoq.adapters.base import Detections

            def decode(outputs, metas, *, offset=0):
                return [Detections.empty() for _ in metas] if offset == 0 else [None] * offset
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = load_adapter("my_adapters_mod:decode")
    assert fn([np.zeros((2, 1))], [None, None])[0].boxes.shape == (0, 4)
    bound = load_adapter("my_adapters_mod:decode", {"offset": 3})
    assert bound([], []) == [None] * 3
    with pytest.raises(ConfigError, match="accepted options: offset"):
        load_adapter("my_adapters_mod:decode", {"bogus": 1})
    with pytest.raises(ConfigError, match="no attribute"):
        load_adapter("my_adapters_mod:nothing")
    sys.modules.pop("my_adapters_mod", None)


def test_decode_and_nms_are_fast() -> None:
    """80 images of a 416x416 YOLOX head with many candidates: decode + NMS well under a second."""
    rng = np.random.default_rng(0)
    out = _yolox_output(80, (416, 416))
    n = out.shape[1]
    out[..., 0:2] = rng.uniform(0, 1, (1, n, 2))
    out[..., 2:4] = rng.uniform(0, 2, (1, n, 2))
    out[..., 4] = rng.uniform(0, 0.3, (1, n))
    out[..., 5:] = rng.uniform(0, 0.2, (1, n, 80))
    adapter = YoloxAdapter().with_input_size((416, 416))
    meta = [ImageMeta(0, 480, 640, 0.65, 0.65)]
    start = time.perf_counter()
    for _ in range(80):
        dets = adapter([out], meta)
    elapsed = time.perf_counter() - start
    assert len(dets[0]) == 100
    assert elapsed < 3.0, elapsed
