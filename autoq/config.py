"""autoq.yaml -> frozen ProjectConfig. Every error names the file and the key.

The loader is driven by the dataclass fields themselves: a section's keys are its fields, so an
unknown key, a wrong type or a missing required value is reported the same way everywhere.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoq.errors import ConfigError
from autoq.model.resolution import parse_resolution
from autoq.model.rewrites import REWRITES, variant_name
from autoq.plan import GRANULARITIES, Precision
from autoq.quant.ranges import RANGE_ESTIMATORS

DEFAULT_CONFIG = "autoq.yaml"

#: ``search.sampler`` values (`autoq.search.sampler.make_sampler` builds them)
SAMPLERS = ("auto", "tpe", "nsga2", "random", "gp")


@dataclass(frozen=True)
class ModelSection:
    path: Path
    adapter: str = "yolox"
    adapter_options: Mapping[str, Any] = field(default_factory=dict)
    input_size: tuple[int, int] | None = None  # (h, w); default: the model's static input shape
    # "HxW" -> ONNX exported at that size (used instead of rewriting the graph for space.resolutions)
    resolutions: Mapping[str, Any] = field(default_factory=dict)
    # name -> ONNX of a user variant (e.g. retrained with ReLU), a categorical choice of the search
    variants: Mapping[str, Any] = field(default_factory=dict)

    def resolution_files(self, root: Path) -> dict[tuple[int, int], Path]:
        """model.resolutions as (h, w) -> absolute path."""
        return {parse_resolution(k): _abs(root, v) for k, v in self.resolutions.items()}

    def variant_files(self, root: Path) -> dict[str, Path]:
        """model.variants as name -> absolute path."""
        return {str(k): _abs(root, v) for k, v in self.variants.items()}


def _abs(root: Path, value: Any) -> Path:
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else (root / p).resolve()


@dataclass(frozen=True)
class DataSection:
    eval_images: Path
    calib_images: Path
    eval_annotations: Path | None = None  # None: label-free (the float model's detections are the reference)
    calib_count: int = 32
    eval_subset: int = 0  # 0 = every annotated image


@dataclass(frozen=True)
class PreprocessSection:
    resize: str = "letterbox"
    pad_value: int = 114
    color: str = "bgr"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class ObjectiveSection:
    metric: str = "coco_map"  # coco_map | top1 | cosine | package.module:attribute
    options: Mapping[str, Any] = field(default_factory=dict)  # passed to the metric
    # coco_map with annotations: a float mAP (0..1) below this stops the run (every drop would read 0.00); 0 = off
    min_baseline: float = 0.001


@dataclass(frozen=True)
class TargetSection:
    name: str = "generic-npu"
    mode: str = ""  # "" = the target file's mode; estimate | measured (measured: ort-cpu times the QDQ model)
    runs: int = 0  # timed runs in measured mode; 0 = the target file's runs


@dataclass(frozen=True)
class SpaceSection:
    precisions: tuple[str, ...] = ("int8", "int16", "float")
    granularities: tuple[str, ...] = ("per_tensor", "per_channel")
    # the first one is the seeds' and the sensitivity sweep's; the sampler searches all (chosen by
    # experiments/bench_search_quality.py: [minmax, percentile, mse] beat [minmax] and [percentile, mse, minmax])
    methods: tuple[str, ...] = ("minmax", "percentile", "mse")
    percentiles: tuple[float, ...] = (99.99, 99.999)  # searched when methods has "percentile"
    resolutions: tuple[tuple[int, int], ...] = ()  # [[416, 416], [320, 320]]: searched; () = the model's own
    rewrites: tuple[tuple[str, ...], ...] = ()  # [[silu_to_hardswish]]: rewrite sets searched beside the original
    # own parameter for the K most sensitive units (node groups, see autoq.search.sensitivity); the rest share
    # one parameter per sensitivity band. 0 = one parameter per node (no grouping, the pre-sensitivity space)
    per_node_top_k: int = 12
    bands: int = 3


@dataclass(frozen=True)
class SearchSection:
    budget: int = 30
    timeout: float | None = None
    seed: int = 0
    study_name: str = "autoq"
    storage: str | None = None  # default: sqlite in <project>/.autoq/study.db
    heartbeat_seconds: int = 10  # a trial silent for 3x this is failed (its worker died) and retried once
    sampler: str = "auto"  # auto | tpe | nsga2 | random | gp
    seeds: tuple[Path, ...] = ()  # QuantConfig YAML files (as logged in MLflow) enqueued as first trials
    max_map_drop: float | None = None  # points (0..100): constraint on map_drop
    max_latency_ms: float | None = None  # constraint on latency_ms
    sensitivity: bool = True  # sensitivity sweep before the search (cached): grouped space, knapsack seeds, surrogate
    sensitivity_images: int = 8  # images of the sweep
    knapsack_seeds: int = 4  # knapsack candidates enqueued (a sweep of predicted-drop bounds)
    screen: bool = True  # skip sampler proposals the drop surrogate + cost model call dominated
    early_stop_images: int = -1  # first evaluate on this many images; -1 = auto (1/4, >= 16), 0 = off
    early_stop_margin: float = 2.0  # points above max_map_drop on the subset that stop a trial
    dominance_stop: bool = True  # stop a trial whose subset drop cannot reach the front at its latency


@dataclass(frozen=True)
class TrackingSection:
    uri: str | None = None  # default: sqlite in <project>/mlflow.db
    experiment: str | None = None  # default: the study name


@dataclass(frozen=True)
class ToolchainsSection:
    """Vendor toolchains autoq drives by subprocess (`autoq verify`), each in its own environment."""

    rknn: Mapping[str, Any] = field(default_factory=dict)  # {python: <RKNN-Toolkit2 venv>/bin/python}

    def python(self, name: str, root: Path) -> Path | None:
        """The interpreter configured for toolchain ``name`` (relative to the config's folder)."""
        value = dict(getattr(self, name, {}) or {}).get("python")
        if value is None:
            return None
        p = Path(str(value)).expanduser()  # not resolved: a venv's bin/python is a symlink out of the venv
        return p if p.is_absolute() else Path(os.path.abspath(root / p))


@dataclass(frozen=True)
class ExportSection:
    """`autoq export` defaults: ``format`` (default: the target's ``export_format``) and per format its
    exporter options, e.g. ``options: {axera-pulsar: {float_as_uint16: true}}`` (``-O KEY=VALUE`` wins)."""

    format: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProjectConfig:
    """The whole autoq.yaml; relative paths are resolved against the file's folder (``root``)."""
    file: Path
    root: Path
    model: ModelSection
    data: DataSection
    preprocess: PreprocessSection = field(default_factory=PreprocessSection)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    target: TargetSection = field(default_factory=TargetSection)
    space: SpaceSection = field(default_factory=SpaceSection)
    search: SearchSection = field(default_factory=SearchSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)
    toolchains: ToolchainsSection = field(default_factory=ToolchainsSection)
    export: ExportSection = field(default_factory=ExportSection)

    @property
    def work_dir(self) -> Path:
        """Where the study, caches and exports live."""
        return self.root / ".autoq"

    def ensure_work_dir(self) -> Path:
        """Creates ``.autoq/cache`` or fails with one line naming the folder (read-only project, ...)."""
        cache = self.work_dir / "cache"
        try:
            cache.mkdir(parents=True, exist_ok=True)
            probe = cache / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(
                f"cannot write to {self.work_dir} ({exc.strerror}); autoq keeps its study and caches there: "
                "make the folder of the config file writable"
            ) from None
        return self.work_dir

    def storage_url(self) -> str:
        return self.search.storage or f"sqlite:///{self.work_dir / 'study.db'}"

    def tracking_uri(self) -> str:
        return self.tracking.uri or f"sqlite:///{self.root / 'mlflow.db'}"

    def experiment_name(self) -> str:
        return self.tracking.experiment or self.search.study_name


_SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "data": DataSection,
    "preprocess": PreprocessSection,
    "objective": ObjectiveSection,
    "target": TargetSection,
    "space": SpaceSection,
    "search": SearchSection,
    "tracking": TrackingSection,
    "toolchains": ToolchainsSection,
    "export": ExportSection,
}


