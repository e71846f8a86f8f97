from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from autoq.adapters.base import ImageMeta
from autoq.data import (
    EvalSet,
    Preprocess,
    load_calibration,
    load_eval_set,
    prepare_image,
    read_image,
    to_input,
)
from autoq.data.coco import subset_eval_set
from autoq.errors import ConfigError, DataError


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_letterbox_geometry_matches_hand_computation() -> None:
    img = _image(100, 200)
    out, meta = prepare_image(img, (64, 64), Preprocess(pad_value=7), image_id=5)
    r = min(64 / 100, 64 / 200)
    nw, nh = int(200 * r), int(100 * r)
    assert (nw, nh) == (64, 32)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:nh, :nw], cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR))
    assert (out[nh:] == 7).all()
    assert meta == ImageMeta(image_id=5, orig_h=100, orig_w=200, scale_x=r, scale_y=r)


def test_letterbox_tall_image_pads_right() -> None:
    img = _image(300, 100)
    out, meta = prepare_image(img, (96, 128), Preprocess())
    r = min(96 / 300, 128 / 100)
    nw, nh = int(100 * r), int(300 * r)
    np.testing.assert_array_equal(out[:nh, :nw], cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR))
    assert (out[:, nw:] == 114).all()
    assert meta.scale_x == meta.scale_y == r and meta.pad_x == meta.pad_y == 0


def test_plain_resize_scales() -> None:
    img = _image(100, 200)
    out, meta = prepare_image(img, (50, 80), Preprocess(resize="resize"))
    np.testing.assert_array_equal(out, cv2.resize(img, (80, 50), interpolation=cv2.INTER_LINEAR))
    assert meta.scale_x == pytest.approx(80 / 200) and meta.scale_y == pytest.approx(50 / 100)


def test_rgb_vs_bgr() -> None:
    img = _image(32, 32)
    bgr, _ = prepare_image(img, (32, 32), Preprocess(color="bgr"))
    rgb, _ = prepare_image(img, (32, 32), Preprocess(color="rgb"))
    np.testing.assert_array_equal(bgr, img)
    np.testing.assert_array_equal(rgb, img[..., ::-1])


def test_to_input_raw_and_mean_std() -> None:
    batch = np.stack([_image(4, 6, 1), _image(4, 6, 2)])
    raw = to_input(batch, Preprocess())
    assert raw.shape == (2, 3, 4, 6) and raw.dtype == np.float32 and raw.flags.c_contiguous
    np.testing.assert_array_equal(raw, batch.transpose(0, 3, 1, 2).astype(np.float32))
    pp = Preprocess(mean=(10, 20, 30), std=(2, 4, 255))
    assert not pp.is_raw() and Preprocess().is_raw()
    x = to_input(batch, pp)
    expected = (batch.transpose(0, 3, 1, 2).astype(np.float32) - np.array([10, 20, 30], np.float32).reshape(1, 3, 1, 1)) / np.array(
        [2, 4, 255], np.float32
    ).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(x, expected, rtol=1e-6)


def test_preprocess_validation() -> None:
    with pytest.raises(ConfigError):
        Preprocess(resize="crop")
    with pytest.raises(ConfigError):
        Preprocess(color="yuv")
    assert Preprocess(mean=(0, 0, 0)) == Preprocess()  # numbers normalised: equal configs hash equal
    assert hash(Preprocess(std=(255, 255, 255))) == hash(Preprocess(std=(255.0, 255.0, 255.0)))


@pytest.mark.parametrize("resize", ["letterbox", "resize"])
def test_meta_round_trip(resize: str) -> None:
    img = _image(120, 90)
    _, meta = prepare_image(img, (64, 64), Preprocess(resize=resize))
    orig = np.array([[10.0, 20.0, 80.0, 110.0]], np.float32)
    net = orig.copy()
    net[:, [0, 2]] = net[:, [0, 2]] * meta.scale_x + meta.pad_x
    net[:, [1, 3]] = net[:, [1, 3]] * meta.scale_y + meta.pad_y
    np.testing.assert_allclose(meta.to_original(net), orig, atol=1e-3)


