"""Accuracy metrics as plugins: what a trial's raw outputs are scored with.

``objective.metric`` in autoq.yaml names one: a built-in (``coco_map``, ``top1``, ``cosine``) or
``package.module:attribute``. A metric is called as ``metric(outputs, context)`` with the model's raw
outputs over the evaluation set (per batch, per output) and a `MetricContext` (eval set, adapter,
the float model's outputs), and returns a `MetricResult` or a plain number. It declares its direction
with an attribute ``higher_is_better`` (default True); the search minimizes the drop
``baseline - value`` (higher is better) or ``value - baseline`` (lower is better).

A class is instantiated with ``objective.options``; a function gets them as keyword arguments.
A metric may also define ``load_eval_set(images_dir, annotations, size, pp, *, subset)`` when its
evaluation data is not a COCO set or a plain image folder (``top1`` reads class folders).

Example:
    >>> def matching_auc(outputs, context, *, bins=10):  # my_pkg/metrics.py
    ...     return 0.5
    >>> matching_auc.higher_is_better = True
    >>> metric = load_metric("coco_map", {"pseudo_gt_score": 0.5})
    >>> metric.higher_is_better
    True
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from autoq.adapters.base import Detections
from autoq.data.coco import load_class_folders
from autoq.errors import ConfigError
from autoq.objectives.accuracy import (
    CocoEvaluation,
    detect,
    detect_batches,
    pseudo_ground_truth,
)
from autoq.objectives.similarity import output_similarity
from autoq.registry import Registry, accepted_options

_CALL_ARGS = ("outputs", "context")  # call arguments, not options

if TYPE_CHECKING:
    from autoq.adapters.base import Adapter, Detections
    from autoq.data.coco import EvalSet
    from autoq.data.preprocess import Preprocess

__all__ = [
    "METRICS",
    "CocoMap",
    "Cosine",
    "LoadedMetric",
    "MetricContext",
    "MetricResult",
    "Top1",
    "drop",
    "load_metric",
]

Outputs = Sequence[Sequence[np.ndarray]]  # per batch, per model output, batch dim first

METRICS: Registry[Any] = Registry("metric")  # built-ins register below, in this module


@dataclass(frozen=True)
class MetricResult:
    """What a metric measured. ``value`` is the objective; the COCO fields are nan/empty for other metrics.

    ``extra`` holds additional scalars logged with the trial (e.g. output similarity).
    """

    value: float
    map50: float = math.nan
    map_small: float = math.nan
    map_medium: float = math.nan
    map_large: float = math.nan
    per_class_ap: Mapping[str, float] = field(default_factory=dict)
    extra: Mapping[str, float] = field(default_factory=dict)
    # COCOeval's per-image results, reduced (`autoq.objectives.bootstrap.ImageStats`): the drop's interval
    image_stats: Any = None


class MetricContext:
    """What a metric may use besides the outputs; the adapter and the float outputs are produced on first use.

    Args:
        eval_set: the evaluation images (and ground truth, if any).
        adapter: the detector's adapter, or a function returning it.
        reference: the float model's raw outputs over ``eval_set``, or a function returning them.
        memo: a dict kept across calls for derived values (e.g. pseudo ground truth).
        carry: a dict kept across the passes of one trial (its early-stop subset, then the whole set):
            the outputs of a call with a carry begin with the batches of the previous call with the same
            carry, so a metric may keep per-image work there instead of redoing it (`CocoMap` does).
    """

    def __init__(
        self,
        eval_set: EvalSet,
        *,
        adapter: Adapter | Callable[[], Adapter] | None = None,
        reference: Outputs | Callable[[], Outputs] | None = None,
        memo: dict[Any, Any] | None = None,
        carry: dict[str, Any] | None = None,
    ) -> None:
        self.eval_set = eval_set
        self.carry = carry
        self._adapter = adapter
        self._reference = reference
        self.memo: dict[Any, Any] = {} if memo is None else memo

    @functools.cached_property
    def adapter(self) -> Adapter:
        a = self._adapter
        if a is None:
            raise ConfigError("this metric needs model.adapter (detections) but none was given")
        return a() if _is_factory(a) else a  # type: ignore[return-value,operator]

    @functools.cached_property
    def reference(self) -> Outputs:
        """The float model's raw outputs (same batches as the outputs being scored)."""
        r = self._reference
        if r is None:
            raise ConfigError("this metric compares with the float model, but no float outputs were given")
        return r() if callable(r) else r

    def detect(self, outputs: Outputs) -> list[Detections]:
        """The adapter over every batch (told the network input size)."""
        return detect(outputs, self.eval_set.metas, self.adapter, input_size=self.eval_set.size)

    def detect_batches(self, outputs: Outputs, *, skip: int = 0) -> Iterator[list[Detections]]:
        """`detect` batch by batch, as the batches arrive (see `autoq.runtime.stream`), from batch ``skip`` on."""
        return detect_batches(outputs, self.eval_set.metas, self.adapter, input_size=self.eval_set.size, skip=skip)

    def memoized(self, key: Any, make: Callable[[], Any]) -> Any:
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]


