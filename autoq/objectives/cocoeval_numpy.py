"""pycocotools' ``COCOeval.evaluateImg`` and ``accumulate``, vectorized with numpy, value for value.

Scoring a trial is COCOeval's per-image matching, its ``accumulate``, and the adapter's decode. Both
COCOeval halves loop in Python: ``evaluateImg`` over IoU thresholds x detections x ground truths,
once per area range (4 calls per image and category), ``accumulate`` over every detection of a
category to make the precision envelope. Here one numpy step per detection decides all 4 x 10
(area, threshold) matches together (detections that overlap no ground truth at the lowest threshold
are skipped outright: most of a detector's low-score boxes), and the envelope is a reversed
cumulative maximum.

`evaluate_image` returns pycocotools' own dictionaries and `precision` its ``eval["precision"]``, value
for value (tests/test_cocoeval_numpy.py compares both with pycocotools on crowd boxes, area-ignored
ground truth, score and IoU ties, empty images), so the bootstrap and everything downstream are unchanged. The rule being reproduced,
for each threshold, detections in score order (stable), ground truths non-ignored first (stable):
the detection takes the *last* ground truth of highest IoU >= the threshold among those not yet
taken (crowd boxes are never taken), looking at ignored ground truths only when no regular one
qualifies; a detection matched to an ignored ground truth, or unmatched and outside the area range,
is ignored.

Why not faster-coco-eval (a maintained C++ COCOeval, exact): it is 4x faster than pycocotools on a
whole set, but it keeps the per-image matches inside C++, and the paired bootstrap of every drop
(`autoq.objectives.bootstrap`) needs them, as does scoring image by image while inference runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["evaluate_image", "precision"]


def evaluate_image(ev: Any, image_id: int, cat_id: int, max_det: int) -> list[dict[str, Any] | None]:
    """``[ev.evaluateImg(image_id, cat_id, a, max_det) for a in ev.params.areaRng]``, computed together.

    ``ev`` is a prepared bbox ``COCOeval`` (``_gts``/``_dts`` filled, ``ious[image_id, cat_id]`` computed
    by ``computeIoU``), as in ``COCOeval.evaluate``."""
    p = ev.params
    gt = ev._gts[image_id, cat_id]
    dt = ev._dts[image_id, cat_id]
    ranges = [list(a) for a in p.areaRng]
    if not gt and not dt:
        return [None] * len(ranges)
    order = np.argsort([-d["score"] for d in dt], kind="mergesort")[:max_det]
    dt = [dt[i] for i in order]
    n_area, n_thr, n_gt, n_dt = len(ranges), len(p.iouThrs), len(gt), len(dt)
    lo = np.array([a[0] for a in ranges], np.float64)[:, None]
    hi = np.array([a[1] for a in ranges], np.float64)[:, None]
    g_area = np.array([g["area"] for g in gt], np.float64)[None, :]
    g_ignore = np.array([bool(g["ignore"]) for g in gt], bool)[None, :] | (g_area < lo) | (g_area > hi)  # [A, G]
    crowd = np.array([bool(g["iscrowd"]) for g in gt], bool)
    gt_ids = np.array([g["id"] for g in gt], np.float64)
    dt_ids = np.array([d["id"] for d in dt], np.float64)

    dtm = np.zeros((n_area, n_thr, n_dt))
    gtm = np.zeros((n_area, n_thr, n_gt))
    dt_ig = np.zeros((n_area, n_thr, n_dt), bool)
    ious = ev.ious[image_id, cat_id]
    if len(ious) and n_dt and n_gt:
        ious = np.asarray(ious, np.float64)[:n_dt]  # computeIoU keeps maxDets[-1] rows
        thr = np.minimum(np.asarray(p.iouThrs, np.float64), 1 - 1e-10)[None, :, None]  # [1, T, 1]
        taken = np.zeros((n_area, n_thr, n_gt), bool)  # matched regular (non-crowd) ground truth
        a_idx, t_idx = np.indices((n_area, n_thr))
        for d in np.flatnonzero(ious.max(axis=1) >= thr.min()):
            v = ious[d]
            cand = (v >= thr) & ~taken  # [A, T, G]
            regular = cand & ~g_ignore[:, None, :]
            use = np.where(regular.any(axis=2, keepdims=True), regular, cand)
            has = use.any(axis=2)
            if not has.any():
                continue
            m = n_gt - 1 - np.argmax(np.where(use, v, -1.0)[..., ::-1], axis=2)  # the last ground truth of highest IoU
            a_m, t_m, m_m = a_idx[has], t_idx[has], m[has]
            dtm[a_m, t_m, d] = gt_ids[m_m]
            gtm[a_m, t_m, m_m] = dt_ids[d]
            dt_ig[a_m, t_m, d] = g_ignore[a_m, m_m]
            keep = ~crowd[m_m]
            taken[a_m[keep], t_m[keep], m_m[keep]] = True
    d_area = np.array([d["area"] for d in dt], np.float64)[None, :]
    outside = (d_area < lo) | (d_area > hi)  # [A, D]
    dt_ig |= (dtm == 0) & outside[:, None, :]

    scores = [d["score"] for d in dt]
    out = []
    for a in range(n_area):
        gind = np.argsort(g_ignore[a].astype(np.int64), kind="mergesort")  # ignored ground truth last
        out.append({
            "image_id": image_id,
            "category_id": cat_id,
            "aRng": ranges[a],
            "maxDet": max_det,
            "dtIds": [d["id"] for d in dt],
            "gtIds": [gt[i]["id"] for i in gind],
            "dtMatches": dtm[a],
            "gtMatches": gtm[a][:, gind],
            "dtScores": scores,
            "gtIgnore": g_ignore[a][gind].astype(np.int64),
            "dtIgnore": dt_ig[a],
        })
    return out


def precision(per_image: list[list[dict[str, Any] | None]], n_categories: int, n_areas: int, iou_thrs: np.ndarray,
              rec_thrs: np.ndarray, max_det: int) -> np.ndarray:
    """``COCOeval.accumulate``'s ``eval["precision"][..., m]`` ([T, R, K, A]) at ``maxDets[m] = max_det``, from
    ``per_image[i][k * n_areas + a]`` = ``evaluateImg(image i, category k, area a, max_det)``."""
    n_thr, n_rec = len(iou_thrs), len(rec_thrs)
    out = -np.ones((n_thr, n_rec, n_categories, n_areas))
    rec_thrs = np.asarray(rec_thrs)
    for k in range(n_categories):
        for a in range(n_areas):
            rows = [r[k * n_areas + a] for r in per_image]
            rows = [e for e in rows if e is not None]
            if not rows:
                continue
            scores = np.concatenate([e["dtScores"][0:max_det] for e in rows])
            order = np.argsort(-scores, kind="mergesort")
            dtm = np.concatenate([e["dtMatches"][:, 0:max_det] for e in rows], axis=1)[:, order]
            dt_ig = np.concatenate([e["dtIgnore"][:, 0:max_det] for e in rows], axis=1)[:, order]
            npig = np.count_nonzero(np.concatenate([e["gtIgnore"] for e in rows]) == 0)
            if npig == 0:
                continue
            tp = np.cumsum(np.logical_and(dtm, np.logical_not(dt_ig)), axis=1).astype(float)
            fp = np.cumsum(np.logical_and(np.logical_not(dtm), np.logical_not(dt_ig)), axis=1).astype(float)
            nd = tp.shape[1]
            if nd == 0:
                out[:, :, k, a] = 0.0
                continue
            rc = tp / npig
            pr = tp / (fp + tp + np.spacing(1))
            envelope = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # accumulate's right-to-left max
            for t in range(n_thr):
                idx = np.searchsorted(rc[t], rec_thrs, side="left")
                inside = idx < nd  # accumulate leaves the recall levels beyond the last detection at 0
                out[t, :, k, a] = np.where(inside, envelope[t, np.minimum(idx, nd - 1)], 0.0)
    return out
