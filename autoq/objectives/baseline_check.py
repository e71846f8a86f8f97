"""Sanity checks on the float baseline, before any trial: a meaningless baseline stops the run.

A float model whose outputs are NaN, or whose mAP is ~0 because no annotation belongs to an eval
image, the images are specks or nothing is detected, makes every trial's drop 0.00 and the front
recommend all-int8. These checks say which of those it is, in one line (`DataError`/`ModelError`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from autoq.adapters.base import Detections
from autoq.data.coco import EvalSet
from autoq.errors import DataError, ModelError

__all__ = ["MIN_IMAGE_SIDE", "check_finite", "check_float_map"]

MIN_IMAGE_SIDE = 8  # px: an eval image smaller than this cannot hold a detectable object


def check_finite(outputs: Sequence[Sequence[Any]], output_names: Sequence[str], model: str) -> None:
    """`ModelError` when any float output is NaN or infinite (no drop can be measured from it)."""
    for k, batch in enumerate(outputs):
        for i, array in enumerate(batch):
            a = np.asarray(array)
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                name = output_names[i] if i < len(output_names) else str(i)
                what = "NaN" if np.isnan(a).any() else "inf"
                raise ModelError(
                    f"{model}: the float model outputs {what} (output {name!r}, batch {k} of the eval set); "
                    "no quantization drop can be measured from it: check the export (fp16 overflow) and "
                    "preprocess mean/std in autoq.yaml"
                )


def check_float_map(
    eval_set: EvalSet,
    value: float,
    *,
    minimum: float,
    annotations: str,
    detect: Callable[[], list[Detections]],
) -> None:
    """With annotations, a float mAP below ``minimum`` stops the run with its most likely cause.

    ``detect`` gives the float model's detections (called only when the value is too low).
    """
    coco = eval_set.coco
    if coco is None or minimum <= 0 or value >= minimum:
        return
    ids = set(eval_set.image_ids)
    anns = coco.dataset.get("annotations", [])
    matched = [a for a in anns if a["image_id"] in ids]
    if not matched:
        ann_ids = sorted({a["image_id"] for a in anns})[:3]
        raise DataError(
            f"{annotations}: none of its {len(anns)} annotations has the image_id of one of the "
            f"{len(ids)} eval images (annotation image_ids {ann_ids}..., image ids {sorted(ids)[:3]}...); "
            "fix image_id in the annotations or data.eval_images"
        )
    small = [(f, m) for f, m in zip(eval_set.files, eval_set.metas) if min(m.orig_h, m.orig_w) < MIN_IMAGE_SIDE]
    if small:
        f, m = small[0]
        raise DataError(
            f"{annotations}: {len(small)} of {len(ids)} eval images are smaller than {MIN_IMAGE_SIDE} px "
            f"(e.g. {f}: {m.orig_w}x{m.orig_h}) and the float mAP is {100 * value:.2f}; give full-size eval images"
        )
    detections = detect()
    if not any(len(d) for d in detections):
        raise DataError(
            f"the float model detects nothing on any of the {len(ids)} eval images; check model.adapter, "
            "model.adapter_options (num_classes, score_threshold) and preprocess in autoq.yaml"
        )
    raise DataError(
        f"the float model's mAP on {annotations} is {100 * value:.2f} (below {100 * minimum:.2f}): every trial "
        "would show a 0.00 drop; check that the annotations belong to these images, model.adapter/adapter_options "
        "and preprocess (color, mean/std), or lower objective.min_baseline"
    )
