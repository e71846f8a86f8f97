"""COCO mAP of one model on a cached evaluation set.

`evaluate` = `autoq.runtime.runner.run_model` (ORT over the cached uint8 images) -> `detect` (adapter) -> `coco_metrics`
(pycocotools' COCOeval, its per-image matching and accumulate vectorized in `autoq.objectives.cocoeval_numpy`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from autoq.adapters import bind_input_size
from autoq.adapters.base import Adapter, Detections, ImageMeta
from autoq.data.coco import quiet_coco
from autoq.data.preprocess import Preprocess
from autoq.objectives.bootstrap import ImageStats
from autoq.objectives.cocoeval_numpy import evaluate_image
from autoq.objectives.cocoeval_numpy import precision as coco_precision
from autoq.runtime.runner import run_model

if TYPE_CHECKING:
    import onnxruntime

    from autoq.data.coco import EvalSet
    from autoq.runtime.session import SessionSettings

__all__ = [
    "CocoEvaluation",
    "CocoMetrics",
    "coco_metrics",
    "detect",
    "detect_batches",
    "evaluate",
    "pseudo_ground_truth",
]


@dataclass(frozen=True)
class CocoMetrics:
    """COCO bbox metrics; size-range APs are nan when the set has no ground truth of that size."""
    map: float
    map50: float
    map_small: float
    map_medium: float
    map_large: float
    per_class_ap: Mapping[str, float] = field(default_factory=dict)  # classes without GT omitted

    def to_dict(self) -> dict[str, Any]:
        return {
            "map": self.map,
            "map50": self.map50,
            "map_small": self.map_small,
            "map_medium": self.map_medium,
            "map_large": self.map_large,
            "per_class_ap": dict(self.per_class_ap),
        }


def detect(
    outputs_per_batch: Sequence[Sequence[np.ndarray]],
    metas: Sequence[ImageMeta],
    adapter: Adapter,
    *,
    input_size: tuple[int, int] | None = None,
) -> list[Detections]:
    """Adapter over each batch's outputs; ``input_size`` (h, w) is handed to adapters that need it."""
    return [d for batch in detect_batches(outputs_per_batch, metas, adapter, input_size=input_size) for d in batch]


def detect_batches(
    outputs_per_batch: Sequence[Sequence[np.ndarray]],
    metas: Sequence[ImageMeta],
    adapter: Adapter,
    *,
    input_size: tuple[int, int] | None = None,
    skip: int = 0,
) -> Iterator[list[Detections]]:
    """`detect`, one batch at a time (in order: with `StreamedOutputs`, while later batches still run);
    the first ``skip`` batches are passed over (their images already detected)."""
    adapter = bind_input_size(adapter, input_size)
    start = 0
    for k, outputs in enumerate(outputs_per_batch):
        n = int(np.asarray(outputs[0]).shape[0]) if len(outputs) else 0
        if k >= skip:
            yield list(adapter(outputs, metas[start : start + n]))
        start += n
    if start != len(metas):
        raise ValueError(f"outputs cover {start} images but {len(metas)} metas were given")


def _num(value: float) -> float:
    return float("nan") if value < 0 else float(value)


def coco_metrics(detections: Sequence[Detections], eval_set: EvalSet) -> CocoMetrics:
    """COCOeval bbox over the images of ``eval_set`` (only those: subsets evaluate their own images)."""
    evaluation = CocoEvaluation(eval_set)  # raises on a detection count other than the image count
    evaluation.add(detections)
    return evaluation.result()


