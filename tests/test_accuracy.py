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
from autoq.objectives.accuracy import CocoMetrics, coco_metrics, detect, evaluate
from autoq.runtime.runner import run_model
from autoq.runtime.session import create_session


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


def _reference_coco(detections, es) -> np.ndarray:
    """pycocotools the documented way: loadRes of every detection, evaluate, accumulate, summarize."""
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    results = []
    for det, meta in zip(detections, es.metas):
        for (x1, y1, x2, y2), s, k in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist()):
            bbox = [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)]
            results.append({"image_id": meta.image_id, "category_id": es.category_ids[k], "bbox": bbox, "score": round(s, 5)})
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(es.coco, es.coco.loadRes(results), "bbox")
        ev.params.imgIds = list(es.image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def test_streamed_coco_evaluation_equals_pycocotools(tmp_path: Path) -> None:
    """Image-by-image COCOeval (fed in uneven chunks) gives pycocotools' numbers exactly: crowd boxes,
    all three size ranges, a class without ground truth, images without detections, > 100 detections."""
    from autoq.objectives.accuracy import CocoEvaluation

    rng = np.random.default_rng(3)
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    images, anns, gts = [], [], {}
    for image_id in range(1, 31):
        cv2.imwrite(str(images_dir / f"{image_id}.png"), np.zeros((8, 8, 3), np.uint8))
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": 400, "width": 600})
        gts[image_id] = []
        for _ in range(int(rng.integers(0, 6))):
            w, h = (float(v) for v in rng.choice([8, 40, 200], 2) * rng.uniform(0.7, 1.3, 2))
            x, y = float(rng.uniform(0, 600 - w)), float(rng.uniform(0, 400 - h))
            c = int(rng.choice([7, 9]))
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": c, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": int(rng.random() < 0.1)})
            gts[image_id].append((x, y, w, h, c))
    cats = [{"id": 7, "name": "cat"}, {"id": 9, "name": "dog"}, {"id": 11, "name": "owl"}]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    es = load_eval_set(images_dir, ann, (8, 8), Preprocess())
    index = {c: k for k, c in enumerate(es.category_ids)}
    dets = []
    for meta in es.metas:
        boxes, labels = [], []
        for x, y, w, h, c in gts[meta.image_id]:
            if rng.random() < 0.8:  # a noisy hit
                dx, dy = rng.normal(0, 0.1 * w), rng.normal(0, 0.1 * h)
                boxes.append([x + dx, y + dy, x + dx + w, y + dy + h])
                labels.append(index[c] if rng.random() < 0.9 else index[11])
        n_fp = 0 if meta.image_id % 7 == 0 else (150 if meta.image_id == 5 else int(rng.integers(0, 4)))
        for _ in range(n_fp):
            x, y = rng.uniform(0, 500), rng.uniform(0, 300)
            boxes.append([x, y, x + rng.uniform(5, 100), y + rng.uniform(5, 100)])
            labels.append(int(rng.integers(0, 3)))
        if meta.image_id % 7 == 0:
            boxes, labels = [], []
        dets.append(Detections(np.asarray(boxes, np.float32).reshape(-1, 4), rng.uniform(0.01, 1, len(boxes)).astype(np.float32),
                               np.asarray(labels, np.int64)))
    ref = _reference_coco(dets, es)
    evaluation = CocoEvaluation(es)
    for a, b in ((0, 1), (1, 8), (8, 8), (8, 20), (20, 30)):
        evaluation.add(dets[a:b])
    m = evaluation.result()
    got = [m.map, m.map50, m.map_small, m.map_medium, m.map_large]
    want = [ref.stats[i] for i in (0, 1, 3, 4, 5)]
    assert 0.05 < m.map < 0.95 and got == pytest.approx([w if w >= 0 else math.nan for w in want], nan_ok=True, abs=0)
    names = dict(zip(es.category_ids, es.class_names))
    for k, cat in enumerate(ref.params.catIds):
        p = ref.eval["precision"][:, :, k, 0, -1]
        if (p > -1).any():
            assert m.per_class_ap[names[cat]] == float(p[p > -1].mean())
    assert coco_metrics(dets, es) == m
    with pytest.raises(ValueError, match="31 detections for 30 images"):
        evaluation.add(dets[:1])
