"""Early stop of hopeless trials: a trial runs on its first images and stops there when it
cannot reach the front (``search.dominance_stop``) or is far over ``search.max_map_drop``.

A trial's latency is known before it runs (the cost model), so the completed trial D with the best
drop at that latency or less is known too. The trial first runs on ``early_stop_images`` images
(¼ of the set by default); D's mAP minus the trial's on the same images is bootstrapped (paired: the images' own difficulty cancels). When even the interval's optimistic end
(2.5th percentile) says D is better, by more than 0.01 pt (the resolution drops are shown at), the
trial is dominated whatever the other images say: it stops there (Optuna PRUNED, user attrs
``partial`` and ``stopped_early``). Without D's per-image results (D evaluated by another worker or
an earlier run) the trial's own drop interval on those images is compared with D's drop.
Otherwise the same session runs the remaining images (`autoq.pipeline.Project.evaluate` with
``go_on``): no image runs or is scored twice.

No constraint is needed. A metric without per-image results (no interval) is never stopped by
dominance; neither is a trial of another resolution or variant (evaluated in full).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autoq.objectives.bootstrap import difference_samples
from autoq.pipeline import Project
from autoq.plan import TrialResult, percentile_interval
from autoq.trial_record import INFEASIBLE_ATTR

__all__ = ["best_drop_at", "completed_points", "dominated_by", "early_stop_images", "stop_reason"]

_TIE = 1e-4  # 0.01 pt, the resolution drops are shown at: closer to the best is a tie, not a stop


def early_stop_images(project: Project) -> int:
    """Images of the first stage (0 = every trial runs on the whole set at once): ``early_stop_images``
    (-1 = auto: a quarter of the set, at least 16; none below 32 images) when ``dominance_stop`` or
    ``max_map_drop`` asks for a first stage."""
    s = project.config.search
    n = len(project.eval_set.metas)
    if (s.max_map_drop is None and not s.dominance_stop) or s.early_stop_images == 0:
        return 0
    k = s.early_stop_images if s.early_stop_images > 0 else (max(16, n // 4) if n >= 32 else 0)
    return k if 0 < k < n else 0


def completed_points(study) -> list[tuple[float, float, int]]:
    """(drop, latency, trial number) of the completed trials that compile: read once per trial, since
    reading a study's trials back from its storage costs more than the early-stop test itself."""
    from optuna.trial import TrialState

    return [(float(t.values[0]), float(t.values[1]), t.number)
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if not t.user_attrs.get(INFEASIBLE_ATTR) and t.values is not None]


def best_drop_at(points: list[tuple[float, float, int]], latency_ms: float) -> tuple[float, int] | None:
    """(best drop, trial number) among ``points`` (`completed_points`) with latency <= ``latency_ms``;
    None when there is none."""
    best: tuple[float, int] | None = None
    for drop, latency, number in points:
        if latency <= latency_ms and (best is None or drop < best[0]):
            best = (drop, number)
    return best


def dominated_by(points: list[tuple[float, float, int]], part: TrialResult,
                 stats: Mapping[int, Any] | None = None) -> str | None:
    """Why the subset result ``part`` cannot reach the front of the completed trials ``points``
    (`completed_points`), or None.

    With the per-image results of the completed trial D that has the best drop at no more latency
    (``stats``: trial number -> `ImageStats` on the whole set, kept by this process), the test is
    paired on the same images: D's mAP minus the trial's on the subset, bootstrapped; stopped when
    even its optimistic end says D is better. The float model's noise on those images cancels, so
    this interval is much narrower than the drop's. Otherwise (D evaluated by another worker or an
    earlier run) the trial's own drop interval on the subset is compared with D's drop."""
    best = best_drop_at(points, part.latency_ms)
    if best is None:
        return None
    mine = part.image_stats
    theirs = (stats or {}).get(best[1])
    if mine is not None and theirs is not None and theirs.n_images >= mine.n_images:
        lo = percentile_interval(difference_samples(theirs.head(mine.n_images), mine).tolist())[0]
        if lo > _TIE:
            return (f"dominated: trial {best[1]} ({100 * best[0]:.2f} pt, at no more latency) is better by >= "
                    f"{100 * lo:.2f} pt on the same {part.images} images (95% paired interval's low end)")
    if not part.drop_boot:
        return None
    lo = percentile_interval(part.drop_boot)[0]
    if lo <= best[0] + _TIE:
        return None
    return (f"dominated: drop >= {100 * lo:.2f} pt on {part.images} images (95% interval's low end), trial "
            f"{best[1]} has {100 * best[0]:.2f} pt at no more latency")


def stop_reason(project: Project, points: list[tuple[float, float, int]], part: TrialResult,
                stats: Mapping[int, Any] | None = None) -> str | None:
    """Why a trial stops after its first stage (``part``): over ``max_map_drop`` by the margin, or
    dominated by the completed trials ``points`` (with ``dominance_stop``); None = run the remaining images."""
    s = project.config.search
    if s.max_map_drop is not None and part.map_drop > (s.max_map_drop + s.early_stop_margin) / 100.0:
        return (f"drop {100 * part.map_drop:.2f} pt on {part.images} images, over max_map_drop "
                f"{s.max_map_drop:g} + {s.early_stop_margin:g} pt")
    if s.dominance_stop:
        return dominated_by(points, part, stats)
    return None