def _is_factory(obj: Any) -> bool:
    """A zero-argument callable (a factory), as opposed to an adapter taking (outputs, metas)."""
    if not callable(obj):
        return False
    try:
        inspect.signature(obj).bind()
    except (TypeError, ValueError):
        return False
    return True


MetricFn = Callable[[Outputs, MetricContext], Union[MetricResult, float]]


@dataclass(frozen=True)
class LoadedMetric:
    """A metric ready to score: the callable with its options bound, and its declared direction."""
    name: str
    fn: MetricFn
    higher_is_better: bool = True
    load_eval_set: Callable[..., EvalSet] | None = None

    def __call__(self, outputs: Outputs, context: MetricContext) -> MetricResult:
        result = self.fn(outputs, context)
        if isinstance(result, MetricResult):
            return result
        try:
            return MetricResult(value=float(result))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ConfigError(
                f"metric {self.name!r} returned {type(result).__name__}; return a number or a MetricResult"
            ) from None


def drop(baseline: float, value: float, *, higher_is_better: bool = True) -> float:
    """How much worse ``value`` is than ``baseline`` (positive = worse), whatever the metric's direction."""
    return baseline - value if higher_is_better else value - baseline


def load_metric(spec: str, options: Mapping[str, Any] | None = None, *, key: str = "objective.metric") -> LoadedMetric:
    """The metric named ``spec`` (built-in or ``package.module:attribute``) with ``options`` bound.

    Example:
        >>> load_metric("cosine").higher_is_better
        True
    """
    obj = METRICS.get(spec, key=key)
    options = dict(options or {})
    bad = f"{key.rsplit('.', 1)[0]}.options" if "." in key else "objective.options"
    if inspect.isclass(obj):
        try:
            inspect.signature(obj).bind_partial(**options)
            instance = obj(**options)
        except TypeError as exc:
            raise ConfigError(f"{bad}: {exc} for metric {spec!r}; accepted options: {accepted_options(obj, skip=_CALL_ARGS)}") from None
        fn: Any = instance
        source: Any = instance
    elif callable(obj):
        if options:
            try:
                inspect.signature(obj).bind_partial(None, None, **options)
            except TypeError as exc:
                raise ConfigError(f"{bad}: {exc} for metric {spec!r}; accepted options: {accepted_options(obj, skip=_CALL_ARGS)}") from None
            except ValueError:
                pass
        fn = functools.partial(obj, **options) if options else obj
        source = obj
    else:
        raise ConfigError(f"{key}: {spec!r} is not callable; a metric is a class or a function (outputs, context)")
    hib = getattr(source, "higher_is_better", True)
    if not isinstance(hib, bool):
        raise ConfigError(f"{key}: metric {spec!r} has higher_is_better={hib!r}; it must be True or False")
    loader = getattr(source, "load_eval_set", None)
    return LoadedMetric(name=spec, fn=fn, higher_is_better=hib, load_eval_set=loader if callable(loader) else None)


# --- built-ins ------------------------------------------------------------------------------------


@METRICS.register("coco_map")
class CocoMap:
    """COCO bbox mAP@[.5:.95] of the adapter's detections (pycocotools).

    With annotations it is accuracy. Without (``data.eval_annotations`` omitted: label-free mode) the
    float model's own detections scoring >= ``pseudo_gt_score`` are the ground truth, so the value is
    agreement with the float model (1.0 for the float model itself), not accuracy; the result's
    ``extra`` then also carries the output similarity to the float model (`autoq.objectives.similarity`).

    Args:
        pseudo_gt_score: score threshold of the float detections kept as pseudo ground truth.
    """

    higher_is_better = True

    def __init__(self, *, pseudo_gt_score: float = 0.3) -> None:
        if isinstance(pseudo_gt_score, bool) or not isinstance(pseudo_gt_score, (int, float)):
            raise ConfigError(f"objective.options.pseudo_gt_score must be a number, got {pseudo_gt_score!r}")
        self.pseudo_gt_score = float(pseudo_gt_score)

    def __call__(self, outputs: Outputs, context: MetricContext) -> MetricResult:
        if context.eval_set.coco is not None:  # each batch scored as it arrives (overlaps a streamed inference)
            evaluation = CocoEvaluation(context.eval_set)
            carry = context.carry if context.carry is not None else {}
            done = evaluation.resume(carry["coco"]) if "coco" in carry else (0, 0)  # (batches, images) scored before
            for batch in context.detect_batches(outputs, skip=done[0]):
                evaluation.add(batch)
            carry["coco"] = (len(outputs), evaluation)
            return self._result(evaluation.result(), {}, evaluation.image_stats())
        es = context.memoized(
            ("pseudo_gt", self.pseudo_gt_score),
            lambda: pseudo_ground_truth(
                context.eval_set, context.detect(context.reference), score_threshold=self.pseudo_gt_score
            ),
        )
        k = len(es.category_ids)  # classes the float model never predicted cannot be scored
        evaluation = CocoEvaluation(es)  # per-image results too: label-free drops get their interval
        evaluation.add([_known_labels(d, k) for d in context.detect(outputs)])
        return self._result(evaluation.result(), output_similarity(context.reference, outputs), evaluation.image_stats())

    @staticmethod
    def _result(m: Any, extra: dict[str, float], image_stats: Any = None) -> MetricResult:
        return MetricResult(
            image_stats=image_stats,
            value=m.map,
            map50=m.map50,
            map_small=m.map_small,
            map_medium=m.map_medium,
            map_large=m.map_large,
            per_class_ap=dict(m.per_class_ap),
            extra=extra,
        )


