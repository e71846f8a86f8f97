"""Issue 19 part 2b: the paired bootstrap's mAP per resample, all IoU thresholds and resamples at once,
equals COCOeval's accumulate run row by row on the weighted counts (ignored detections and all)."""

from __future__ import annotations

import numpy as np
import pytest

from autoq.objectives.bootstrap import (
    CategoryStats,
    ImageStats,
    map_samples,
    resample_weights,
)


def _random_stats(seed: int, n_images: int = 12, n_cats: int = 5, t: int = 10) -> ImageStats:
    rng = np.random.default_rng(seed)
    cats = []
    for k in range(n_cats):
        d = int(rng.integers(0, 40))
        image = rng.integers(0, n_images, d).astype(np.int32)  # detections in score order
        kind = rng.choice(3, size=(t, d), p=[0.35, 0.55, 0.10])  # 0 TP, 1 FP, 2 ignored (crowd / area)
        kind = np.sort(kind, axis=0)  # a TP at a strict threshold is a TP at the looser ones
        gt = rng.integers(0, 3, n_images).astype(np.int32)
        if k == 0:
            gt[:] = 0
            gt[0] = 2  # ground truth on one image only: absent from most resamples
        cats.append(CategoryStats(image, kind == 0, kind == 1, gt))
    return ImageStats(n_images, np.linspace(0.0, 1.0, 101), tuple(cats))


def _cocoeval_row(stats: ImageStats, w: np.ndarray) -> float:
    """COCOeval.accumulate for one weight row: cumulative counts at every detection, the precision
    envelope, ``searchsorted(rc, recThrs, 'left')``; categories without ground truth left out."""
    aps = []
    for c in stats.categories:
        npig = float(w @ c.gt)
        if npig <= 0:
            continue
        t_count, d = c.tp.shape
        ap = 0.0
        for t in range(t_count):
            if d == 0:
                continue
            wi = w[c.image]
            tps, fps = np.cumsum(wi * c.tp[t]), np.cumsum(wi * c.fp[t])
            rc = tps / npig
            pr = np.maximum.accumulate((tps / (fps + tps + np.spacing(1)))[::-1])[::-1]
            inds = np.searchsorted(rc, stats.rec_thrs, side="left")
            ap += float(np.mean([pr[i] if i < d else 0.0 for i in inds]))
        aps.append(ap / t_count)
    return float(np.mean(aps)) if aps else 0.0


@pytest.mark.parametrize("seed", range(4))
def test_vectorized_map_equals_cocoeval_per_resample(seed):
    stats = _random_stats(seed)
    weights = resample_weights(stats.n_images, 60, seed)
    got = map_samples(stats, weights)
    want = np.array([_cocoeval_row(stats, w) for w in weights])
    assert np.abs(got - want).max() < 1e-12


def test_head_keeps_the_first_images_results():
    stats = _random_stats(7)
    head = stats.head(5)
    w = np.zeros((1, stats.n_images))
    w[0, :5] = 1.0  # the first five images once, the others never drawn
    assert head.n_images == 5
    assert map_samples(head, np.ones((1, 5)))[0] == pytest.approx(map_samples(stats, w)[0], abs=1e-12)
