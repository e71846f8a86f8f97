"""How noisy a drop is: paired bootstrap of COCO mAP over the evaluation images.

A trial's drop ``float_map - trial_map`` on 80 images moves by a point or more with the images drawn.
Each resample draws the images with replacement (multinomial counts, the same fixed draws for every
model of a study), and mAP is recomputed from COCOeval's per-image results (`ImageStats`) with each
image weighted by its count: float and trial on the same resample, so the interval is that of the
*difference*, not of two independent mAPs.

The weighted mAP is COCOeval's ``accumulate`` (area "all", the largest maxDets) with an image's
detections and ground truth counted ``w`` times; with every weight 1 it is COCOeval's mAP
(tests/test_morning_units.py). Ties between equal scores are ordered as COCOeval orders them in
the unweighted set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoq.plan import percentile_interval

__all__ = [
    "RESAMPLES",
    "ImageStats",
    "difference_samples",
    "drop_interval",
    "drop_samples",
    "map_samples",
    "paired_interval",
    "resample_weights",
]

RESAMPLES = 200  # 95% percentile interval: 200 draws put each end within ~0.1 pt on 80 images
LEVEL = 0.95


@dataclass(frozen=True)
class CategoryStats:
    """One category over the eval set: detections in COCOeval's order (score descending, stable)."""

    image: np.ndarray  # [D] index of the image each detection is on
    tp: np.ndarray  # [T, D] bool: matched (and not ignored) at each IoU threshold
    fp: np.ndarray  # [T, D] bool: unmatched and not ignored
    gt: np.ndarray  # [N] non-ignored ground truth per image


