#!/usr/bin/env python
"""Measure the quantization trade-off of the bundled demo detector.

Evaluates ``autoq/demo/detector.onnx`` on the synthetic eval set (``generate_dataset(seed=0)`` defaults)
in float, all-int8 QDQ (W8A8) and all-int16-activation QDQ (W8A16) with onnxruntime static quantization
(MinMax calibration on the 64 calibration images), and writes ``experiments/results/demo_tradeoff.json``.

Self-contained on purpose: letterbox, YOLOX decode, numpy NMS and the pycocotools evaluation are
implemented here (only ``autoq.demo.synthetic`` is imported from the package).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from autoq.demo.synthetic import CLASSES, generate_dataset  # noqa: E402

STRIDES = (8, 16, 32)


def letterbox(img: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """YOLOX preprocessing: keep aspect ratio, INTER_LINEAR, top-left, pad 114; returns CHW float32 (raw 0..255)."""
    h, w = img.shape[:2]
    r = min(size / h, size / w)
    out = np.full((size, size, 3), 114, dtype=np.uint8)
    resized = cv2.resize(img, (int(w * r), int(h * r)), interpolation=cv2.INTER_LINEAR)
    out[: resized.shape[0], : resized.shape[1]] = resized
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32), r


def make_grids(size: int) -> tuple[np.ndarray, np.ndarray]:
    g, s = [], []
    for st in STRIDES:
        n = size // st
        yy, xx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        g.append(np.stack([xx, yy], -1).reshape(-1, 2))
        s.append(np.full((n * n, 1), st))
    return np.concatenate(g).astype(np.float32), np.concatenate(s).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> np.ndarray:
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1) * np.maximum(0.0, yy2 - yy1)
        iou = inter / (areas[i] + areas[order[1:]] - inter + 1e-9)
        order = order[1:][iou <= thr]
    return np.array(keep, dtype=np.int64)


def decode(pred: np.ndarray, grids: np.ndarray, strides: np.ndarray, r: float, img_hw: tuple[int, int],
           score_thr: float = 0.01, nms_thr: float = 0.65, max_det: int = 100, decoded: bool = False):
    """YOLOX decode -> list of (xywh box, score, class index).

    ``decoded``: the graph already decoded the boxes (experiments/decode_in_graph.py); else raw grid
    offsets and log-sizes (decode_in_inference=False)."""
    p = pred.reshape(-1, pred.shape[-1]).astype(np.float64)
    if decoded:
        xy, wh = p[:, :2], p[:, 2:4]
    else:
        xy = (p[:, :2] + grids) * strides
        wh = np.exp(np.minimum(p[:, 2:4], 20.0)) * strides
    cls_scores = p[:, 5:] * p[:, 4:5]
    cls = cls_scores.argmax(1)
    score = cls_scores[np.arange(len(cls)), cls]
    m = score >= score_thr
    if not m.any():
        return []
    xy, wh, cls, score = xy[m], wh[m], cls[m], score[m]
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1) / r
    h, w = img_hw
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    keep_all = []
    for c in np.unique(cls):
        idx = np.nonzero(cls == c)[0]
        keep_all.append(idx[nms(boxes[idx], score[idx], nms_thr)])
    keep = np.concatenate(keep_all)
    keep = keep[np.argsort(-score[keep], kind="stable")][:max_det]
    return [((float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])), float(s), int(c))
            for b, s, c in zip(boxes[keep], score[keep], cls[keep])]


def session(path: str | Path, threads: int = 2) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def load_eval(ann_path: Path, img_dir: Path, size: int):
    coco = json.loads(Path(ann_path).read_text())
    items = []
    for im in coco["images"]:
        img = cv2.imread(str(img_dir / im["file_name"]), cv2.IMREAD_COLOR)
        x, r = letterbox(img, size)
        items.append((im["id"], x[None], r, img.shape[:2]))
    return items


def evaluate(model_path: Path, items, ann_path: Path, size: int, threads: int = 2) -> dict:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    sess = session(model_path, threads)
    inp = sess.get_inputs()[0].name
    grids, strides = make_grids(size)
    import onnx

    decoded = any(n.name == "decode_concat" for n in onnx.load(str(model_path)).graph.node)
    sess.run(None, {inp: items[0][1]})  # warm-up
    dets, t_infer = [], 0.0
    t_all = time.perf_counter()
    for img_id, x, r, hw in items:
        t = time.perf_counter()
        out = sess.run(None, {inp: x})[0]
        t_infer += time.perf_counter() - t
        for box, s, c in decode(out, grids, strides, r, hw, decoded=decoded):
            dets.append({"image_id": img_id, "category_id": c + 1, "bbox": [round(v, 3) for v in box],
                         "score": round(s, 5)})
    t_all = time.perf_counter() - t_all
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_path))
        if not dets:
            return {"mAP": 0.0, "mAP50": 0.0, "infer_s": t_infer, "infer_decode_s": t_all}
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"mAP": float(ev.stats[0]), "mAP50": float(ev.stats[1]), "mAP_small": float(ev.stats[3]),
            "mAP_medium": float(ev.stats[4]), "mAP_large": float(ev.stats[5]),
            "infer_s": t_infer, "infer_decode_s": t_all, "n_dets": len(dets)}


class CalibReader:
    def __init__(self, paths, input_name: str, size: int):
        self.data = iter([{input_name: letterbox(cv2.imread(str(p), cv2.IMREAD_COLOR), size)[0][None]} for p in paths])

    def get_next(self):
        return next(self.data, None)

    def rewind(self):  # pragma: no cover - not used by MinMax
        pass


def quantize(model: Path, out: Path, calib_paths, size: int, bits: int) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    inp = session(model).get_inputs()[0].name
    extra = {"ActivationSymmetric": False}
    if bits == 16:
        extra["UseQDQContribOps"] = True
    quantize_static(
        str(model), str(out), CalibReader(calib_paths, inp, size),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt16 if bits == 16 else QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=False,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options=extra,
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, default=ROOT / "autoq" / "demo" / "detector.onnx")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "autoq_demo_data")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "demo_tradeoff.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)

    t0 = time.time()
    paths = generate_dataset(args.data)  # defaults: n_eval=160, n_calib=64, seed=0
    print(f"dataset ready in {time.time() - t0:.1f}s at {args.data}", flush=True)
    sess = session(args.model)
    shape = sess.get_inputs()[0].shape
    size = int(shape[2])
    n_out = sess.get_outputs()[0].shape
    items = load_eval(paths["eval_annotations"], paths["eval_images"], size)
    calib = sorted(Path(paths["calib_images"]).glob("*.png"))

    res: dict = {"model": str(args.model.relative_to(ROOT)) if args.model.is_relative_to(ROOT) else str(args.model),
                 "model_bytes": args.model.stat().st_size, "input_size": size, "output_shape": n_out,
                 "classes": list(CLASSES), "n_eval": len(items), "n_calib": len(calib),
                 "threads": args.threads, "onnxruntime": ort.__version__,
                 "settings": {"score_thr": 0.01, "nms_iou": 0.65, "max_det": 100, "calibration": "MinMax",
                              "quant_format": "QDQ", "per_channel": False, "weights": "QInt8",
                              "ActivationSymmetric": False}}
    r = evaluate(args.model, items, paths["eval_annotations"], size, args.threads)
    res["float"] = r
    print(f"float : mAP={r['mAP']:.4f} mAP50={r['mAP50']:.4f}  inference {r['infer_s']:.3f}s "
          f"(+decode {r['infer_decode_s']:.3f}s) over {len(items)} images", flush=True)
    with tempfile.TemporaryDirectory() as td:
        for bits in (8, 16):
            q = Path(td) / f"w8a{bits}.onnx"
            t = time.time()
            quantize(args.model, q, calib, size, bits)
            tq = time.time() - t
            rq = evaluate(q, items, paths["eval_annotations"], size, args.threads)
            rq["quantize_s"] = tq
            rq["drop"] = r["mAP"] - rq["mAP"]
            res[f"int{bits}"] = rq
            print(f"int{bits}: mAP={rq['mAP']:.4f} mAP50={rq['mAP50']:.4f}  drop={rq['drop'] * 100:.2f} points  "
                  f"(quantize {tq:.1f}s, inference {rq['infer_s']:.3f}s)", flush=True)
    res["float_mAP"] = r["mAP"]
    res["int8_drop"] = res["int8"]["drop"]
    res["int16_drop"] = res["int16"]["drop"]
    res["float_infer_s"] = r["infer_s"]
    res["targets_met"] = {"int8_drop>=0.03": res["int8_drop"] >= 0.03, "int16_drop<=0.005": res["int16_drop"] <= 0.005,
                          "float_infer<1.5s": r["infer_s"] < 1.5}
    print(json.dumps({k: res[k] for k in ("float_mAP", "int8_drop", "int16_drop", "float_infer_s", "targets_met")},
                     indent=1))
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
