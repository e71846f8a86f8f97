"""Every built-in adapter family (and a custom one) decodes known raw outputs of a tiny ONNX graph
into the known boxes: mAP 1.0 against the matching COCO JSON."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from autoq.adapters import ADAPTERS, bind_output_names, load_adapter
from autoq.adapters.base import ImageMeta
from autoq.data import Preprocess, load_eval_set
from autoq.errors import ConfigError
from autoq.objectives.accuracy import coco_metrics, detect
from autoq.runtime.runner import run_model

ORIG = (64, 96)  # original images (h, w)
NET = (32, 48)  # network input: letterbox scale 0.5, no padding
# ground truth per image, original pixels xywh + COCO category id (7 = cat -> class 0, 9 = dog -> class 1)
GT = [(10.0, 10.0, 30.0, 20.0, 7), (40.0, 6.0, 20.0, 40.0, 9)]
NET_XYXY = np.array([[(x) / 2, (y) / 2, (x + w) / 2, (y + h) / 2] for x, y, w, h, _ in GT], np.float32)
LABELS = np.array([0, 1])


def const_model(outputs: dict[str, np.ndarray]) -> bytes:
    """images [1, 3, 32, 48] -> each named output = constant + 0 * mean(images) (int outputs: the constant)."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, *NET])
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["zeroed"]),
    ]
    inits = [numpy_helper.from_array(np.zeros(1, np.float32), "zero")]
    outs = []
    for name, value in outputs.items():
        inits.append(numpy_helper.from_array(value, f"{name}_const"))
        if value.dtype == np.float32:
            nodes.append(helper.make_node("Add", [f"{name}_const", "zeroed"], [name]))
            outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
        else:
            nodes.append(helper.make_node("Identity", [f"{name}_const"], [name]))
            outs.append(helper.make_tensor_value_info(name, TensorProto.INT64, list(value.shape)))
    graph = helper.make_graph(nodes, "const", [x], outs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory):
    """Two 64x96 images with the same two objects; categories cat (7), dog (9)."""
    root = tmp_path_factory.mktemp("families")
    images_dir = root / "images"
    images_dir.mkdir()
    images, anns = [], []
    for image_id in (1, 2):
        cv2.imwrite(str(images_dir / f"{image_id}.png"), np.full((*ORIG, 3), 50 * image_id, np.uint8))
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": ORIG[0], "width": ORIG[1]})
        for x, y, w, h, c in GT:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": c, "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    ann = root / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 7, "name": "cat"}, {"id": 9, "name": "dog"}]}))
    return load_eval_set(images_dir, ann, NET, Preprocess())


def _cxcywh(xyxy: np.ndarray) -> np.ndarray:
    return np.concatenate([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], axis=1)


def _yolov5() -> dict[str, np.ndarray]:
    rows = np.zeros((3, 7), np.float32)
    rows[:2, :4] = _cxcywh(NET_XYXY)
    rows[:2, 4] = [0.9, 0.8]
    rows[0, 5], rows[1, 6] = 0.9, 0.7
    rows[2] = [10, 10, 4, 4, 0.0005, 1.0, 1.0]  # objectness below the threshold
    return {"output0": rows[None]}


def _yolov8(transposed: bool) -> dict[str, np.ndarray]:
    rows = np.zeros((8, 6), np.float32)  # more anchors than channels, as in any real model
    rows[:2, :4] = _cxcywh(NET_XYXY)
    rows[0, 4], rows[1, 5] = 0.9, 0.6
    rows[2] = [10, 10, 4, 4, 0.0001, 0.0]
    return {"output0": (rows if transposed else rows.T)[None].copy()}


