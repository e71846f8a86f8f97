"""Deterministic synthetic shapes detection dataset in COCO format.

Pure numpy + OpenCV (no torch).  Every image is rendered from its own
``numpy.random.default_rng([seed, stream, index])`` generator, so the output
is bit-for-bit reproducible and independent of how many images are requested.

Streams: 1 = evaluation set, 2 = calibration set (training scripts use other
streams/seeds), so calibration and evaluation images never coincide.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np

__all__ = ["CLASSES", "render_sample", "generate_dataset", "EVAL_STREAM", "CALIB_STREAM"]

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "star")

EVAL_STREAM = 1
CALIB_STREAM = 2
_MANIFEST_VERSION = 1

# image size ranges (inclusive)
_W_RANGE = (160, 256)
_H_RANGE = (120, 224)

Box = tuple[float, float, float, float, int]


def _rand_color(rng: np.random.Generator, avoid: np.ndarray | None = None, min_dist: float = 60.0) -> tuple[int, int, int]:
    """A random BGR colour, optionally at least ``min_dist`` away (L2) from ``avoid``."""
    for _ in range(20):
        c = rng.integers(0, 256, size=3)
        if avoid is None or float(np.linalg.norm(c.astype(np.float64) - avoid)) >= min_dist:
            break
    return int(c[0]), int(c[1]), int(c[2])


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    c0 = rng.integers(0, 256, size=3).astype(np.float32)
    c1 = rng.integers(0, 256, size=3).astype(np.float32)
    ang = rng.uniform(0.0, 2.0 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (xx * math.cos(ang) + yy * math.sin(ang))
    t -= t.min()
    t /= max(float(t.max()), 1e-6)
    img = c0[None, None, :] * (1.0 - t[..., None]) + c1[None, None, :] * t[..., None]
    sigma = rng.uniform(3.0, 18.0)
    img += rng.normal(0.0, sigma, size=(h, w, 3)).astype(np.float32)
    # low-frequency blotches
    lo = rng.normal(0.0, rng.uniform(5.0, 25.0), size=(max(2, h // 24), max(2, w // 24), 3)).astype(np.float32)
    img += cv2.resize(lo, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(img, 0, 255).astype(np.uint8)


def _clutter(rng: np.random.Generator, img: np.ndarray) -> None:
    """Distractors that are not objects: lines, polylines, thin arcs and tiny specks."""
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(2, 9))):
        kind = int(rng.integers(0, 4))
        col = _rand_color(rng)
        if kind == 0:  # straight line
            p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(img, p0, p1, col, int(rng.integers(1, 3)), cv2.LINE_AA)
        elif kind == 1:  # random open polyline (scribble)
            n = int(rng.integers(3, 7))
            pts = np.stack([rng.integers(0, w, n), rng.integers(0, h, n)], axis=1).astype(np.int32)
            cv2.polylines(img, [pts], False, col, 1, cv2.LINE_AA)
        elif kind == 2:  # partial arc
            c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            ax = (int(rng.integers(8, 50)), int(rng.integers(8, 50)))
            a0 = float(rng.uniform(0, 360))
            cv2.ellipse(img, c, ax, float(rng.uniform(0, 180)), a0, a0 + float(rng.uniform(40, 200)), col, 1, cv2.LINE_AA)
        else:  # small irregular blob / speck, too small to be an object
            c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            ax = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
            cv2.ellipse(img, c, ax, float(rng.uniform(0, 180)), 0, 360, col, -1, cv2.LINE_AA)


def _rot(pts: np.ndarray, ang: float) -> np.ndarray:
    c, s = math.cos(ang), math.sin(ang)
    return pts @ np.array([[c, s], [-s, c]], dtype=np.float64)


def _shape_points(cls: int, r: float, rng: np.random.Generator) -> np.ndarray | None:
    """Polygon outline (centred at origin) for polygonal classes, None for round ones."""
    name = CLASSES[cls]
    ang = float(rng.uniform(0, 2 * math.pi))
    if name == "square":
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * (r / math.sqrt(2))
    elif name == "triangle":
        a = np.array([0, 2, 4]) * math.pi / 3 + math.pi / 2
        pts = np.stack([np.cos(a), np.sin(a)], axis=1) * r
    elif name == "cross":
        t = float(rng.uniform(0.28, 0.4))  # arm half-thickness relative to r
        q = np.array([[t, 1], [t, t], [1, t], [1, -t], [t, -t], [t, -1],
                      [-t, -1], [-t, -t], [-1, -t], [-1, t], [-t, t], [-t, 1]], dtype=np.float64)
        pts = q * r
    elif name == "star":
        a = np.arange(10) * math.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, 1.0, float(rng.uniform(0.38, 0.5)))
        pts = np.stack([np.cos(a) * rad, np.sin(a) * rad], axis=1) * r
    else:
        return None
    return _rot(pts, ang)


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over the area of the smaller box (1.0 = one box fully covers the other)."""
    ax1, ay1, aw, ah = a
    bx1, by1, bw, bh = b
    iw = max(0.0, min(ax1 + aw, bx1 + bw) - max(ax1, bx1))
    ih = max(0.0, min(ay1 + ah, by1 + bh) - max(ay1, by1))
    small = min(aw * ah, bw * bh)
    return iw * ih / small if small > 0 else 0.0


