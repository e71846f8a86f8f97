"""Float YOLOX-Nano on coco_tiny val2017 must reproduce the independent evaluator (mAP 0.305, AP50 0.478)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from autoq.adapters import load_adapter
from autoq.data import Preprocess, load_eval_set
from autoq.objectives.accuracy import coco_metrics, detect
from autoq.runtime.runner import run_model
from autoq.runtime.session import create_session

DATA = Path(os.environ.get("AUTOQ_REAL_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
MODEL = DATA / "models" / "yolox_nano.onnx"
IMAGES = DATA / "coco_tiny" / "val2017"
ANNOTATIONS = DATA / "coco_tiny" / "annotations" / "instances_val2017.json"

pytestmark = pytest.mark.skipif(
    not (MODEL.is_file() and IMAGES.is_dir() and ANNOTATIONS.is_file()),
    reason=f"real data not found under {DATA} (set AUTOQ_REAL_DATA to the folder with models/ and coco_tiny/)",
)


def test_yolox_nano_float_map() -> None:
    pp = Preprocess(resize="letterbox", pad_value=114, color="bgr")
    eval_set = load_eval_set(IMAGES, ANNOTATIONS, (416, 416), pp)
    assert len(eval_set) == 80 and len(eval_set.category_ids) == 80
    adapter = load_adapter("yolox", {"num_classes": 80, "score_threshold": 0.01, "nms_iou": 0.65, "max_detections": 100})

    t0 = time.perf_counter()
    outputs = run_model(create_session(MODEL), eval_set.images, pp)
    t1 = time.perf_counter()
    detections = detect(outputs, eval_set.metas, adapter, input_size=eval_set.size)
    t2 = time.perf_counter()
    metrics = coco_metrics(detections, eval_set)
    t3 = time.perf_counter()
    print(
        f"\nyolox_nano float: mAP {metrics.map:.4f} AP50 {metrics.map50:.4f} | inference {t1 - t0:.2f}s, "
        f"decode+NMS {t2 - t1:.3f}s, COCOeval {t3 - t2:.2f}s for {len(eval_set)} images"
    )
    assert metrics.map == pytest.approx(0.305, abs=0.005)
    assert metrics.map50 == pytest.approx(0.478, abs=0.005)
    assert len(metrics.per_class_ap) == 80
    assert t2 - t1 < 1.0, "decode + NMS must not show in trial time"