def _yolox() -> dict[str, np.ndarray]:
    h, w = NET
    n = sum((h // s) * (w // s) for s in (8, 16, 32))
    out = np.zeros((1, n, 7), np.float32)
    cxcywh = _cxcywh(NET_XYXY)
    for k, (cx, cy, bw, bh) in enumerate(cxcywh):
        gx, gy = int(cx // 8), int(cy // 8)
        out[0, gy * (w // 8) + gx, :5] = [cx / 8 - gx, cy / 8 - gy, np.log(bw / 8), np.log(bh / 8), 0.95]
        out[0, gy * (w // 8) + gx, 5 + k] = 0.9
    return {"output": out}


def _boxes_scores() -> dict[str, np.ndarray]:
    boxes = _cxcywh(NET_XYXY) / np.array([NET[1], NET[0], NET[1], NET[0]], np.float32)  # normalized cxcywh
    boxes = np.concatenate([boxes, [[0.5, 0.5, 0.1, 0.1]]]).astype(np.float32)
    scores = np.array([[0.9, 0.01], [0.02, 0.8], [0.01, 0.01]], np.float32)
    return {"scores": scores[None], "boxes": boxes[None]}  # scores first: outputs picked by name


def _dets_labels() -> dict[str, np.ndarray]:
    dets = np.zeros((4, 5), np.float32)  # two detections then zero padding
    dets[:2, :4] = NET_XYXY
    dets[:2, 4] = [0.9, 0.8]
    labels = np.array([[0, 1, -1, -1]], np.int64)
    return {"dets": dets[None], "labels": labels}


CASES = {
    "yolox": (_yolox, {"num_classes": 2}),
    "yolov5": (_yolov5, {"num_classes": 2}),
    "yolov7": (_yolov5, {}),
    "yolov8": (lambda: _yolov8(False), {}),
    "yolov8-transposed": (lambda: _yolov8(True), {"transposed": True, "num_classes": 2}),
    "boxes_scores": (_boxes_scores, {"boxes": "boxes", "scores": "scores", "box_format": "cxcywh", "normalized": True}),
    "dets_labels": (_dets_labels, {"dets": "dets", "labels": "labels"}),
}


def _decode(eval_set, spec: str, options: dict, outputs: dict[str, np.ndarray]):
    model = const_model(outputs)
    raw = run_model(model, eval_set.images, Preprocess())
    adapter = load_adapter(spec, {"input_size": NET, **options})
    adapter = bind_output_names(adapter, list(outputs))
    return detect(raw, eval_set.metas, adapter, input_size=eval_set.size)


@pytest.mark.parametrize("case", sorted(CASES))
def test_family_decodes_known_boxes_to_map_one(eval_set, case: str) -> None:
    make, options = CASES[case]
    spec = case.split("-")[0]
    dets = _decode(eval_set, spec, options, make())
    for det in dets:
        order = np.argsort(det.labels, kind="stable")
        assert det.labels[order].tolist() == LABELS.tolist()
        np.testing.assert_allclose(det.boxes[order], NET_XYXY * 2, atol=1e-3)  # original pixels
    m = coco_metrics(dets, eval_set)
    assert m.map == pytest.approx(1.0) and m.map50 == pytest.approx(1.0)


def test_builtins_registered_with_documented_defaults() -> None:
    assert {"yolox", "yolov5", "yolov7", "yolov8", "boxes_scores", "dets_labels", "demo"} <= set(ADAPTERS.names())
    v5, v8 = load_adapter("yolov5"), load_adapter("yolov8")
    assert (v5.score_threshold, v5.nms_iou, v5.max_detections, v5.multi_label) == (0.001, 0.6, 300, True)
    assert (v8.score_threshold, v8.nms_iou, v8.max_detections, v8.multi_label) == (0.001, 0.7, 300, True)
    dl = load_adapter("dets_labels")
    assert dl.nms_iou is None and dl.max_detections == 100


def test_multi_label_and_class_agnostic() -> None:
    meta = ImageMeta(1, 32, 48, 1.0, 1.0)
    rows = np.zeros((2, 6), np.float32)
    rows[:, :4] = [[10, 10, 8, 8], [11, 10, 8, 8]]  # overlapping boxes
    rows[0, 4:] = [0.9, 0.5]
    rows[1, 4:] = [0.1, 0.8]
    raw = rows.T[None].copy()
    (multi,) = load_adapter("yolov8", {"num_classes": 2})([raw], [meta])
    assert sorted(multi.labels.tolist()) == [0, 1]  # box 0 as class 0, box 1 as class 1 (box 0 as 1 suppressed)
    (best,) = load_adapter("yolov8", {"num_classes": 2, "multi_label": False, "class_agnostic": True})([raw], [meta])
    assert best.labels.tolist() == [0] and best.scores.tolist() == pytest.approx([0.9])


def test_shape_and_option_errors_name_the_fix() -> None:
    meta = [ImageMeta(1, 32, 48, 1.0, 1.0)]
    with pytest.raises(ConfigError, match="transposed"):
        load_adapter("yolov8")([np.zeros((1, 100, 6), np.float32)], meta)
    assert load_adapter("yolov8", {"num_classes": 96})([np.zeros((1, 100, 6), np.float32)], meta)[0].scores.size == 0
    with pytest.raises(ConfigError, match="num_classes"):
        load_adapter("yolov5", {"num_classes": 3})([np.zeros((1, 10, 7), np.float32)], meta)
    with pytest.raises(ConfigError, match="box_format"):
        load_adapter("boxes_scores", {"box_format": "yxyx"})
    with pytest.raises(ConfigError, match="not an output"):
        bind_output_names(load_adapter("boxes_scores", {"boxes": "bx"}), ["a", "b"])(
            [np.zeros((1, 2, 4)), np.zeros((1, 2, 3))], meta
        )
    with pytest.raises(ConfigError, match="accepted options"):
        load_adapter("dets_labels", {"multi_label": True})


def test_nms_of_many_low_score_boxes_is_fast() -> None:
    rng = np.random.default_rng(0)
    n, c = 8400, 80  # YOLOv8 at 640: what a badly quantized model may emit at conf 0.001
    raw = np.zeros((1, 4 + c, n), np.float32)
    raw[0, :2] = rng.uniform(0, 640, (2, n))
    raw[0, 2:4] = rng.uniform(10, 200, (2, n))
    raw[0, 4:] = rng.uniform(0, 0.01, (c, n))
    meta = [ImageMeta(1, 640, 640, 1.0, 1.0)]
    adapter = load_adapter("yolov8")
    t = time.perf_counter()
    (det,) = adapter([raw], meta)
    assert time.perf_counter() - t < 2.0 and len(det) == 300


README_DECODE = '''
import numpy as np
from autoq.adapters.base import Detections
from autoq.adapters.nms import batched_nms

def decode(outputs, metas, *, input_size, score_threshold=0.01, nms_iou=0.65, **_):
    """outputs[0]: [B, N, 6] = x1, y1, x2, y2 (network pixels), score, class."""
    results = []
    for pred, meta in zip(outputs[0], metas):
        pred = pred[pred[:, 4] > score_threshold]
        boxes, scores, labels = pred[:, :4], pred[:, 4], pred[:, 5].astype(np.int64)
        keep = batched_nms(boxes, scores, labels, nms_iou)
        results.append(Detections(meta.to_original(boxes[keep]), scores[keep], labels[keep]))
    return results
'''


def test_custom_adapter_from_a_module_path(eval_set, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "my_head_adapter.py").write_text(textwrap.dedent(README_DECODE))
    monkeypatch.syspath_prepend(str(tmp_path))
    rows = np.zeros((3, 6), np.float32)
    rows[:2, :4] = NET_XYXY
    rows[:2, 4] = [0.9, 0.8]
    rows[:2, 5] = LABELS
    rows[2] = [1, 1, 5, 5, 0.001, 0]  # below the threshold
    dets = _decode(eval_set, "my_head_adapter:decode", {}, {"out": rows[None]})
    assert coco_metrics(dets, eval_set).map == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="no attribute"):
        load_adapter("my_head_adapter:missing")