def render_sample(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, list[Box]]:
    """One BGR uint8 image with 1-8 objects; returns (image, [(x, y, w, h, class_index), ...]).

    Boxes are tight pixel boxes in COCO ``xywh`` convention (x, y = top-left corner,
    the box covers ``[x, x + w) x [y, y + h)``), fully inside the image.
    """
    h, w = int(height), int(width)
    img = _background(rng, h, w)
    _clutter(rng, img)
    n_obj = int(rng.integers(1, 9))
    boxes: list[Box] = []
    max_r = 0.42 * min(h, w)
    for _ in range(n_obj):
        for _attempt in range(30):
            cls = int(rng.integers(0, len(CLASSES)))
            # log-uniform size: small to large
            r = float(math.exp(rng.uniform(math.log(6.0), math.log(max_r))))
            pts = _shape_points(cls, r, rng)
            if pts is None:
                half = np.array([r, r])
            else:
                half = np.abs(pts).max(axis=0)
            lo_x, hi_x = math.ceil(half[0]) + 1, w - math.ceil(half[0]) - 2
            lo_y, hi_y = math.ceil(half[1]) + 1, h - math.ceil(half[1]) - 2
            if hi_x < lo_x or hi_y < lo_y:
                continue
            cx = float(rng.uniform(lo_x, hi_x))
            cy = float(rng.uniform(lo_y, hi_y))
            if pts is None:
                ri = int(round(r))
                icx, icy = int(round(cx)), int(round(cy))
                box = (float(icx - ri), float(icy - ri), float(2 * ri + 1), float(2 * ri + 1))
            else:
                ipts = np.round(pts + np.array([cx, cy])).astype(np.int32)
                x0, y0 = ipts.min(axis=0)
                x1, y1 = ipts.max(axis=0)
                box = (float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1))
            # partial overlaps allowed, heavy occlusion not
            if any(_overlap(box, b[:4]) > 0.35 for b in boxes):
                continue
            # object colour must be distinguishable from local background
            bx0, by0 = int(box[0]), int(box[1])
            patch = img[by0:by0 + int(box[3]), bx0:bx0 + int(box[2])]
            mean_bg = patch.reshape(-1, 3).mean(axis=0).astype(np.float64)
            col = _rand_color(rng, avoid=mean_bg, min_dist=90.0)
            if pts is None:
                if CLASSES[cls] == "circle":
                    cv2.circle(img, (icx, icy), ri, col, -1, cv2.LINE_AA)
                else:  # ring
                    th = max(2, int(round(ri * float(rng.uniform(0.22, 0.4)))))
                    inner = max(1, ri - th // 2)
                    # thick circle is centred on the radius; draw so that the outer edge is at ri
                    cv2.circle(img, (icx, icy), inner, col, th, cv2.LINE_AA)
                    outer = inner + (th + 1) // 2
                    box = (float(icx - outer), float(icy - outer), float(2 * outer + 1), float(2 * outer + 1))
            else:
                cv2.fillPoly(img, [ipts], col, cv2.LINE_AA)
            # clip (rounding safety) and store
            x, y, bw, bh = box
            x, y = max(0.0, x), max(0.0, y)
            bw, bh = min(bw, w - x), min(bh, h - y)
            boxes.append((x, y, bw, bh, cls))
            break
    # mild global blur / noise on some images so edges are not always perfect
    if rng.uniform() < 0.3:
        k = 3
        img = cv2.GaussianBlur(img, (k, k), 0)
    if rng.uniform() < 0.5:
        noise = rng.normal(0.0, rng.uniform(2.0, 10.0), size=img.shape)
        img = np.clip(img.astype(np.float32) + noise.astype(np.float32), 0, 255).astype(np.uint8)
    return img, boxes


def random_size(rng: np.random.Generator) -> tuple[int, int]:
    """(height, width) drawn from the dataset's size distribution."""
    w = int(rng.integers(_W_RANGE[0], _W_RANGE[1] + 1))
    h = int(rng.integers(_H_RANGE[0], _H_RANGE[1] + 1))
    return h, w


def sample_image(seed: int, stream: int, index: int) -> tuple[np.ndarray, list[Box]]:
    """Image ``index`` of stream ``stream`` for ``seed`` (fully deterministic)."""
    rng = np.random.default_rng([int(seed), int(stream), int(index)])
    h, w = random_size(rng)
    return render_sample(rng, h, w)


def _manifest(n_eval: int, n_calib: int, seed: int) -> dict:
    return {"version": _MANIFEST_VERSION, "n_eval": int(n_eval), "n_calib": int(n_calib), "seed": int(seed),
            "classes": list(CLASSES)}


def generate_dataset(out_dir: str | Path, *, n_eval: int = 160, n_calib: int = 64, seed: int = 0) -> dict[str, Path]:
    """Write the eval set (PNG + COCO annotations) and the calibration images.

    Layout::

        out_dir/eval/images/000001.png ...   (COCO image ids 1..n_eval)
        out_dir/eval/annotations.json
        out_dir/calib/000001.png ...
        out_dir/manifest.json

    Regeneration is skipped when the manifest matches and all files exist.
    """
    out = Path(out_dir)
    eval_dir = out / "eval" / "images"
    ann_path = out / "eval" / "annotations.json"
    calib_dir = out / "calib"
    man_path = out / "manifest.json"
    result = {"eval_images": eval_dir, "eval_annotations": ann_path, "calib_images": calib_dir}
    want = _manifest(n_eval, n_calib, seed)

    def _complete() -> bool:
        if not (man_path.is_file() and ann_path.is_file()):
            return False
        try:
            if json.loads(man_path.read_text()) != want:
                return False
        except (OSError, ValueError):
            return False
        return (all((eval_dir / f"{i:06d}.png").is_file() for i in range(1, n_eval + 1))
                and all((calib_dir / f"{i:06d}.png").is_file() for i in range(1, n_calib + 1)))

    if _complete():
        return result

    if man_path.exists():
        man_path.unlink()
    eval_dir.mkdir(parents=True, exist_ok=True)
    calib_dir.mkdir(parents=True, exist_ok=True)
    for d, n in ((eval_dir, n_eval), (calib_dir, n_calib)):  # drop stale images from a different config
        for p in d.glob("*.png"):
            try:
                idx = int(p.stem)
            except ValueError:
                continue
            if idx > n:
                p.unlink()

    images, annotations = [], []
    ann_id = 1
    for i in range(1, n_eval + 1):
        img, boxes = sample_image(seed, EVAL_STREAM, i)
        fname = f"{i:06d}.png"
        if not cv2.imwrite(str(eval_dir / fname), img):
            raise OSError(f"failed to write {eval_dir / fname}")
        images.append({"id": i, "file_name": fname, "height": int(img.shape[0]), "width": int(img.shape[1])})
        for (x, y, bw, bh, c) in boxes:
            annotations.append({"id": ann_id, "image_id": i, "category_id": int(c) + 1,
                                "bbox": [float(x), float(y), float(bw), float(bh)],
                                "area": float(bw * bh), "iscrowd": 0})
            ann_id += 1
    coco = {
        "info": {"description": "autoq synthetic shapes demo", "version": str(_MANIFEST_VERSION)},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(CLASSES)],
    }
    ann_path.write_text(json.dumps(coco, sort_keys=True))
    for i in range(1, n_calib + 1):
        img, _ = sample_image(seed, CALIB_STREAM, i)
        if not cv2.imwrite(str(calib_dir / f"{i:06d}.png"), img):
            raise OSError(f"failed to write {calib_dir / f'{i:06d}.png'}")
    man_path.write_text(json.dumps(want, sort_keys=True))
    return result