def _where(file: Path, key: str) -> str:
    return f"{file}: {key}"


def _coerce(value: Any, tp: Any, file: Path, key: str) -> Any:
    """Converts a YAML value to the annotated type, or raises ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, file, key)
    bad = ConfigError(f"{_where(file, key)} must be {_type_name(tp)}, got {value!r}")
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise bad
        p = Path(value).expanduser()
        return p if p.is_absolute() else (file.parent / p).resolve()
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], file, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise bad
        return tuple(_coerce(v, a, file, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (Mapping, dict) or tp in (dict, Mapping):
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    raise TypeError(f"unsupported config type {tp!r}")  # a bug in this module, not user input


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return f"a list of {len(args)} values"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if tp is Path:
        return "a path"
    if origin in (Mapping, dict):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(tp, str(tp))


def _build(cls: type, raw: Any, file: Path, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{_where(file, prefix)} must be a mapping of keys")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"{_where(file, f'{prefix}.{unknown[0]}')} is not a known key; known keys of {prefix}: {', '.join(fields)}"
        )
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}"
        if name in raw:
            kwargs[name] = _coerce(raw[name], hints[name], file, key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_where(file, key)} is required")
    return cls(**kwargs)


def _validate(cfg: ProjectConfig) -> None:
    f = cfg.file

    def must(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{_where(f, key)} {msg}")

    must(cfg.model.path.is_file(), "model.path", f"file not found: {cfg.model.path}; give the path to your .onnx model")
    for key, value in dict(cfg.toolchains.rknn).items():
        must(key == "python", f"toolchains.rknn.{key}", "is not a known key; known keys of toolchains.rknn: python")
        must(isinstance(value, str) and bool(value), "toolchains.rknn.python",
             "must be the path of the RKNN-Toolkit2 environment's python (scripts/install-rknn-toolkit.sh VENV)")
    for fmt, opts in dict(cfg.export.options).items():
        must(isinstance(opts, Mapping), f"export.options.{fmt}",
             "must map option -> value, e.g. export: {options: {horizon: {march: bayes}}} (see autoq export --help)")
    must(cfg.export.format is None or isinstance(cfg.export.format, str), "export.format",
         "must be a format name (see autoq export --help)")
    must(cfg.data.eval_images.is_dir(), "data.eval_images", f"folder not found: {cfg.data.eval_images}")
    if cfg.data.eval_annotations is not None:
        must(
            cfg.data.eval_annotations.is_file(),
            "data.eval_annotations",
            f"file not found: {cfg.data.eval_annotations}; give a COCO instances JSON (or omit it: label-free)",
        )
    must(cfg.data.calib_images.is_dir(), "data.calib_images", f"folder not found: {cfg.data.calib_images}")
    must(cfg.data.calib_count > 0, "data.calib_count", "must be > 0")
    must(cfg.data.eval_subset >= 0, "data.eval_subset", "must be >= 0 (0 = all images)")
    must(cfg.target.mode in ("", "estimate", "measured"), "target.mode", "must be estimate or measured")
    must(cfg.target.runs >= 0, "target.runs", "must be >= 0 (0 = the target file's runs)")
    if cfg.model.input_size is not None:
        must(all(s > 0 for s in cfg.model.input_size), "model.input_size", "must be two positive integers [h, w]")
    pp = cfg.preprocess
    must(pp.resize in ("letterbox", "resize"), "preprocess.resize", "must be letterbox or resize")
    must(pp.color in ("bgr", "rgb"), "preprocess.color", "must be bgr or rgb")
    must(0 <= pp.pad_value <= 255, "preprocess.pad_value", "must be in 0..255")
    must(all(s != 0 for s in pp.std), "preprocess.std", "must not contain 0")
    known_p = [p.value for p in Precision]
    must(bool(cfg.space.precisions), "space.precisions", f"must list at least one of {known_p}")
    for p in cfg.space.precisions:
        must(p in known_p, "space.precisions", f"has unknown precision {p!r}; known: {known_p}")
    must(bool(cfg.space.granularities), "space.granularities", f"must list at least one of {list(GRANULARITIES)}")
    for g in cfg.space.granularities:
        must(g in GRANULARITIES, "space.granularities", f"has unknown granularity {g!r}; known: {list(GRANULARITIES)}")
    must(bool(cfg.space.methods), "space.methods", "must list at least one range estimator")

    known_m = RANGE_ESTIMATORS.names()
    for m in cfg.space.methods:
        must(m in known_m or ":" in m, "space.methods", f"has unknown range estimator {m!r}; known: {known_m}")
    must(bool(cfg.space.percentiles), "space.percentiles", "must list at least one percentile, e.g. [99.99, 99.999]")
    _validate_variants(cfg, must)
    for q in cfg.space.percentiles:
        must(50 < q < 100, "space.percentiles", f"has {q}; each percentile must be in (50, 100)")
    must(bool(cfg.objective.metric), "objective.metric", "must name a metric (coco_map, top1, cosine or pkg.mod:fn)")
    must(0 <= cfg.objective.min_baseline < 1, "objective.min_baseline", "must be in [0, 1) (mAP on the 0..1 scale; 0 = off)")
    must(cfg.search.budget > 0, "search.budget", "must be > 0 (number of trials)")
    must(cfg.search.heartbeat_seconds > 0, "search.heartbeat_seconds", "must be > 0")
    if cfg.search.timeout is not None:
        must(cfg.search.timeout > 0, "search.timeout", "must be > 0 seconds")
    must(cfg.search.sampler in SAMPLERS, "search.sampler", f"must be one of {', '.join(SAMPLERS)}")
    for i, seed in enumerate(cfg.search.seeds):
        must(seed.is_file(), f"search.seeds[{i}]", f"file not found: {seed}; give a quant_config.yaml (MLflow artifact)")
    if cfg.search.max_map_drop is not None:
        must(0 < cfg.search.max_map_drop <= 100, "search.max_map_drop", "must be in (0, 100] points, e.g. 1.0")
    if cfg.search.max_latency_ms is not None:
        must(cfg.search.max_latency_ms > 0, "search.max_latency_ms", "must be > 0")
    must(cfg.space.per_node_top_k >= 0, "space.per_node_top_k", "must be >= 0 (0 = one parameter per node)")
    must(cfg.space.bands >= 1, "space.bands", "must be >= 1")
    must(cfg.search.sensitivity_images > 0, "search.sensitivity_images", "must be > 0")
    must(cfg.search.knapsack_seeds >= 0, "search.knapsack_seeds", "must be >= 0")
    must(cfg.search.early_stop_images >= -1, "search.early_stop_images", "must be -1 (auto), 0 (off) or > 0")
    must(cfg.search.early_stop_margin >= 0, "search.early_stop_margin", "must be >= 0 points")


def _validate_variants(cfg: ProjectConfig, must) -> None:
    """model.resolutions, model.variants, space.resolutions and space.rewrites."""
    for k, v in cfg.model.resolutions.items():
        try:
            parse_resolution(str(k))
        except ValueError as exc:
            must(False, f"model.resolutions.{k}", f"is not a resolution: {exc}")
        must(isinstance(v, str) and _abs(cfg.root, v).is_file(), f"model.resolutions.{k}", f"file not found: {v!r}")
    sets = {variant_name(s) for s in cfg.space.rewrites}
    for k, v in cfg.model.variants.items():
        must(bool(str(k)) and "+" not in str(k), f"model.variants.{k}", "needs a name without '+'")
        must(str(k) not in sets, f"model.variants.{k}", "has the name of a rewrite set in space.rewrites; rename it")
        must(isinstance(v, str) and _abs(cfg.root, v).is_file(), f"model.variants.{k}", f"file not found: {v!r}")
    for r in cfg.space.resolutions:
        must(all(x > 0 for x in r), "space.resolutions", f"has {list(r)}; each entry must be [h, w] > 0")
    known = REWRITES.names()
    for s in cfg.space.rewrites:
        must(bool(s), "space.rewrites", "has an empty rewrite set")
        for name in s:
            must(name in known or ":" in name, "space.rewrites", f"has unknown rewrite {name!r}; known: {known}")


def load_config(path: str | Path = DEFAULT_CONFIG) -> ProjectConfig:
    """Reads and validates autoq.yaml (yaml.safe_load only)."""
    import yaml

    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise ConfigError(f"{file}: config file not found; create one with `autoq init` or pass --config")
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{file}: invalid YAML{line}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: must be a YAML mapping with sections {', '.join(_SECTIONS)}")
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"{file}: {unknown[0]} is not a known section; known: {', '.join(_SECTIONS)}")
    for required in ("model", "data"):
        if required not in raw:
            raise ConfigError(f"{file}: {required} section is required")
    sections = {name: _build(cls, raw.get(name), file, name) for name, cls in _SECTIONS.items()}
    cfg = ProjectConfig(file=file, root=file.parent, **sections)
    _validate(cfg)
    return cfg


TEMPLATE = """\
# autoq.yaml - what to quantize, how to judge it, and where to search.
# Relative paths are relative to this file. Reference: README.md "Config file".

