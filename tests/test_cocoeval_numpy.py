"""`evaluate_image` is pycocotools' ``COCOeval.evaluateImg`` value for value, for every area range."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest

from autoq.data.coco import quiet_coco
from autoq.objectives.cocoeval_numpy import evaluate_image, precision


def _dataset(seed: int):
    """Ground truth with crowd boxes, ``ignore`` flags, all three size ranges, duplicated boxes (IoU
    ties), images without ground truth; detections with score ties, duplicates, > 100 in one image."""
    rng = np.random.default_rng(seed)
    images, gts, dts = [], [], []
    for image_id in range(1, 41):
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": 400, "width": 600})
        boxes = []
        for _ in range(int(rng.integers(0, 7)) if image_id % 9 else 0):
            w, h = (float(v) for v in rng.choice([6, 30, 60, 150], 2) * rng.uniform(0.8, 1.2, 2))
            boxes.append([float(rng.uniform(0, 600 - w)), float(rng.uniform(0, 400 - h)), w, h])
        if boxes and rng.random() < 0.3:
            boxes.append(list(boxes[0]))  # two identical ground truths: IoU ties
        for b in boxes:
            ann = {"id": len(gts) + 1, "image_id": image_id, "category_id": int(rng.choice([1, 2, 3])), "bbox": b,
                   "area": b[2] * b[3], "iscrowd": int(rng.random() < 0.15)}
            if rng.random() < 0.1:
                ann["ignore"] = 1
            gts.append(ann)
        n_fp = 130 if image_id == 5 else int(rng.integers(0, 8))
        hits = [g for g in gts if g["image_id"] == image_id]
        for g in hits + hits[: len(hits) // 2]:  # some ground truths detected twice
            x, y, w, h = g["bbox"]
            j = rng.normal(0, 0.15, 4) * [w, h, w, h] if rng.random() < 0.8 else np.zeros(4)
            dts.append({"image_id": image_id, "category_id": g["category_id"] if rng.random() < 0.9 else 3,
                        "bbox": [x + j[0], y + j[1], max(1.0, w + j[2]), max(1.0, h + j[3])],
                        "score": float(rng.choice([0.5, 0.9])) if rng.random() < 0.3 else float(rng.uniform(0.01, 1))})
        for _ in range(n_fp):
            x, y = rng.uniform(0, 500), rng.uniform(0, 300)
            dts.append({"image_id": image_id, "category_id": int(rng.choice([1, 2, 3])),
                        "bbox": [x, y, rng.uniform(2, 120), rng.uniform(2, 120)], "score": round(float(rng.uniform(0, 1)), 2)})
    cats = [{"id": c, "name": str(c)} for c in (1, 2, 3, 4)]
    gt = quiet_coco({"images": images, "annotations": gts, "categories": cats})
    return gt, dts


def _prepared(gt, dts):
    from pycocotools.cocoeval import COCOeval

    ev = COCOeval(gt, gt.loadRes(copy.deepcopy(dts)), "bbox")
    ev.params.imgIds = sorted(ev.params.imgIds)
    ev._prepare()
    p = ev.params
    ev.ious = {(i, c): ev.computeIoU(i, c) for i in p.imgIds for c in p.catIds}
    return ev


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluate_image_equals_evaluateImg(seed: int) -> None:
    gt, dts = _dataset(seed)
    ev = _prepared(gt, dts)
    p = ev.params
    checked = matched = 0
    for image_id, cat in itertools.product(p.imgIds, p.catIds):
        for max_det in (p.maxDets[-1], 10):
            got = evaluate_image(ev, image_id, cat, max_det)
            want = [ev.evaluateImg(image_id, cat, a, max_det) for a in p.areaRng]
            assert len(got) == len(want) == 4
            for g, w in zip(got, want):
                if w is None:
                    assert g is None
                    continue
                assert set(g) == set(w)
                for key in w:
                    assert np.array_equal(np.asarray(g[key]), np.asarray(w[key])), (image_id, cat, key)
                    assert np.asarray(g[key]).dtype == np.asarray(w[key]).dtype or key in ("dtIgnore", "gtIgnore")
                checked += 1
                matched += int(np.count_nonzero(w["dtMatches"]))
    assert checked > 300 and matched > 200  # the cases are not trivially empty


@pytest.mark.parametrize("seed", [5, 6])
def test_precision_equals_accumulate(seed: int) -> None:
    """`precision` over `evaluate_image`'s results is COCOeval.evaluate + accumulate's precision array exactly
    (a category without ground truth, one without detections, images without either)."""
    gt, dts = _dataset(seed)
    dts = [d for d in dts if d["category_id"] != 2]  # ground truth but no detection
    ref = _prepared(gt, dts)
    ref.evaluate()
    ref.accumulate()
    ev = _prepared(gt, dts)
    p = ev.params
    rows = [[r for c in p.catIds for r in evaluate_image(ev, i, c, p.maxDets[-1])] for i in p.imgIds]
    got = precision(rows, len(p.catIds), len(p.areaRng), p.iouThrs, p.recThrs, p.maxDets[-1])
    want = ref.eval["precision"][..., -1]
    assert np.array_equal(got, want)
    assert (want[:, :, 3] == -1).all() and (want[:, :, 1, 0] == 0).all() and (want > 0).any()