class CocoEvaluation:
    """pycocotools' bbox COCOeval fed image by image, so it can run while inference continues.

    ``add`` evaluates each image as its detections arrive (COCOeval's ``computeIoU`` and ``evaluateImg``,
    the per-image half of ``evaluate``; `evaluate_image` does every area range at once); ``result`` runs
    ``accumulate`` (vectorized: `autoq.objectives.cocoeval_numpy.precision`) over all of them and
    averages the precisions as ``summarize`` does. The numbers are those of ``loadRes`` + ``evaluate`` on all
    detections at once (tests/test_accuracy.py compares them): detections are the same
    dictionaries ``loadRes`` makes (ids in image order, area = w*h) and ground truth is prepared
    as ``COCOeval._prepare`` does.
    """

    def __init__(self, eval_set: EvalSet) -> None:
        from collections import defaultdict

        from pycocotools.cocoeval import COCOeval

        gt = eval_set.coco
        if gt is None:
            raise ValueError("COCO evaluation needs ground truth (data.eval_annotations)")
        self._eval_set = eval_set
        ev = COCOeval(gt, None, "bbox")
        p = ev.params
        p.imgIds = [int(i) for i in np.unique(list(eval_set.image_ids))]
        p.catIds = [int(c) for c in np.unique(p.catIds)]
        p.maxDets = sorted(p.maxDets)
        ev._gts, ev._dts = defaultdict(list), defaultdict(list)
        for ann in gt.loadAnns(gt.getAnnIds(imgIds=p.imgIds, catIds=p.catIds)):
            ann["ignore"] = "iscrowd" in ann and ann["iscrowd"]
            ev._gts[ann["image_id"], ann["category_id"]].append(ann)
        ev.ious = {}
        self._ev = ev
        self._known_images = set(p.imgIds)
        self._cat_ids = np.asarray(eval_set.category_ids, np.int64)
        self._scored_cats = set(p.catIds)
        self._per_image: dict[int, list[Any]] = {}  # image id -> evaluateImg results (cat-major, area-minor)
        self._next = 0  # index into eval_set.metas of the next image to arrive
        self._detections = 0

    def add(self, detections: Sequence[Detections]) -> None:
        """Evaluates the next ``len(detections)`` images of the eval set, in eval-set order."""
        metas = self._eval_set.metas[self._next : self._next + len(detections)]
        if len(metas) != len(detections):
            raise ValueError(f"{self._next + len(detections)} detections for {len(self._eval_set.metas)} images")
        self._next += len(detections)
        ev, p = self._ev, self._ev.params
        max_det = p.maxDets[-1]
        for det, meta in zip(detections, metas):
            image_id = meta.image_id
            for ann in self._results(det, image_id):
                if ann["category_id"] in self._scored_cats:
                    ev._dts[image_id, ann["category_id"]].append(ann)
            if image_id not in self._known_images:
                continue
            # A category with neither ground truth nor detections in this image evaluates to None
            # (COCOeval.evaluateImg's first check): only the others are evaluated.
            present = {cat for cat in p.catIds if (image_id, cat) in ev._gts or (image_id, cat) in ev._dts}
            none = [None] * len(p.areaRng)
            row = []
            for cat in p.catIds:
                if cat in present:
                    ev.ious[image_id, cat] = ev.computeIoU(image_id, cat)
                    row.extend(evaluate_image(ev, image_id, cat, max_det))  # = evaluateImg for each area range
                else:
                    row.extend(none)
            self._per_image[image_id] = row

    def resume(self, earlier: tuple[int, CocoEvaluation]) -> tuple[int, int]:
        """Takes over the images ``earlier`` = (batches, evaluation) evaluated: an evaluation of a prefix
        of this one's eval set (a trial's early-stop subset), whose per-image results are the same here.
        Returns (batches, images) taken over; the next `add` continues after them."""
        batches, other = earlier
        n = other._next
        if tuple(other._eval_set.metas[:n]) != tuple(self._eval_set.metas[:n]) or self._next:
            raise ValueError("resume: the earlier evaluation is not of a prefix of this eval set")
        ev = self._ev
        for meta in other._eval_set.metas[:n]:
            i = meta.image_id
            if i in other._per_image:
                self._per_image[i] = other._per_image[i]
            for cat in ev.params.catIds:
                if (i, cat) in other._ev._dts:
                    ev._dts[i, cat] = other._ev._dts[i, cat]
        self._next, self._detections = n, other._detections
        return batches, n

    def _results(self, det: Detections, image_id: int) -> list[dict[str, Any]]:
        if len(det) == 0:
            return []
        b = np.asarray(det.boxes, np.float64)
        xywh = np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1).round(3).tolist()
        cats = self._cat_ids[np.asarray(det.labels, np.int64)].tolist()
        scores = np.asarray(det.scores, np.float64).round(5).tolist()
        out = []
        for bb, c, sc in zip(xywh, cats, scores):
            self._detections += 1
            out.append({"image_id": image_id, "category_id": c, "bbox": bb, "score": sc,
                        "area": bb[2] * bb[3], "id": self._detections, "iscrowd": 0})
        return out

    def image_stats(self) -> ImageStats:
        """The per-image results reduced for the paired bootstrap (`autoq.objectives.bootstrap`)."""
        if self._next != len(self._eval_set.metas):
            raise ValueError(f"{self._next} detections for {len(self._eval_set.metas)} images")
        p = self._ev.params
        max_det = p.maxDets[-1]
        rows = [self._per_image[i] for i in p.imgIds]
        area_all = list(p.areaRngLbl).index("all")
        if area_all:
            rows = [r[area_all:] for r in rows]
        return ImageStats.from_eval_imgs(rows, len(p.catIds), len(p.areaRng), np.asarray(p.recThrs), max_det,
                                         len(p.iouThrs))

    def result(self) -> CocoMetrics:
        """accumulate + summarize over every image added (all of the eval set must have been added)."""
        if self._next != len(self._eval_set.metas):
            raise ValueError(f"{self._next} detections for {len(self._eval_set.metas)} images")
        if not self._detections:
            return CocoMetrics(0.0, 0.0, 0.0, 0.0, 0.0, {})
        p = self._ev.params
        # Only the AP at the largest maxDets is reported (the means below are those of
        # COCOeval.summarize's AP lines); `precision` is accumulate's, vectorized.
        rows = [self._per_image[i] for i in p.imgIds]
        precision = coco_precision(rows, len(p.catIds), len(p.areaRng), p.iouThrs, p.recThrs, p.maxDets[-1])
        area = {label: i for i, label in enumerate(p.areaRngLbl)}
        iou50 = np.flatnonzero(np.isclose(p.iouThrs, 0.5))

        def mean_ap(prec: np.ndarray) -> float:
            valid = prec[prec > -1]
            return float(valid.mean()) if valid.size else -1.0

        per_class: dict[str, float] = {}
        names = dict(zip(self._eval_set.category_ids, self._eval_set.class_names))
        for k, cat_id in enumerate(p.catIds):
            ap = mean_ap(precision[:, :, k, area["all"]])
            if ap > -1:
                per_class[names.get(cat_id, str(cat_id))] = ap
        return CocoMetrics(
            map=max(0.0, mean_ap(precision[..., area["all"]])),
            map50=max(0.0, mean_ap(precision[iou50][..., area["all"]])),
            map_small=_num(mean_ap(precision[..., area["small"]])),
            map_medium=_num(mean_ap(precision[..., area["medium"]])),
            map_large=_num(mean_ap(precision[..., area["large"]])),
            per_class_ap=per_class,
        )