def _write_coco(root: Path, sizes: list[tuple[int, int]], missing: int | None = None) -> tuple[Path, Path]:
    images_dir = root / "images"
    images_dir.mkdir()
    images, anns = [], []
    for k, (h, w) in enumerate(sizes):
        image_id = 100 - k  # ids in reverse file order: loader must sort by id
        name = f"img{k}.png"
        if k != missing:
            cv2.imwrite(str(images_dir / name), _image(h, w, k))
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        anns.append({"id": k + 1, "image_id": image_id, "category_id": 3 + k % 2, "bbox": [1, 2, 10, 12]})
    cats = [{"id": 4, "name": "b"}, {"id": 3, "name": "a"}]
    ann = root / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return images_dir, ann


def test_load_eval_set_sorted_and_subset(tmp_path: Path) -> None:
    images_dir, ann = _write_coco(tmp_path, [(40, 60), (50, 30), (20, 20)])
    es = load_eval_set(images_dir, ann, (32, 32), Preprocess())
    assert isinstance(es, EvalSet)
    assert es.images.shape == (3, 32, 32, 3) and es.images.dtype == np.uint8
    assert es.image_ids == (98, 99, 100)
    assert es.files == ("img2.png", "img1.png", "img0.png")
    assert es.category_ids == (3, 4) and es.class_names == ("a", "b")
    assert (es.metas[2].orig_h, es.metas[2].orig_w) == (40, 60)
    assert len(es.coco.getAnnIds()) == 3 and es.size == (32, 32)
    sub = load_eval_set(images_dir, ann, (32, 32), Preprocess(), subset=2)
    assert sub.image_ids == (98, 99)
    cut = subset_eval_set(es, 1)
    assert cut.image_ids == (98,) and cut.coco is es.coco


def test_missing_image_is_data_error(tmp_path: Path) -> None:
    images_dir, ann = _write_coco(tmp_path, [(40, 60), (50, 30)], missing=1)
    with pytest.raises(DataError, match="img1.png"):
        load_eval_set(images_dir, ann, (32, 32), Preprocess())


def test_undecodable_image_is_skipped_with_warning(tmp_path: Path) -> None:
    images_dir, ann = _write_coco(tmp_path, [(40, 60), (50, 30)])
    (images_dir / "img1.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="img1.png"):
        es = load_eval_set(images_dir, ann, (32, 32), Preprocess())
    assert es.image_ids == (100,)
    (images_dir / "img0.png").write_bytes(b"")
    with pytest.raises(DataError, match="could be decoded"):
        load_eval_set(images_dir, ann, (32, 32), Preprocess())


def test_malformed_json_is_data_error(tmp_path: Path) -> None:
    images_dir, ann = _write_coco(tmp_path, [(40, 60)])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        load_eval_set(images_dir, bad, (32, 32), Preprocess())
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="annotations"):
        load_eval_set(images_dir, bad, (32, 32), Preprocess())
    bad.write_text(json.dumps({"images": [{"id": 1}], "annotations": [], "categories": [{"id": 1, "name": "x"}]}))
    with pytest.raises(DataError, match="file_name"):
        load_eval_set(images_dir, bad, (32, 32), Preprocess())
    with pytest.raises(DataError, match="not found"):
        load_eval_set(images_dir, tmp_path / "nope.json", (32, 32), Preprocess())


def test_calibration(tmp_path: Path) -> None:
    d = tmp_path / "calib"
    d.mkdir()
    for k in range(4):
        cv2.imwrite(str(d / f"c{k}.jpg"), _image(30, 40, k))
    (d / "notes.txt").write_text("x")
    (d / "c0b.png").write_bytes(b"broken")
    with pytest.warns(UserWarning):
        images, names = load_calibration(d, 3, (16, 16), Preprocess())
    assert names == ("c0.jpg", "c1.jpg", "c2.jpg")  # broken c0b.png replaced by the next file
    assert images.shape == (3, 16, 16, 3)
    with pytest.warns(UserWarning):
        _, names = load_calibration(d, 0, (16, 16), Preprocess())
    assert len(names) == 4


def test_zero_calibration_images_is_data_error(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no readable calibration images"):
        load_calibration(tmp_path, 8, (16, 16), Preprocess())
    with pytest.raises(DataError, match="not found"):
        load_calibration(tmp_path / "nope", 8, (16, 16), Preprocess())


def test_read_image_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="x.jpg"):
        read_image(tmp_path / "x.jpg")
    cv2.imwrite(str(tmp_path / "ok.png"), _image(5, 7))
    assert read_image(tmp_path / "ok.png").shape == (5, 7, 3)
