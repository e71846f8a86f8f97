"""A loaded project: everything that does not depend on the trial is done once here.

`Project.evaluate(config)` is one trial: ranges from cached statistics, one QDQ build, one
inference pass over the cached evaluation images, COCO metrics and the cost model's latency.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from autoq.config import ProjectConfig
from autoq.errors import ConfigError, ModelError
from autoq.plan import Precision, QuantConfig, TrialResult

Log = Callable[[str], None]


@dataclass(frozen=True)
class Baseline:
    """The float model's accuracy on the evaluation set (cached on disk by content hash)."""

    map: float
    map50: float
    per_class_ap: dict[str, float]


def _sha(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


class Project:
    """Model, data, calibration statistics, baseline and target of one autoq.yaml."""

    def __init__(self, config: ProjectConfig, *, log: Log = lambda _msg: None) -> None:
        self.config = config
        self.log = log
        self.cache_dir = config.work_dir / "cache"

    # --- trial-independent state, built lazily and once -------------------------------------
    @cached_property
    def model(self):  # -> autoq.model.graph.LoadedModel
        from autoq.model.graph import load_model

        return load_model(self.config.model.path)

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
        from autoq.data.preprocess import Preprocess

        p = self.config.preprocess
        return Preprocess(resize=p.resize, pad_value=p.pad_value, color=p.color, mean=p.mean, std=p.std)

    @cached_property
    def adapter(self):
        from autoq.adapters import load_adapter

        options = {"input_size": self.input_size, **dict(self.config.model.adapter_options)}
        return load_adapter(self.config.model.adapter, options, key=f"{self.config.file}: model.adapter")

    @cached_property
    def eval_set(self):
        from autoq.data.coco import load_eval_set

        d = self.config.data
        t = time.perf_counter()
        es = load_eval_set(d.eval_images, d.eval_annotations, self.input_size, self.preprocess, subset=d.eval_subset)
        self.log(f"eval set: {len(es.metas)} images preprocessed in {time.perf_counter() - t:.1f}s")
        return es

    @cached_property
    def target(self):
        from autoq.surrogates.cost_model import load_target

        return load_target(self.config.target.name, key=f"{self.config.file}: target.name")

    @cached_property
    def quantizable_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.model.quantizable())

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
        from autoq.data.coco import load_calibration
        from autoq.data.preprocess import to_input
        from autoq.quant.calibrate import collect_stats, stats_key

        d = self.config.data
        images, files = load_calibration(d.calib_images, d.calib_count, self.input_size, self.preprocess)
        key = stats_key(self.model.sha256, self._preprocess_key(), *files)
        t = time.perf_counter()
        batches = (to_input(images[i : i + 1], self.preprocess) for i in range(len(images)))
        stats = collect_stats(self.model, batches, cache_dir=self.cache_dir, key=key)
        self.log(f"calibration statistics: {len(files)} images, {time.perf_counter() - t:.1f}s (cached)")
        return stats

    @cached_property
    def baseline(self) -> Baseline:
        """Float mAP of the original model, computed once and cached on disk."""
        es = self.eval_set
        key = _sha(
            self.model.sha256,
            self._preprocess_key(),
            json.dumps(dict(self.config.model.adapter_options), sort_keys=True, default=str),
            self.config.model.adapter,
            *es.files,
        )
        path = self.cache_dir / f"baseline-{key}.json"
        if path.is_file():
            data = json.loads(path.read_text())
            return Baseline(data["map"], data["map50"], data["per_class_ap"])
        t = time.perf_counter()
        metrics, _ = self._run(self.model.serialized())
        base = Baseline(metrics.map, metrics.map50, dict(metrics.per_class_ap))
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(base.__dict__, indent=1))
        self.log(f"float baseline: mAP {base.map:.4f} (AP50 {base.map50:.4f}) in {time.perf_counter() - t:.1f}s")
        return base

    # --- one trial ---------------------------------------------------------------------------
    def _run(self, model_bytes: bytes):
        from autoq.objectives.accuracy import evaluate

        return evaluate(model_bytes, self.eval_set, self.preprocess, self.adapter)

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

    def build(self, config: QuantConfig):
        """The trial's QDQ ModelProto, from cached ranges (no calibration pass)."""
        from autoq.quant.calibrate import activation_ranges
        from autoq.quant.qdq import build_qdq

        return build_qdq(self.model, config, activation_ranges(self.stats, config.calibration))

    def latency(self, config: QuantConfig):
        from autoq.surrogates.cost_model import estimate_latency

        return estimate_latency(self.model.nodes, config, self.target)

    def evaluate(self, config: QuantConfig) -> TrialResult:
        """One trial: QDQ build, one pass over the eval images, COCO metrics, latency estimate."""
        base = self.baseline
        seconds: dict[str, Any] = {}
        t = time.perf_counter()
        proto = self.build(config)
        seconds["build"] = time.perf_counter() - t
        t = time.perf_counter()
        metrics, _ = self._run(proto.SerializeToString())
        seconds["evaluate"] = time.perf_counter() - t
        t = time.perf_counter()
        lat = self.latency(config)
        seconds["latency"] = time.perf_counter() - t
        return TrialResult(
            map=metrics.map,
            map50=metrics.map50,
            map_small=metrics.map_small,
            map_medium=metrics.map_medium,
            map_large=metrics.map_large,
            per_class_ap=dict(metrics.per_class_ap),
            map_drop=base.map - metrics.map,
            latency_ms=lat.total_ms,
            latency_breakdown=lat.breakdown(),
            images=len(self.eval_set.metas),
            seconds=seconds,
        )


def model_file_for_export(project: Project) -> Path:
    """The ONNX whose node names match the QuantConfig: the normalized model, saved once."""
    path = project.config.work_dir / "export" / f"model-{project.model.sha256[:12]}.onnx"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(project.model.serialized())
    return path
