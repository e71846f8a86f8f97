"""Tests for the embedded demo: synthetic dataset generator and bundled ONNX detector."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from autoq.demo import synthetic
from autoq.demo.synthetic import CLASSES, generate_dataset, render_sample

DETECTOR = Path(synthetic.__file__).resolve().parent / "detector.onnx"
N_EVAL, N_CALIB = 6, 4


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    a = generate_dataset(tmp_path_factory.mktemp("a"), n_eval=N_EVAL, n_calib=N_CALIB, seed=3)
    b = generate_dataset(tmp_path_factory.mktemp("b"), n_eval=N_EVAL, n_calib=N_CALIB, seed=3)
    return a, b


def test_classes():
    assert 5 <= len(CLASSES) <= 8
    assert len(set(CLASSES)) == len(CLASSES)


def test_render_sample_deterministic_and_valid():
    img1, boxes1 = render_sample(np.random.default_rng(11), 150, 200)
    img2, boxes2 = render_sample(np.random.default_rng(11), 150, 200)
    assert img1.shape == (150, 200, 3) and img1.dtype == np.uint8
    assert np.array_equal(img1, img2) and boxes1 == boxes2
    assert 1 <= len(boxes1) <= 8
    for x, y, w, h, c in boxes1:
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= 200 and y + h <= 150
        assert 0 <= c < len(CLASSES)


def test_dataset_deterministic(two_datasets):
    a, b = two_datasets
    assert set(a) == {"eval_images", "eval_annotations", "calib_images"}
    assert Path(a["eval_annotations"]).read_bytes() == Path(b["eval_annotations"]).read_bytes()
    first = "000001.png"
    assert (Path(a["eval_images"]) / first).read_bytes() == (Path(b["eval_images"]) / first).read_bytes()
    assert (Path(a["calib_images"]) / first).read_bytes() == (Path(b["calib_images"]) / first).read_bytes()


def test_dataset_different_seed_differs(tmp_path):
    c = generate_dataset(tmp_path, n_eval=2, n_calib=1, seed=4)
    d = generate_dataset(tmp_path / "other", n_eval=2, n_calib=1, seed=3)
    assert Path(c["eval_annotations"]).read_bytes() != Path(d["eval_annotations"]).read_bytes()


def test_dataset_skips_regeneration(two_datasets):
    a, _ = two_datasets
    ann = Path(a["eval_annotations"])
    mtime = ann.stat().st_mtime_ns
    again = generate_dataset(ann.parent.parent, n_eval=N_EVAL, n_calib=N_CALIB, seed=3)
    assert again == a
    assert ann.stat().st_mtime_ns == mtime


def test_coco_annotations(two_datasets):
    import cv2
    from pycocotools.coco import COCO

    a, _ = two_datasets
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(a["eval_annotations"]))
    assert sorted(coco.getImgIds()) == list(range(1, N_EVAL + 1))
    cats = coco.loadCats(coco.getCatIds())
    assert [c["id"] for c in cats] == list(range(1, len(CLASSES) + 1))
    assert tuple(c["name"] for c in cats) == CLASSES
    n_ann = 0
    for img_id in coco.getImgIds():
        info = coco.loadImgs(img_id)[0]
        assert info["file_name"] == f"{img_id:06d}.png"
        img = cv2.imread(str(Path(a["eval_images"]) / info["file_name"]))
        assert img.shape[:2] == (info["height"], info["width"])
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id)):
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and w > 0 and h > 0
            assert x + w <= info["width"] and y + h <= info["height"]
            assert ann["iscrowd"] == 0 and ann["area"] == pytest.approx(w * h)
            n_ann += 1
    assert n_ann >= N_EVAL


def test_calib_and_eval_are_different_images(two_datasets):
    a, _ = two_datasets
    calib = {p.read_bytes() for p in Path(a["calib_images"]).glob("*.png")}
    evals = {p.read_bytes() for p in Path(a["eval_images"]).glob("*.png")}
    assert len(calib) == N_CALIB and len(evals) == N_EVAL
    assert not calib & evals


def test_sizes_vary(two_datasets):
    import cv2

    a, _ = two_datasets
    coco = json.loads(Path(a["eval_annotations"]).read_text())
    shapes = {(im["height"], im["width"]) for im in coco["images"]}
    assert len(shapes) > 1
    assert any(h != w for h, w in shapes)
    assert cv2.imread(str(next(Path(a["calib_images"]).glob("*.png")))) is not None


def test_detector_onnx():
    import onnxruntime as ort

    assert DETECTOR.is_file(), "autoq/demo/detector.onnx is missing"
    assert DETECTOR.stat().st_size <= 2 * 1000 * 1000
    sess = ort.InferenceSession(str(DETECTOR), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    (out,) = sess.get_outputs()
    assert inp.name == "images" and out.name == "output"
    _, c, s, s2 = inp.shape
    assert c == 3 and s == s2 and s in (160, 192)
    x = np.full((1, 3, s, s), 114.0, dtype=np.float32)
    y = sess.run(None, {"images": x})[0]
    n = sum((s // st) ** 2 for st in (8, 16, 32))
    assert y.shape == (1, n, 5 + len(CLASSES))
    assert np.isfinite(y).all()
    assert (y[..., 4:] >= 0).all() and (y[..., 4:] <= 1).all()
