"""A loaded project: everything that does not depend on the trial is done once here.

`Project.evaluate(config)` is one trial: ranges from cached statistics, one QDQ build, one
inference pass over the cached evaluation images (`outputs`), the objective metric (`score`, COCO
mAP by default; see `autoq.objectives.metrics`) and the cost model's latency.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from autoq.adapters import bind_output_names, load_adapter
from autoq.cache import content_key, read_json, try_write_json, write_atomic
from autoq.config import ProjectConfig
from autoq.data.coco import (
    IMAGE_EXTENSIONS,
    load_calibration,
    load_eval_set,
    subset_eval_set,
)
from autoq.data.preprocess import Preprocess, to_input
from autoq.errors import ConfigError, ModelError
from autoq.model.graph import load_model, node_table
from autoq.model.resolution import format_resolution
from autoq.model.rewrites import REWRITES, variant_name
from autoq.model.variants import build_variant_file
from autoq.objectives.baseline_check import check_finite, check_float_map
from autoq.objectives.bootstrap import (
    stats_from_json,
    stats_to_json,
    trial_drop_samples,
)
from autoq.objectives.metrics import MetricContext, drop, load_metric
from autoq.objectives.similarity import DEFAULT_BUDGET_BYTES, CosineReference
from autoq.plan import Precision, QuantConfig, TrialResult
from autoq.quant.calibrate import collect_stats, stats_key
from autoq.quant.qdq import build_qdq, config_int16_tensors
from autoq.quant.ranges import activation_ranges
from autoq.quant.toolchain_sim import fused_tensors, simulate_toolchain
from autoq.runtime.runner import run_model, stream_model
from autoq.runtime.session import create_session, usable_cores
from autoq.runtime.stream import PrefixedOutputs
from autoq.runtime.tune import tune_session
from autoq.surrogates.capabilities import Realization, op_kind, realize
from autoq.surrogates.cost_model import estimate_latency, load_target
from autoq.surrogates.measure import measure_latency

Log = Callable[[str], None]


@dataclass(frozen=True)
class Baseline:
    """The float model's objective metric on the evaluation set (cached on disk by content hash).

    ``map`` is the metric's value (COCO mAP for ``coco_map``); ``map50`` is nan for other metrics.
    """

    map: float
    map50: float
    per_class_ap: dict[str, float]
    # COCOeval per-image results (autoq.objectives.bootstrap): drop intervals; arrays, so not compared
    image_stats: Any = field(default=None, compare=False)


class Project:
    """Model, data, calibration statistics, baseline and target of one autoq.yaml."""
    def __init__(self, config: ProjectConfig, *, log: Log = lambda _msg: None) -> None:
        self.config = config
        self.log = log
        self.cache_dir = config.work_dir / "cache"
        self._metric_memo: dict[Any, Any] = {}  # values metrics derive once (pseudo ground truth)
        self.root: Project = self  # a VariantState's root is the project of the original model
        self._variants: dict[tuple[tuple[int, int], str], VariantState] = {}
        # (resolution "HxW", variant) -> why it cannot be built: out of the space, never rebuilt (`refuse`)
        self.refused: dict[tuple[str, str], str] = {}

    # --- variants: (resolution, rewrite set or user variant) -----------------------------------
    def resolution_choices(self, *, all_: bool = False) -> tuple[str, ...]:
        """space.resolutions as "HxW" strings (the ``resolution`` trial parameter); () = not searched.
        A resolution refused with every variant (`refuse`) is left out unless ``all_``."""
        got = tuple(format_resolution(r) for r in self.config.space.resolutions)
        if all_:
            return got
        variants = self.variant_choices(all_=True) or ("",)
        return tuple(r for r in got if any((r, v) not in self.root.refused for v in variants))

    def variant_choices(self, *, all_: bool = False) -> tuple[str, ...]:
        """"" (the original) + the space.rewrites set names + model.variants names; () = not searched.
        A variant refused at every resolution (`refuse`) is left out unless ``all_``."""
        names = [variant_name(s) for s in self.config.space.rewrites] + list(self.config.model.variants)
        got = ("", *dict.fromkeys(names)) if names else ()
        if all_:
            return got
        sizes = self.resolution_choices(all_=True) or (format_resolution(self.input_size),)
        return tuple(v for v in got if not v or any((r, v) not in self.root.refused for r in sizes))

    def refuse(self, resolution: tuple[int, int] | None, variant: str, why: str) -> None:
        """Marks (resolution, variant) as not buildable: left out of the choices, `variant` raises ``why``."""
        size = tuple(int(x) for x in resolution) if resolution else self.input_size
        self.root.refused[(format_resolution(size), variant or "")] = why

    def config_for(self, config: QuantConfig) -> QuantConfig:
        """``config`` as this model's nodes see it (the original has every node: unchanged)."""
        return config

    def variant(self, resolution: tuple[int, int] | None = None, variant: str = "") -> Project:
        """The state of one variant: its LoadedModel, eval set at its size, statistics, baseline.

        ``resolution`` None (or the model's own) and ``variant`` "" is this project itself; others are
        `VariantState` objects built once (graph cached on disk by content hash, see
        `autoq.model.variants`) and kept for the project's life.
        """
        if self.root is not self:
            return self.root.variant(resolution, variant)
        size = tuple(int(x) for x in resolution) if resolution else self.input_size
        if size == tuple(self.input_size) and not variant:
            return self
        key = (size, variant or "")
        why = self.refused.get((format_resolution(size), variant or ""))
        if why is not None:  # found not buildable once: not retried
            raise ModelError(why)
        if key not in self._variants:
            self._variants[key] = self._build_variant(size, variant or "")  # type: ignore[arg-type]
        return self._variants[key]

    def _build_variant(self, size: tuple[int, int], variant: str) -> VariantState:
        cfg = self.config
        known = self.variant_choices(all_=True)
        if variant and variant not in known and "+" not in variant and variant not in cfg.model.variants:

            if variant not in REWRITES:
                raise ConfigError(
                    f"unknown variant {variant!r}: not a rewrite (set) nor in model.variants; known: {list(known[1:])}"
                )

        def sample():
            try:

                images, _ = load_calibration(cfg.data.calib_images, 1, size, self.preprocess)
                return to_input(images[:1], self.preprocess)
            except Exception:
                return None

        t = time.perf_counter()
        path, reports = build_variant_file(
            original=self.model.path,
            original_sha=self.model.sha256,
            size=size,
            variant=variant,
            user_variants=cfg.model.variant_files(cfg.root),
            user_resolutions=cfg.model.resolution_files(cfg.root),
            cache_dir=self.cache_dir,
            sample=sample,
            log=self.log,
        )
        state = VariantState(self, model=load_model(path), input_size=size, variant=variant, rewrite_reports=reports)
        self.log(
            f"variant {variant or 'original'} at {format_resolution(size)}: {len(state.model.nodes)} nodes "
            f"({len(state.quantizable_names)} quantizable) in {time.perf_counter() - t:.1f}s ({path.name})"
        )
        return state

    # --- trial-independent state, built lazily and once -------------------------------------
    @cached_property
    def model(self):  # -> autoq.model.graph.LoadedModel
        """The normalized model; with symbolic H/W and ``model.input_size``, its node shapes (what the
        cost model prices) resolved at that size, as a static model of that size would have them."""
        import dataclasses

        model = load_model(self.config.model.path)
        size, shape = self.config.model.input_size, model.input_shape
        if size and len(shape) == 4 and not all(isinstance(d, int) and d > 0 for d in shape[2:]):
            channels = shape[1] if isinstance(shape[1], int) and shape[1] > 0 else 3
            model = dataclasses.replace(model, nodes=node_table(model.proto, (1, channels, *size)))
        return model

    @cached_property
    def input_size(self) -> tuple[int, int]:
        if self.config.model.input_size:
            return self.config.model.input_size
        shape = self.model.input_shape
        if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[2:]):
            raise ModelError(
                f"{self.config.model.path}: input {self.model.input_name} has shape {shape}; "
                "set model.input_size: [h, w] in autoq.yaml"
            )
        return int(shape[2]), int(shape[3])

    @cached_property
    def preprocess(self):  # -> autoq.data.preprocess.Preprocess

        p = self.config.preprocess
        return Preprocess(resize=p.resize, pad_value=p.pad_value, color=p.color, mean=p.mean, std=p.std)

    @cached_property
    def adapter(self):
        options = {"input_size": self.input_size, **dict(self.config.model.adapter_options)}
        adapter = load_adapter(self.config.model.adapter, options, key=f"{self.config.file}: model.adapter")
        return bind_output_names(adapter, self.model.output_names)

    @cached_property
    def metric(self):  # -> autoq.objectives.metrics.LoadedMetric

        o = self.config.objective
        return load_metric(o.metric, o.options, key=f"{self.config.file}: objective.metric")

    @cached_property
    def eval_set(self):
        d = self.config.data
        t = time.perf_counter()
        load = self.metric.load_eval_set or load_eval_set
        es = load(d.eval_images, d.eval_annotations, self.input_size, self.preprocess, subset=d.eval_subset)
        self.log(f"eval set: {len(es.metas)} images preprocessed in {time.perf_counter() - t:.1f}s")
        return es

    @cached_property
    def target(self):
        return load_target(self.config.target.name, key=f"{self.config.file}: target.name")

    @cached_property
    def quantizable_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.model.quantizable())

    @cached_property
    def node_kinds(self) -> dict[str, str]:
        """Quantizable node -> its key in the target's capability table (op type, ``Conv:depthwise``)."""
        protos = {n.name: n for n in self.model.proto.graph.node}
        out = {}
        for n in self.model.quantizable():
            shape = n.input_shapes[0] if n.input_shapes else None
            channels = shape[1] if shape and len(shape) > 1 and isinstance(shape[1], int) else None
            out[n.name] = op_kind(protos[n.name], channels)
        return out

    def realize(self, config: QuantConfig) -> Realization:
        """``config`` as the target's toolchain builds it (`autoq.surrogates.capabilities`): what every
        trial simulates, prices, records and exports."""
        return realize(config, self.node_kinds, self.target.capabilities)

    def allowed_precisions(self) -> tuple[Precision, ...]:
        """space.precisions that the target can run (float always can: it runs on the CPU)."""
        wanted = [Precision(p) for p in self.config.space.precisions]
        allowed = tuple(p for p in wanted if p is Precision.FLOAT or p.value in self.target.precisions)
        if not allowed:
            raise ConfigError(
                f"{self.config.file}: space.precisions {list(self.config.space.precisions)} has nothing target "
                f"{self.target.name} can run (it runs {list(self.target.precisions)})"
            )
        return allowed

    def _preprocess_key(self) -> str:
        return json.dumps(
            {"pp": self.config.preprocess.__dict__, "size": self.input_size}, sort_keys=True, default=str
        )

    @cached_property
    def stats(self):
        """Activation statistics over the calibration images: computed once per model variant, cached."""
        d = self.config.data
        # Key: model bytes (the variant: resolution and rewrites change them), input size and
        # preprocessing, and the content of the calibration files; nothing is decoded on a cache hit.
        files = calibration_files(d.calib_images, d.calib_count)
        key = stats_key(self.model.sha256, self._preprocess_key(), str(d.calib_count), *files)
        decoded: list[int] = []

        def batches():
            images, names = load_calibration(d.calib_images, d.calib_count, self.input_size, self.preprocess)
            decoded.append(len(names))
            for i in range(len(images)):
                yield to_input(images[i : i + 1], self.preprocess)

        t = time.perf_counter()
        stats = collect_stats(self.model, batches(), cache_dir=self.cache_dir, key=key)
        how = f"computed over {decoded[0]} images" if decoded else "loaded from the cache"
        self.log(f"calibration statistics: {how} in {time.perf_counter() - t:.1f}s (stats-{key}.npz)")
        return stats

    @cached_property
    def session_settings(self):  # -> autoq.runtime.session.SessionSettings
        """ORT session settings measured once on the float model (cached; see `tune_session`)."""
        import os

        import onnxruntime

        key = content_key(self.model.sha256, str(self.input_size), str(os.cpu_count()), onnxruntime.__version__,
                          *([str(usable_cores())] if usable_cores() != os.cpu_count() else []))  # pinned worker
        return tune_session(
            self.model.serialized(), self.eval_set.images[:8], self.preprocess, cache_dir=self.cache_dir, key=key, log=self.log
        )

    def pin_session_settings(self, settings) -> None:
        """Uses ``settings`` (a study's recorded ones) instead of measuring: thread count and batching
        change ORT's numerics slightly, so every run and worker of a study must use the same."""
        if 0 < usable_cores() < settings.intra_op_threads:  # a worker pinned to fewer cores: as many threads
            settings = dataclasses.replace(settings, intra_op_threads=usable_cores())
        if "baseline" in self.__dict__ and self.__dict__.get("session_settings") != settings:
            del self.__dict__["baseline"]  # computed under other settings
        self.__dict__["session_settings"] = settings

    @cached_property
    def baseline(self) -> Baseline:
        """Float mAP of the original model, computed once and cached on disk."""
        es, d = self.eval_set, self.config.data
        # Keyed by content: annotations edited in place or images replaced under the same names recompute it.
        key = content_key(
            self.model.sha256,
            self._preprocess_key(),
            dict(self.config.model.adapter_options),
            self.config.model.adapter,
            [self.config.objective.metric, dict(self.config.objective.options)],
            dataclasses.asdict(self.session_settings),  # threads/batching change the float numbers slightly
            file_digests([d.eval_annotations] if d.eval_annotations else []),
            file_digests([Path(d.eval_images) / f for f in es.files]),
        )
        path = self.cache_dir / f"baseline-{key}.json"
        data = read_json(path)
        minimum = self.config.objective.min_baseline if self.metric.name == "coco_map" else 0.0
        if isinstance(data, dict) and {"map", "map50", "per_class_ap", "image_stats"} <= set(data):
            if es.coco is None or minimum <= 0 or data["map"] >= minimum:
                return Baseline(data["map"], data["map50"], data["per_class_ap"], stats_from_json(data["image_stats"]))
        elif path.exists():
            self.log(f"note: baseline cache {path.name} is unreadable; recomputing the float baseline")
        t = time.perf_counter()
        outputs = self.outputs(self.model.serialized())
        check_finite(outputs, self.model.output_names, str(self.config.model.path))
        metrics = self.score(outputs, reference=outputs)
        check_float_map(es, metrics.value, minimum=minimum, annotations=str(d.eval_annotations),
                        detect=lambda: MetricContext(es, adapter=self.adapter).detect(outputs))
        base = Baseline(metrics.value, metrics.map50, dict(metrics.per_class_ap), metrics.image_stats)
        try_write_json(path, {**base.__dict__, "image_stats": stats_to_json(base.image_stats)})
        self.log(
            f"float baseline: {self.metric.name} {base.map:.4f} (AP50 {base.map50:.4f}) in {time.perf_counter() - t:.1f}s"
        )
        return base

    @cached_property
    def float_outputs(self) -> list[list[Any]]:
        """Raw outputs of the float model over the eval set, kept in memory for metrics that compare
        with it (label-free mode, ``cosine``); only computed when such a metric asks."""
        return self.outputs(self.model.serialized())

    @cached_property
    def cosine_reference(self):  # -> autoq.objectives.similarity.CosineReference
        """Float outputs kept (bounded memory) to log each trial's per-output cosine (``cos/<output>``).

        Reuses `float_outputs` when already computed, else runs the float model on as many leading
        eval images as fit in the budget (one image first to measure the size)."""

        names = self.model.output_names
        if "float_outputs" in self.__dict__:
            return CosineReference.from_outputs(names, self.float_outputs)
        images, settings = self.eval_set.images, self.session_settings
        session = create_session(self.model.serialized(), settings=settings)
        probe = run_model(session, images[:1], self.preprocess, batch_size=1, settings=settings)
        per_image = sum(np.asarray(a).nbytes for a in probe[0]) or 1
        keep = max(1, min(len(images), DEFAULT_BUDGET_BYTES // per_image))
        outs = probe if keep == 1 else run_model(
            session, images[:keep], self.preprocess, batch_size=settings.batch_size, settings=settings
        )
        return CosineReference.from_outputs(names, outs, total_images=len(images), keep=keep)

    # --- one trial ---------------------------------------------------------------------------
    def outputs(self, model_bytes) -> list[list[Any]]:
        """One inference pass over the cached eval images: raw outputs per batch, per model output.

        ``model_bytes``: serialized model or an ORT session (sessions use `session_settings`)."""

        settings = self.session_settings
        return run_model(model_bytes, self.eval_set.images, self.preprocess, batch_size=settings.batch_size, settings=settings)

    def stream_outputs(self, session, *, start: int = 0):  # -> autoq.runtime.stream.StreamedOutputs
        """`outputs` of an ORT session (eval images from ``start`` on), readable batch by batch as they
        finish: on a background thread when the session settings leave a core free for the scoring,
        else the whole pass first."""

        settings = self.session_settings
        free_core = 0 < settings.intra_op_threads < usable_cores()
        return stream_model(session, self.eval_set.images[start:], self.preprocess, batch_size=settings.batch_size,
                            background=free_core)

    def score(self, outputs, *, reference=None, carry=None):  # -> autoq.objectives.metrics.MetricResult
        """The objective metric of raw ``outputs``; ``reference`` = float outputs (default: `float_outputs`);
        ``carry``: one trial's dict across its passes (`MetricContext`)."""
        context = MetricContext(
            self.eval_set,
            adapter=lambda: self.adapter,
            reference=reference if reference is not None else (lambda: self.float_outputs),
            memo=self._metric_memo,
            carry=carry,
        )
        return self.metric(outputs, context)

    def validate_config(self, config: QuantConfig) -> None:
        """Rejects precisions the target cannot run and node names the model does not have."""
        allowed = set(self.allowed_precisions())
        names = set(self.quantizable_names)
        for node, p in [("(default)", config.default), *config.nodes.items()]:
            if node != "(default)" and node not in names:
                raise ConfigError(f"node {node!r} is not a quantizable node of {self.config.model.path}")
            if p not in allowed:
                raise ConfigError(
                    f"precision {p.value} for {node} is not allowed: target {self.target.name} with "
                    f"space.precisions {list(self.config.space.precisions)} allows {[a.value for a in allowed]}"
                )

    def ranges(self, config: QuantConfig) -> dict[str, tuple[float, float]]:
        """Activation ranges for ``config`` from the cached statistics: its method (and percentile),
        int16 ranges for the tensors its int16 nodes touch (memoized per method and bit width)."""

        return activation_ranges(
            self.stats, config.calibration, int16_tensors=config_int16_tensors(self.model, config)
        )

    def build(self, config: QuantConfig, *, ranges: dict[str, tuple[float, float]] | None = None):
        """The trial's QDQ ModelProto as the toolchain builds it, from cached ranges (no calibration pass)."""
        t = self.target
        config = self.realize(config).config
        proto = build_qdq(self.model, config, self.ranges(config) if ranges is None else ranges, memo=self.weight_memo,
                          int8_reads_convert=t.int8_reads_convert, activation_symmetric=t.activation_symmetric)
        if t.fused_activations or t.float_eltwise_constants:
            fused = fused_tensors(self.model.proto.graph, t.fused_activations, self._quantized_precision(config))
            proto = simulate_toolchain(proto, self.model.proto.graph, fused=fused, float_constants=t.float_eltwise_constants)
        return proto

    def _quantized_precision(self, config: QuantConfig):
        """node name -> the trial's precision for quantizable nodes, None for the others."""
        names = set(self.quantizable_names)
        return lambda node: config.precision_of(node) if node in names else None

    @cached_property
    def weight_memo(self) -> dict[Any, Any]:
        """Weights' quantization reused across this model's QDQ builds (`autoq.quant.ort_fast`)."""
        return {}

    def latency(self, config: QuantConfig, proto=None):
        """Cost-model estimate; with target mode ``measured`` and the trial's QDQ ``proto``, timed here."""
        config = self.realize(config).config
        est = estimate_latency(self.model.nodes, config, self.target)
        t = self.target
        mode = self.config.target.mode or t.mode
        if mode == "measured" and proto is not None:
            import dataclasses

            shape = None  # the proto's declared input shape; symbolic H/W need the trial's resolution
            if config.resolution is not None:
                shape = (1, 3, *config.resolution)
            m = measure_latency(proto.SerializeToString(), input_shape=shape, runs=self.config.target.runs or t.runs,
                                warmup=t.warmup, threads=t.threads)
            est = dataclasses.replace(est, total_ms=m.median_ms, source="measured", estimated_ms=est.total_ms)
        return est

    def evaluate(self, config: QuantConfig, *, images: int = 0,
                 go_on: Callable[[TrialResult], bool] | None = None) -> TrialResult:
        """One trial: QDQ build, one pass over the eval images, the objective metric, latency estimate.

        ``images`` > 0 (and fewer than the eval set): only the first ``images`` images, with ``map_drop``
        against the float model on the same images and ``partial=True`` (the search's early stop).
        With ``go_on`` as well, that partial result is handed to ``go_on``: False returns it, True runs
        the remaining images in the same session and scores them (no image runs or is scored twice).
        Subsets are of the original model only: another resolution or variant is evaluated in full.
        """

        state = self.variant(config.resolution, config.variant)
        if 0 < images < len(self.eval_set.metas) and (go_on is None or state is self):
            if go_on is None:
                return dataclasses.replace(self.subset(images).evaluate(config), partial=True)
            config = self.realize(config).config
            seconds: dict[str, Any] = {}
            proto, session, lat = self._prepare_trial(config, seconds)
            # One stage. More (¼, ½, ¾) stopped a few more trials (0.74x images instead of 0.78x), but each
            # stage's bootstraps and accumulate cost about what its images saved (experiments/results/dominance_stop.txt).
            head: list[Any] = []  # the subset's batches: the second pass runs only the images after them
            carry: dict[str, Any] = {}  # and scores only those: the metric keeps its per-image work here
            part = self.subset(images)._pass(config, session, lat, dict(seconds), keep=head, carry=carry)
            part = dataclasses.replace(part, partial=True)
            if not go_on(part):
                return part
            seconds.update({f"subset_{k}": part.seconds.get(k, 0.0) for k in ("inference", "score", "bootstrap")})
            return self._pass(config, session, lat, seconds, head=head, carry=carry)
        if state is not self:  # another resolution / variant: its own graph, data, statistics, baseline
            return state.evaluate(state.config_for(config))
        config = self.realize(config).config
        seconds = {}
        proto, session, lat = self._prepare_trial(config, seconds)
        return self._pass(config, session, lat, seconds)

    def _prepare_trial(self, config: QuantConfig, seconds: dict[str, Any]):
        """Ranges, QDQ build, ORT session and latency of a realized ``config`` (timed into ``seconds``)."""
        t = time.perf_counter()
        ranges = self.ranges(config)
        seconds["ranges"] = time.perf_counter() - t
        t = time.perf_counter()
        proto = self.build(config, ranges=ranges)
        seconds["build"] = time.perf_counter() - t
        t = time.perf_counter()
        session = create_session(proto.SerializeToString(), settings=self.session_settings)
        seconds["session"] = time.perf_counter() - t
        t = time.perf_counter()
        lat = self.latency(config, proto)
        seconds["latency"] = time.perf_counter() - t
        return proto, session, lat

    def _pass(self, config: QuantConfig, session, lat, seconds: dict[str, Any], *, head: list[Any] | None = None,
              keep: list[Any] | None = None, carry: dict[str, Any] | None = None) -> TrialResult:
        """The inference pass over this project's eval images (after the batches ``head`` already
        computed, and scored into ``carry``, for its first images), scored; ``keep`` receives the batches run."""
        base = self.root.baseline  # map_drop: always against the original at its own resolution
        head = head or []
        t = time.perf_counter()
        done = sum(int(np.asarray(b[0]).shape[0]) for b in head if len(b))
        with self.stream_outputs(session, start=done) as stream:  # the metric scores batches while the next ones run
            outputs = PrefixedOutputs(head, stream) if head else stream
            metrics = self.score(outputs, carry=carry)
            cosine = self.cosine_reference.cosines(outputs)
            ran = stream.finish()
        if keep is not None:
            keep.extend(ran)
        seconds["inference"] = stream.seconds
        seconds["score"] = max(0.0, time.perf_counter() - t - stream.seconds)  # what inference did not hide
        t = time.perf_counter()
        boot = trial_drop_samples(base.image_stats, metrics.image_stats)
        seconds["bootstrap"] = time.perf_counter() - t
        return TrialResult(
            map=metrics.value,
            map50=metrics.map50,
            map_small=metrics.map_small,
            map_medium=metrics.map_medium,
            map_large=metrics.map_large,
            per_class_ap=dict(metrics.per_class_ap),
            map_drop=drop(base.map, metrics.value, higher_is_better=self.metric.higher_is_better),
            drop_boot=boot,
            image_stats=metrics.image_stats,
            latency_ms=lat.total_ms,
            latency_breakdown=lat.breakdown(),
            latency_table=lat.table(),
            images=len(self.eval_set.metas),
            seconds=seconds,
            similarity=dict(metrics.extra),
            output_cosine=cosine,
            infeasible=lat.infeasible,
        )

    def subset(self, images: int) -> Project:
        """This project on its first ``images`` eval images (own float baseline on them; kept for the
        project's life). Only the original model: a trial of another resolution/variant is evaluated in full."""
        cache = self.__dict__.setdefault("_subsets", {})
        if images not in cache:
            cache[images] = SubsetState(self, images)
        return cache[images]


class SubsetState(Project):
    """`Project.subset`: the same model, statistics and settings, the first ``images`` eval images."""
    def __init__(self, parent: Project, images: int) -> None:
        super().__init__(parent.config, log=parent.log)
        self.parent = parent
        for name in ("model", "input_size", "preprocess", "adapter", "metric", "target", "stats", "session_settings",
                     "weight_memo"):
            self.__dict__[name] = getattr(parent, name)
        self.__dict__["eval_set"] = subset_eval_set(parent.eval_set, images)
        self.__dict__["quantizable_names"] = parent.quantizable_names

    def variant(self, resolution: tuple[int, int] | None = None, variant: str = "") -> Project:
        size = tuple(int(x) for x in resolution) if resolution else self.input_size
        if size == tuple(self.input_size) and not variant:
            return self
        raise ConfigError("a subset evaluation runs the original model only (no resolution/variant)")


class VariantState(Project):
    """One (resolution, variant) of a project: the variant's LoadedModel, its eval set preprocessed at its
    size, its calibration statistics and float baseline (each cached by content hash like the
    original's). Preprocessing settings, metric, target and session settings are the root project's.
    `evaluate` measures ``map_drop`` against the root's (original) baseline.
    """

    def __init__(self, root: Project, *, model, input_size: tuple[int, int], variant: str,
                 rewrite_reports: list[dict[str, Any]] | None = None) -> None:
        super().__init__(root.config, log=root.log)
        self.root = root
        self.variant_name = variant
        self.rewrite_reports = list(rewrite_reports or [])
        self.__dict__["model"] = model  # cached_property slots, filled up front
        self.__dict__["input_size"] = tuple(input_size)

    @property
    def key(self) -> tuple[tuple[int, int], str]:
        return self.input_size, self.variant_name

    @property
    def preprocess(self):  # type: ignore[override]
        return self.root.preprocess

    @property
    def metric(self):  # type: ignore[override]
        return self.root.metric

    @property
    def target(self):  # type: ignore[override]
        return self.root.target

    @property
    def session_settings(self):  # type: ignore[override]
        return self.root.session_settings

    def variant(self, resolution: tuple[int, int] | None = None, variant: str = "") -> Project:
        size = tuple(int(x) for x in resolution) if resolution else self.root.input_size
        if (size, variant or "") == self.key:
            return self
        return self.root.variant(resolution, variant)

    def config_for(self, config: QuantConfig) -> QuantConfig:
        """Per-node overrides keyed by name: nodes this variant lacks are dropped, new ones take the default."""
        import dataclasses

        names = set(self.quantizable_names)
        return dataclasses.replace(config, nodes={k: v for k, v in config.nodes.items() if k in names})

    def validate_config(self, config: QuantConfig) -> None:
        self.root.validate_config(config)


def calibration_files(folder: Path, count: int) -> tuple[str, ...]:
    """``name:sha256`` of the candidate calibration files (what `load_calibration` reads), without decoding.

    (An undecodable file is replaced by the next one when decoding; that replacement is not in the key.)
    """

    folder = Path(folder)
    if not folder.is_dir():
        return (str(folder),)  # load_calibration reports the missing folder when it runs
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    chosen = files[:count] if count > 0 else files
    return tuple(f"{p.name}:{hashlib.sha256(p.read_bytes()).hexdigest()[:16]}" for p in chosen)


def file_digests(paths) -> list[str]:
    """``name:sha256`` of each file (missing ones by name only): a cache key over file contents."""
    out = []
    for p in map(Path, paths):
        digest = hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else "missing"
        out.append(f"{p.name}:{digest}")
    return out


def model_file_for_export(project: Project) -> Path:
    """The ONNX whose node names match the QuantConfig: the normalized model, saved once."""
    name = f"model-{project.model.sha256[:12]}.onnx"
    path = project.config.work_dir / "export" / name
    if path.is_file():
        return path
    try:
        write_atomic(path, project.model.serialized())
    except OSError:  # a read-only project: exporting only reads it, so the model goes to a temporary folder
        path = Path(tempfile.gettempdir()) / "autoq-export" / name
        if not path.is_file():
            write_atomic(path, project.model.serialized())
    return path