def _known_labels(det: Detections, k: int) -> Detections:
    """Only the detections of classes 0..k-1 (the others have no ground truth to be scored against)."""
    if len(det) == 0 or int(det.labels.max()) < k:
        return det
    ok = det.labels < k
    return Detections(det.boxes[ok], det.scores[ok], det.labels[ok])


@METRICS.register("top1")
class Top1:
    """Top-k accuracy of a classifier (k = 1 by default): the model outputs logits or scores [B, C].

    Evaluation data is ImageNet-style: ``data.eval_images/<class name>/*.jpg`` (no annotation file).

    Args:
        class_names: the model's classes in output order; default: the sorted sub-folder names.
        k: an image counts as right when its class is among the k best scores.
        output: index of the model output holding the logits.
    """

    higher_is_better = True

    def __init__(self, *, class_names: Sequence[str] | None = None, k: int = 1, output: int = 0) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"objective.options.k must be a positive integer, got {k!r}")
        if class_names is not None and (
            isinstance(class_names, str) or not all(isinstance(c, str) for c in class_names)
        ):
            raise ConfigError("objective.options.class_names must be a list of class names in the model's output order")
        self.class_names = None if class_names is None else tuple(class_names)
        self.k = k
        self.output = int(output)

    def load_eval_set(
        self, images_dir: Any, annotations: Any, size: tuple[int, int], pp: Preprocess, *, subset: int = 0
    ) -> EvalSet:

        if annotations is not None:
            raise ConfigError(
                "metric top1 reads class folders (data.eval_images/<class>/*.jpg); remove data.eval_annotations"
            )
        return load_class_folders(images_dir, size, pp, subset=subset, class_names=self.class_names)

    def __call__(self, outputs: Outputs, context: MetricContext) -> MetricResult:
        labels = context.eval_set.labels
        if labels is None:
            raise ConfigError("metric top1 needs class labels: data.eval_images must hold one folder per class")
        logits = np.concatenate([np.asarray(b[self.output]).reshape(len(b[self.output]), -1) for b in outputs])
        if logits.shape[0] != labels.shape[0]:
            raise ValueError(f"{logits.shape[0]} outputs for {labels.shape[0]} labelled images")
        if logits.shape[1] < len(context.eval_set.class_names):
            raise ConfigError(
                f"metric top1: the model outputs {logits.shape[1]} scores per image but there are "
                f"{len(context.eval_set.class_names)} classes; check objective.options.class_names / output"
            )
        k = min(self.k, logits.shape[1])
        top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
        return MetricResult(value=float((top == labels[:, None]).any(axis=1).mean()))


@METRICS.register("cosine")
class Cosine:
    """Mean cosine similarity of the raw outputs to the float model's (label-free, any model).

    ``extra`` carries every measure of `autoq.objectives.similarity.output_similarity`.

    Args:
        output: index of the one output to compare; None: the mean over all outputs.
    """

    higher_is_better = True

    def __init__(self, *, output: int | None = None) -> None:
        self.output = output

    def __call__(self, outputs: Outputs, context: MetricContext) -> MetricResult:
        sim = output_similarity(context.reference, outputs)
        value = sim["cosine"]
        if self.output is not None:
            n = len(outputs[0]) if len(outputs) else 0
            if not -n <= int(self.output) < n:
                raise ConfigError(f"objective.options.output={self.output} but the model has {n} output(s)")
            value = sim.get(f"cosine/{int(self.output) % n}", value)
        return MetricResult(value=float(value), extra=sim)