@dataclass(frozen=True)
class ImageStats:
    """COCOeval's per-image results reduced to what mAP needs, per category; images by position."""

    n_images: int
    rec_thrs: np.ndarray  # [R]
    categories: tuple[CategoryStats, ...]

    @classmethod
    def from_eval_imgs(cls, per_image: Sequence[Sequence[Any]], n_categories: int, n_areas: int,
                       rec_thrs: np.ndarray, max_det: int, n_iou: int) -> ImageStats:
        """From ``per_image[i][k * n_areas + 0]`` = ``COCOeval.evaluateImg(img_i, cat_k, area "all", max_det)``."""
        n = len(per_image)
        cats = []
        for k in range(n_categories):
            scores, images, matches, ignores = [], [], [], []
            gt = np.zeros(n, np.int32)
            for i, row in enumerate(per_image):
                e = row[k * n_areas]
                if e is None:
                    continue
                s = np.asarray(e["dtScores"][:max_det], np.float64)
                scores.append(s)
                images.append(np.full(len(s), i, np.int32))
                matches.append(np.asarray(e["dtMatches"])[:, :max_det])
                ignores.append(np.asarray(e["dtIgnore"])[:, :max_det])
                gt[i] = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
            if not gt.any():
                continue  # no ground truth in the set: COCOeval never averages it, nor does any resample
            if not scores:  # ground truth but no detection: AP 0 wherever its images are drawn
                none = np.zeros((n_iou, 0), bool)
                cats.append(CategoryStats(np.zeros(0, np.int32), none, none, gt))
                continue
            s = np.concatenate(scores)
            order = np.argsort(-s, kind="mergesort")
            dtm = np.concatenate(matches, axis=1)[:, order]
            dti = np.concatenate(ignores, axis=1)[:, order].astype(bool)
            cats.append(CategoryStats(np.concatenate(images)[order], np.logical_and(dtm, ~dti),
                                      np.logical_and(np.logical_not(dtm), ~dti), gt))
        return cls(n, np.asarray(rec_thrs, np.float64), tuple(cats))

    def head(self, k: int) -> ImageStats:
        """The same results on the first ``k`` images only (a trial compared on an early-stop subset)."""
        if k >= self.n_images:
            return self
        cats = []
        for c in self.categories:
            if not c.gt[:k].any():
                continue  # no ground truth among them: COCOeval would not average it
            keep = c.image < k
            cats.append(CategoryStats(c.image[keep], c.tp[:, keep], c.fp[:, keep], c.gt[:k]))
        return ImageStats(k, self.rec_thrs, tuple(cats))

    def to_json(self) -> dict[str, Any]:
        return {"n_images": self.n_images, "rec_thrs": self.rec_thrs.tolist(), "categories": [
            {"image": c.image.tolist(), "tp": np.packbits(c.tp, axis=1).tolist(), "fp": np.packbits(c.fp, axis=1).tolist(),
             "d": int(c.tp.shape[1]), "t": int(c.tp.shape[0]), "gt": c.gt.tolist()} for c in self.categories]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageStats:
        cats = []
        for c in data["categories"]:
            d, t = int(c["d"]), int(c["t"])

            def bits(v, d=d, t=t):
                return np.unpackbits(np.asarray(v, np.uint8).reshape(t, -1), axis=1, count=d).astype(bool)

            cats.append(CategoryStats(np.asarray(c["image"], np.int32), bits(c["tp"]), bits(c["fp"]),
                                      np.asarray(c["gt"], np.int32)))
        return cls(int(data["n_images"]), np.asarray(data["rec_thrs"], np.float64), tuple(cats))


def resample_weights(n_images: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """[B, N] image counts of each resample (fixed by ``seed``: every model of a study is drawn alike)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=resamples).astype(np.float64)


def _category_ap(c: CategoryStats, weights: np.ndarray, rec_thrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AP of one category under each row of ``weights`` [B, N]; and whether it had ground truth.

    All IoU thresholds and resamples at once. Precision is only needed where recall rises (at true
    positives), so the weighted running counts (integer-valued sums: exact in any order) are read
    there only. COCOeval's interpolated precision at recall threshold r is the largest precision
    among the points with recall >= r: each point is put in the bucket of the thresholds it reaches
    (``searchsorted``), and a running maximum from the top bucket down gives every threshold's value."""
    b, n = weights.shape
    npig = weights @ c.gt  # [B]
    valid = npig > 0
    t_count, d = c.tp.shape
    total = np.zeros(b)
    if d == 0 or not c.tp.any():
        return total, valid
    w = weights.T[c.image]  # [D, B]: the weight of each detection's image
    ts, js = np.nonzero(c.tp)  # every (threshold, position) true positive, threshold-major
    tn, jn = np.nonzero(~(c.tp | c.fp))  # ignored detections (neither TP nor FP): usually few
    tkey, ikey = ts * d + js, tn * d + jn
    starts = np.arange(t_count) * d

    def segmented(t_of, j_of, key):  # running weighted count along each threshold's listed detections
        run = np.zeros((len(j_of) + 1, b))
        np.cumsum(w[j_of], axis=0, out=run[1:])
        return run, run[np.searchsorted(key, starts)[t_of]]

    # integer-valued sums: exact in any order. One cumsum over all thresholds, less its value where
    # the threshold's segment starts.
    tp_run, tp_start = segmented(ts, js, tkey)
    tp = tp_run[1:] - tp_start  # [S, B] TPs up to and with each TP
    all_run = np.zeros((d + 1, b))
    np.cumsum(w, axis=0, out=all_run[1:])  # every detection, whatever the threshold
    ig_run, _ = segmented(tn, jn, ikey)
    ig_before = ig_run[np.searchsorted(ikey, tkey)] - ig_run[np.searchsorted(ikey, starts)[ts]]
    fp = all_run[js] - (tp - w[js]) - ig_before  # FPs before each TP: the others before it
    rc = tp / np.maximum(npig, 1e-12)
    pr = tp / (tp + fp + np.spacing(1))
    reached = np.searchsorted(rec_thrs, np.minimum(rc, 1.0), side="right")  # thresholds <= recall
    r = len(rec_thrs)
    best = np.zeros((r + 1, t_count * b))  # [bucket, (t, b)], the highest bucket (all thresholds reached) first
    np.maximum.at(best.ravel(), (r - reached) * (t_count * b) + (ts * b)[:, None] + np.arange(b), pr)
    q, q_sum = best[0], np.zeros(t_count * b)  # the best precision at recall >= each threshold, top down
    for k in range(r):  # row by row: numpy's accumulate along axis 0 is several times slower
        q = np.maximum(q, best[k])
        q_sum += q
    per_t = (q_sum / r).reshape(t_count, b)
    for t in range(t_count):
        total += per_t[t]
    return total / t_count, valid


def map_samples(stats: ImageStats, weights: np.ndarray) -> np.ndarray:
    """mAP@[.5:.95] under each resample (rows of ``weights``, [B, N]); a category is averaged only in
    the resamples that hold its ground truth, as COCOeval leaves out categories without any."""
    if weights.shape[1] != stats.n_images:
        raise ValueError(f"weights for {weights.shape[1]} images, stats of {stats.n_images}")
    total = np.zeros(weights.shape[0])
    count = np.zeros(weights.shape[0])
    for c in stats.categories:
        ap, valid = _category_ap(c, weights, stats.rec_thrs)
        total += np.where(valid, ap, 0.0)
        count += valid
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


_FLOAT_MEMO: dict[int, tuple[ImageStats, np.ndarray]] = {}


def drop_samples(base: ImageStats, trial: ImageStats, *, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """Paired bootstrap samples of ``mAP(base) - mAP(trial)`` (0..1 scale), float and trial on the same draws."""
    if base.n_images != trial.n_images:
        raise ValueError(f"float stats on {base.n_images} images, trial on {trial.n_images}")
    weights = resample_weights(base.n_images, resamples, seed)
    memo = _FLOAT_MEMO.get(id(base))
    if memo is None or memo[0] is not base or len(memo[1]) != resamples:
        memo = (base, map_samples(base, weights))
        if len(_FLOAT_MEMO) >= 4:  # a study has one float model per eval set (the whole set, the early-stop subset)
            _FLOAT_MEMO.pop(next(iter(_FLOAT_MEMO)))
        _FLOAT_MEMO[id(base)] = memo
    return memo[1] - map_samples(trial, weights)


def difference_samples(a: ImageStats, b: ImageStats, *, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """Paired bootstrap samples of ``mAP(a) - mAP(b)`` (0..1), both on the same draws of their images."""
    if a.n_images != b.n_images:
        raise ValueError(f"stats on {a.n_images} and {b.n_images} images")
    weights = resample_weights(a.n_images, resamples, seed)
    return map_samples(a, weights) - map_samples(b, weights)


def paired_interval(samples: Sequence[float] | np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap ``samples`` (`autoq.plan.percentile_interval`)."""
    return percentile_interval(np.asarray(samples, np.float64).tolist(), level)


def drop_interval(base: ImageStats, trial: ImageStats, **kw: Any) -> tuple[float, float]:
    """95% paired bootstrap interval of the drop (0..1 scale)."""
    return paired_interval(drop_samples(base, trial, **kw))


def stats_to_json(stats: ImageStats | None) -> dict[str, Any] | None:
    return None if stats is None else stats.to_json()


def stats_from_json(data: Mapping[str, Any] | None) -> ImageStats | None:
    """``None`` (a metric without per-image results, or an unreadable record) stays None: no interval."""
    if not data:
        return None
    try:
        return ImageStats.from_json(data)
    except (KeyError, TypeError, ValueError):
        return None


def trial_drop_samples(base: ImageStats | None, trial: ImageStats | None) -> tuple[float, ...]:
    """Paired drop samples of a trial against the float model; () when either has no per-image
    results or they cover different images (an early-stop subset)."""
    if base is None or trial is None or base.n_images != trial.n_images:
        return ()
    return tuple(float(x) for x in drop_samples(base, trial))
