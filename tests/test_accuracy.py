from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from autoq.adapters.base import Detections
from autoq.data import Preprocess, load_eval_set, subset_eval_set
from autoq.objectives.accuracy import CocoMetrics, coco_metrics, create_session, detect, evaluate, run_model


@pytest.fixture()
def eval_set(tmp_path: Path):
    """Three 64x96 images; categories 7 ('cat'), 9 ('dog'), 11 ('owl', no ground truth)."""
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    boxes = {1: [(10, 10, 30, 20, 7), (40, 5, 20, 40, 9)], 2: [(0, 0, 50, 50, 9)], 3: [(60, 30, 25, 25, 7)]}
    images, anns = [], []
    for image_id, objs in boxes.items():
        cv2.imwrite(str(images_dir / f"{image_id}.png"), np.full((64, 96, 3), 40 * image_id, np.uint8))
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": 64, "width": 96})
        for x, y, w, h, c in objs:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": c, "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    cats = [{"id": 7, "name": "cat"}, {"id": 9, "name": "dog"}, {"id": 11, "name": "owl"}]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return load_eval_set(images_dir, ann, (32, 48), Preprocess()), boxes


def _perfect(es, boxes) -> list[Detections]:
    index = {c: k for k, c in enumerate(es.category_ids)}
    out = []
    for meta in es.metas:
        objs = boxes[meta.image_id]
        xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h, _ in objs], np.float32)
        out.append(Detections(xyxy, np.linspace(0.9, 0.5, len(objs)).astype(np.float32), np.array([index[o[4]] for o in objs], np.int64)))
    return out


def test_perfect_detections_score_one(eval_set) -> None:
    es, boxes = eval_set
    m = coco_metrics(_perfect(es, boxes), es)
    assert m.map == pytest.approx(1.0) and m.map50 == pytest.approx(1.0)
    assert set(m.per_class_ap) == {"cat", "dog"}  # owl has no ground truth: omitted, not nan
    assert all(v == pytest.approx(1.0) for v in m.per_class_ap.values())
    assert math.isnan(m.map_large) or m.map_large == pytest.approx(1.0)


def test_wrong_class_and_empty(eval_set) -> None:
    es, boxes = eval_set
    dets = _perfect(es, boxes)
    wrong = [Detections(d.boxes, d.scores, (d.labels + 1) % 3) for d in dets]
    assert coco_metrics(wrong, es).map < 0.5
    empty = coco_metrics([Detections.empty() for _ in es.metas], es)
    assert empty == CocoMetrics(0.0, 0.0, 0.0, 0.0, 0.0, {})


def test_subset_evaluates_its_own_images(eval_set) -> None:
    es, boxes = eval_set
    sub = subset_eval_set(es, 2)
    m = coco_metrics(_perfect(sub, boxes), sub)
    assert m.map == pytest.approx(1.0)  # image 3's ground truth is not counted as missed


def _mean_model(batch: int | str = "N") -> bytes:
    """[N, 3, H, W] -> [N, 3] channel means."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, 32, 48])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 3])
    node = helper.make_node("ReduceMean", ["images"], ["m"], axes=[2, 3], keepdims=0)
    ident = helper.make_node("Identity", ["m"], ["out"])
    graph = helper.make_graph([node, ident], "mean", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_run_model_batches_and_preprocess(eval_set) -> None:
    es, _ = eval_set
    model = _mean_model()
    outs = run_model(model, es.images, Preprocess(), batch_size=2)
    assert [o[0].shape for o in outs] == [(2, 3), (1, 3)]
    np.testing.assert_allclose(outs[0][0][0], [40, 40, 40], rtol=1e-5)
    scaled = run_model(create_session(model, threads=1), es.images, Preprocess(std=(255, 255, 255)), input_name="images")
    np.testing.assert_allclose(scaled[2][0][0], [120 / 255] * 3, rtol=1e-5)
    fixed = run_model(bytearray(_mean_model(batch=2)), es.images, Preprocess(), batch_size=1)
    assert [o[0].shape for o in fixed] == [(2, 3), (1, 3)]  # fixed batch 2: last batch padded, then trimmed
    np.testing.assert_allclose(fixed[1][0][0], [120, 120, 120], rtol=1e-5)


def test_detect_and_evaluate_with_a_function_adapter(eval_set) -> None:
    es, boxes = eval_set
    perfect = {m.image_id: d for m, d in zip(es.metas, _perfect(es, boxes))}
    seen_sizes = []

    def oracle(outputs, metas):
        assert outputs[0].shape[0] == len(metas)
        return [perfect[m.image_id] for m in metas]

    class Sized:
        def with_input_size(self, size):
            seen_sizes.append(size)
            return oracle

    metrics, dets = evaluate(_mean_model(), es, Preprocess(), Sized(), batch_size=2)
    assert metrics.map == pytest.approx(1.0) and len(dets) == 3
    assert seen_sizes == [(32, 48)]
    with pytest.raises(ValueError):
        detect([[np.zeros((2, 3))]], es.metas, oracle)