model:
  path: model.onnx              # your float ONNX detector
  adapter: yolox                # yolox | yolov5 | yolov7 | yolov8 | boxes_scores | dets_labels | demo | pkg.mod:function
  adapter_options:              # passed to the adapter
    num_classes: 80
    score_threshold: 0.01
    nms_iou: 0.65
    max_detections: 100
  # input_size: [416, 416]      # (h, w); default: the model's static input shape

data:
  eval_images: coco/val2017                 # evaluation images
  eval_annotations: coco/annotations/instances_val2017.json   # COCO instances JSON; omit for label-free
                                            # mode (the float model's detections become the reference)
  eval_subset: 0                            # first N images by id; 0 = all
  calib_images: coco/train2017              # calibration images (any folder of images)
  calib_count: 32                           # how many calibration images

preprocess:
  resize: letterbox     # letterbox (keep aspect, top-left, pad) | resize (stretch)
  pad_value: 114
  color: bgr            # channel order the model expects: bgr | rgb
  mean: [0, 0, 0]       # input = (pixel - mean) / std, pixels in 0..255
  std: [1, 1, 1]        # raw 0..255 input: mean 0, std 1; x/255: std [255, 255, 255]

objective:
  metric: coco_map      # coco_map | top1 (class folders) | cosine (vs float) | package.module:function
  options: {}           # passed to the metric, e.g. coco_map: {pseudo_gt_score: 0.3} (label-free only)
  min_baseline: 0.001   # a float mAP (0..1) below this stops the run: every drop would read 0.00