def evaluate(
    session_or_bytes: onnxruntime.InferenceSession | bytes,
    eval_set: EvalSet,
    pp: Preprocess,
    adapter: Adapter,
    *,
    batch_size: int = 1,
    settings: SessionSettings | None = None,
) -> tuple[CocoMetrics, list[Detections]]:
    """mAP of one model on ``eval_set``; also returns the detections (baseline caching, pseudo-GT)."""
    outputs = run_model(session_or_bytes, eval_set.images, pp, batch_size=batch_size, settings=settings)
    detections = detect(outputs, eval_set.metas, adapter, input_size=eval_set.size)
    return coco_metrics(detections, eval_set), detections


def pseudo_ground_truth(
    eval_set: EvalSet, detections: Sequence[Detections], *, score_threshold: float = 0.3, num_classes: int = 0
) -> EvalSet:
    """``eval_set`` with ground truth made of ``detections`` (the float model's) scoring >= ``score_threshold``.

    Label-free mode: the mAP of another model against it measures agreement with the float model,
    not accuracy. Categories are the class indices 0..K-1 (COCO ids 1..K, names ``"0"``..), with
    K = ``num_classes`` or, when 0, one more than the largest label among ``detections``.
    """
    from dataclasses import replace

    if len(detections) != len(eval_set.metas):
        raise ValueError(f"{len(detections)} detections for {len(eval_set.metas)} images")
    k = num_classes or 1 + max((int(d.labels.max()) for d in detections if len(d)), default=0)
    images, anns = [], []
    for det, meta in zip(detections, eval_set.metas):
        images.append(
            {"id": meta.image_id, "file_name": str(meta.image_id), "height": meta.orig_h, "width": meta.orig_w}
        )
        keep = np.asarray(det.scores) >= score_threshold
        for box, label in zip(np.asarray(det.boxes, np.float64)[keep], np.asarray(det.labels)[keep]):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            if w <= 0 or h <= 0 or not 0 <= int(label) < k:
                continue
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": meta.image_id,
                    "category_id": int(label) + 1,
                    "bbox": [float(box[0]), float(box[1]), w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": c + 1, "name": str(c)} for c in range(k)]
    coco = quiet_coco({"info": {}, "licenses": [], "images": images, "annotations": anns, "categories": categories})
    return replace(
        eval_set,
        coco=coco,
        category_ids=tuple(c + 1 for c in range(k)),
        class_names=tuple(str(c) for c in range(k)),
    )