target:
  name: generic-npu     # hardware cost model used for latency_ms

space:
  precisions: [int8, int16, float]            # per-node choices; float = left unquantized (CPU)
  granularities: [per_tensor, per_channel]    # weight quantization granularity
  methods: [minmax, percentile, mse]          # activation range estimators searched (minmax | percentile | mse | kl);
                                              # the first is the seeds' and the sensitivity sweep's
  percentiles: [99.99, 99.999]                # tried when methods has percentile
  # resolutions: [[416, 416], [320, 320]]     # input sizes searched (default: the model's own)
  # rewrites: [[silu_to_hardswish]]           # op-replacement sets searched beside the original
  per_node_top_k: 12                          # own parameter for the 12 most sensitive node groups
  bands: 3                                    # the other groups: one parameter per sensitivity band

search:
  budget: 30            # trials in the study (a rerun continues up to this number)
  # timeout: 28800      # seconds of wall time for this run
  seed: 0
  study_name: autoq
  # storage: sqlite:///path/to/study.db   # default: .autoq/study.db next to this file
  sampler: auto         # auto | tpe | nsga2 | random | gp
  # max_map_drop: 1.0   # constraint, in points
  # max_latency_ms: 5.0 # constraint
  # seeds: [good_config.yaml]               # QuantConfig YAMLs (MLflow quant_config.yaml) tried first

tracking:
  # uri: sqlite:///path/to/mlflow.db      # default: mlflow.db next to this file
  # experiment: autoq                     # default: the study name
# toolchains:                             # vendor tools for `autoq verify`, each in its own environment
#   rknn: {python: ~/rknn-venv/bin/python}  # scripts/install-rknn-toolkit.sh ~/rknn-venv
# export:                                 # `autoq export` defaults (autoq export --help lists formats, options)
#   format: horizon                       # default: the target's toolchain
#   options: {horizon: {march: bayes}}    # per format; -O KEY=VALUE on the command line wins
"""
