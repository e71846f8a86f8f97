"""Per-unit quantization sensitivity: which node groups hurt when they run in int8.

Units. The graph is cut into *groups* (`node_groups`: each Conv/Gemm/MatMul and the nodes after it up
to the next one, i.e. a Conv with its activation and elementwise tail), then groups whose precisions
must agree on the target are merged into one *unit*: the group of every Concat/Add/Sum and the groups
producing its inputs (all inputs of a Concat/Add share a scale and a data type on the NPUs we target).
On YOLOX-nano this turns 369 nodes into 113 groups and 91 units (largest: 5 groups), which is what
makes a sweep affordable: one build + one pass over ``images`` images per unit.

Measure (the diagnose checklist's sweep, `sweep`, shared with `autoq.report.diagnose`). Over all-int8,
each unit alone in int16 (float when the target has no int16); its *damage* (what int8 costs on this
unit) is how much that raises the output cosine vs the float model (mean over outputs and images), with
the output SQNR (dB) alongside. This direction, not "all-int16 but this unit in int8", because a tensor
is int16 when its producer *or* any quantized consumer is int16 (docs/architecture.md): a unit alone in
int8 among int16 neighbours keeps its input and output tensors in int16 and would only show its internal
tensors. Two anchors calibrate the additive drop predictor (`autoq.search.surrogate`): the objective
metric of all-int8 and of all-int16 on ``anchor_images`` images.

Cache: ``.autoq/cache/sensitivity-<key>.json``, keyed by the model hash, the calibration statistics key
(calibration files and count), the calibration settings, the subset's image files, the units and the
precisions. Logged to the parent MLflow run (`sensitivity_artifacts`) (``sensitivity.csv`` and
``sensitivity.png``, a ranked bar chart).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autoq.cache import content_key, read_json, write_json
from autoq.data.coco import subset_eval_set
from autoq.objectives.metrics import MetricContext, drop
from autoq.objectives.similarity import per_image_cosine, stack_images
from autoq.pipeline import calibration_files
from autoq.plan import Calibration, Precision, QuantConfig
from autoq.runtime.runner import run_model
from autoq.runtime.session import create_session

if TYPE_CHECKING:
    from autoq.pipeline import Project

__all__ = [
    "GROUP_START_OPS",
    "Sensitivity",
    "UnitScore",
    "node_groups",
    "node_units",
    "run_sensitivity",
    "sensitivity_csv",
    "sensitivity_png",
    "sweep",
]

Log = Callable[[str], None]
GROUP_START_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
TIE_OPS = frozenset({"Concat", "Add", "Sum"})
VERSION = 1
# target keys that change what a trial's QDQ model computes (not what it costs)
SIMULATED_TARGET_KEYS = ("capabilities", "fused_activations", "float_eltwise_constants", "int8_reads_convert",
                         "activation_symmetric")


def node_groups(project: Project) -> list[tuple[str, tuple[str, ...]]]:
    """Quantizable nodes in graph order, cut before every Conv/Gemm/MatMul: [(group name, nodes)].
    Nodes before the first such op join the first group; the name is the group's leading node."""
    model = project.model
    groups: list[list[str]] = []
    for n in model.quantizable():
        if not groups or (n.op_type in GROUP_START_OPS and any(
                model.node(m).op_type in GROUP_START_OPS for m in groups[-1])):
            groups.append([n.name])
        else:
            groups[-1].append(n.name)
    out = []
    for g in groups:
        lead = next((m for m in g if model.node(m).op_type in GROUP_START_OPS), g[0])
        out.append((lead, tuple(g)))
    return out


def node_units(project: Project) -> list[tuple[str, tuple[str, ...]]]:
    """`node_groups` merged where precisions must agree: a Concat/Add/Sum's group with the groups that
    produce its inputs (union-find, so chains merge). [(unit name = first group's name, nodes)] in graph order."""
    groups = node_groups(project)
    gid = {m: i for i, (_, members) in enumerate(groups) for m in members}
    producer = {t: n.name for n in project.model.nodes for t in n.outputs if t}
    parent = list(range(len(groups)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for n in project.model.quantizable():
        if n.op_type not in TIE_OPS:
            continue
        ids = {gid[n.name]} | {gid[producer[t]] for t in n.inputs if producer.get(t) in gid}
        root = find(min(ids))
        for j in ids:
            rj = find(j)
            if rj != root:
                parent[max(rj, root)] = min(rj, root)
                root = min(rj, root)
    merged: dict[int, list[int]] = {}
    for i in range(len(groups)):
        merged.setdefault(find(i), []).append(i)
    out = []
    for root in sorted(merged):
        members = tuple(m for i in merged[root] for m in groups[i][1])
        out.append((groups[merged[root][0]][0], members))
    return out


def _images_in(outputs) -> int:
    return sum(int(np.asarray(b[0]).shape[0]) for b in outputs)


def output_error(reference, outputs) -> tuple[float, float]:
    """(mean cosine, SQNR in dB) of raw ``outputs`` vs ``reference`` over all outputs and images."""
    n = _images_in(reference)
    cos, sig, noise = [], 0.0, 0.0
    for r, o in zip(stack_images(reference, n), stack_images(outputs, n)):
        if r.shape != o.shape or r.ndim == 0:
            continue
        cos.append(float(per_image_cosine(r, o).mean()))
        r64, o64 = r.astype(np.float64), o.astype(np.float64)
        sig += float((r64 ** 2).sum())
        noise += float(((r64 - o64) ** 2).sum())
    c = float(np.mean(cos)) if cos else float("nan")
    sqnr = 10 * math.log10(sig / noise) if noise > 0 and sig > 0 else float("inf")
    return c, sqnr


class _Runner:
    """Builds configs and runs them over a fixed image batch (ORT settings of the project)."""
    def __init__(self, project: Project, images: np.ndarray) -> None:
        self.project, self.images = project, images

    def outputs(self, config=None):
        p = self.project
        data = p.model.serialized() if config is None else p.build(config).SerializeToString()
        settings = p.session_settings
        session = create_session(data, settings=settings)
        return run_model(session, self.images, p.preprocess, batch_size=settings.batch_size, settings=settings)


def sweep(
    project: Project,
    units: Sequence[tuple[str, Sequence[str]]],
    *,
    base: Precision,
    probe: Precision,
    calibration: Calibration,
    images: np.ndarray,
    reference=None,
    step: Callable[[int, str, float], None] | None = None,
    log: Log = print,
) -> list[tuple[float, float]]:
    """Each unit alone in ``probe`` over an all-``base`` model: [(output cosine, SQNR dB)] in unit order
    (nan for a unit whose build or run fails; the sweep goes on). ``reference``: float outputs on ``images``."""

    r = _Runner(project, images)
    ref = r.outputs() if reference is None else reference
    out: list[tuple[float, float]] = []
    for i, (name, members) in enumerate(units):
        c = QuantConfig(default=base, calibration=calibration, nodes={m: probe for m in members})
        try:
            cos, sqnr = output_error(ref, r.outputs(c))
        except Exception as exc:  # one odd unit must not stop the sweep
            log(f"sensitivity: unit {name}: {type(exc).__name__}: {exc}")
            cos, sqnr = float("nan"), float("nan")
        out.append((cos, sqnr))
        if step is not None:
            step(i, name, cos)
    return out


@dataclass(frozen=True)
class UnitScore:
    unit: str
    nodes: tuple[str, ...]
    position: int  # index of the unit in graph order
    cosine: float  # output cosine with this unit alone in the probe precision over all-int8
    sqnr_db: float
    damage: float  # cosine - all-int8 cosine (>= 0): what int8 on this unit costs; the ranking key


@dataclass(frozen=True)
class Sensitivity:
    """The sweep's result, units ranked most damaging first."""
    key: str
    base: str  # precision of every other unit ("int8")
    probe: str  # precision of the probed unit ("int16", or "float" when the target has no int16)
    images: int
    anchor_images: int
    base_cosine: float  # output cosine of all-int8
    probe_cosine: float  # ... of all-probe
    int8_drop: float  # objective-metric drop of all-int8 on the anchor images (0..1 scale)
    probe_drop: float  # ... of all-probe (0 for float)
    seconds: float
    units: tuple[UnitScore, ...]

    def ranked(self) -> list[UnitScore]:
        return sorted(self.units, key=lambda u: (-u.damage, u.position))

    def damage_of(self) -> dict[str, float]:
        return {u.unit: u.damage for u in self.units}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["units"] = [asdict(u) for u in self.units]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sensitivity:
        units = tuple(UnitScore(**{**u, "nodes": tuple(u["nodes"])}) for u in d["units"])
        return cls(**{**d, "units": units})


def default_calibration(project: Project) -> Calibration:
    """The calibration the seeds use: per-channel weights when allowed, the first range method."""
    s = project.config.space
    gran = "per_channel" if "per_channel" in s.granularities else s.granularities[0]
    method = s.methods[0]
    return Calibration(granularity=gran, method=method, percentile=s.percentiles[-1] if method == "percentile" else None)


def _stats_key(project: Project) -> str:
    d = project.config.data
    return "|".join([str(d.calib_count), *calibration_files(d.calib_images, d.calib_count)])


def run_sensitivity(
    project: Project,
    *,
    images: int | None = None,
    anchor_images: int | None = None,
    force: bool = False,
    log: Log = print,
) -> Sensitivity:
    """The ranked sensitivity of ``project``'s units (module doc); cached on disk unless ``force``."""
    cfg = project.config
    n = images or cfg.search.sensitivity_images
    es = subset_eval_set(project.eval_set, max(1, n))
    n = len(es.metas)
    n_anchor = anchor_images or max(n, min(4 * n, len(project.eval_set.metas)))
    es_anchor = subset_eval_set(project.eval_set, n_anchor)
    n_anchor = len(es_anchor.metas)
    allowed = project.allowed_precisions()
    base = Precision.INT8
    probe = Precision.INT16 if Precision.INT16 in allowed else Precision.FLOAT
    cal = default_calibration(project)
    units = node_units(project)
    key = content_key(
        VERSION, project.model.sha256, _stats_key(project), cal.granularity, cal.method, cal.percentile,
        list(es_anchor.files), n, base.value, probe.value, units, project.config.objective.metric,
        {k: v for k, v in project.target.to_dict().items() if k in SIMULATED_TARGET_KEYS},  # what the toolchain builds
    )
    path = project.cache_dir / f"sensitivity-{key}.json"
    cached = None if force else read_json(path)
    if cached is not None:
        try:
            return Sensitivity.from_dict(cached)
        except Exception:
            pass  # an old format: recompute
    elif not force and path.exists():
        log(f"note: sensitivity cache {path.name} is unreadable; recomputing the sweep")
    t0 = time.perf_counter()
    _ = project.stats
    log(f"sensitivity: {len(units)} units ({len(project.quantizable_names)} nodes) on {n} images, "
        f"each in {probe.value} over all-{base.value}")
    r = _Runner(project, es.images)
    ref = r.outputs()
    int8_cfg = QuantConfig.uniform(base, calibration=cal)
    probe_cfg = QuantConfig.uniform(probe, calibration=cal)
    base_cos, _ = output_error(ref, r.outputs(int8_cfg))
    probe_cos = 1.0 if probe is Precision.FLOAT else output_error(ref, r.outputs(probe_cfg))[0]

    last = [time.perf_counter()]

    def step(i: int, name: str, cos: float) -> None:
        now = time.perf_counter()
        if now - last[0] > 10 or i + 1 == len(units):
            last[0] = now
            el = now - t0
            log(f"sensitivity: {i + 1}/{len(units)} units ({el:.0f}s, ETA {el / (i + 1) * (len(units) - i - 1):.0f}s)")

    scores = sweep(project, units, base=base, probe=probe, calibration=cal, images=es.images, reference=ref,
                   step=step, log=log)
    # anchors: the objective metric of float, all-base and all-int8 on the anchor images
    ra = _Runner(project, es_anchor.images)
    memo: dict[Any, Any] = {}
    f_out = ra.outputs()

    def metric(outputs) -> float:
        ctx = MetricContext(es_anchor, adapter=lambda: project.adapter, reference=f_out, memo=memo)
        return project.metric(outputs, ctx).value

    hib = project.metric.higher_is_better
    fv = metric(f_out)
    probe_drop = 0.0 if probe is Precision.FLOAT else drop(fv, metric(ra.outputs(probe_cfg)), higher_is_better=hib)
    int8_drop = drop(fv, metric(ra.outputs(int8_cfg)), higher_is_better=hib)
    unit_scores = []
    for i, ((name, members), (cos, sqnr)) in enumerate(zip(units, scores)):
        dmg = 0.0 if math.isnan(cos) else max(0.0, cos - base_cos)
        unit_scores.append(UnitScore(name, tuple(members), i, cos, sqnr, dmg))
    sens = Sensitivity(key=key, base=base.value, probe=probe.value, images=n, anchor_images=n_anchor,
                       base_cosine=base_cos, probe_cosine=probe_cos, int8_drop=float(int8_drop),
                       probe_drop=float(probe_drop), seconds=time.perf_counter() - t0, units=tuple(unit_scores))
    write_json(path, sens.to_dict())
    top = ", ".join(f"{u.unit} ({u.damage:.2e})" for u in sens.ranked()[:3])
    log(f"sensitivity: done in {sens.seconds:.0f}s; most sensitive: {top}; all-int8 drop {100 * int8_drop:.2f} pt, "
        f"all-{probe.value} {100 * probe_drop:.2f} pt on {n_anchor} images ({path.name})")
    return sens


def sensitivity_csv(sens: Sensitivity) -> str:
    lines = ["rank,unit,position,nodes,cosine,sqnr_db,damage"]
    for k, u in enumerate(sens.ranked()):
        lines.append(f"{k + 1},{u.unit},{u.position},{len(u.nodes)},{u.cosine:.6f},{u.sqnr_db:.3f},{u.damage:.6g}")
    return "\n".join(lines) + "\n"


def sensitivity_table(sens: Sensitivity, top: int = 20) -> str:
    head = f"{'rank':>4}  {'unit':<40}  {'pos':>4}  {'nodes':>5}  {'cosine':>8}  {'SQNR dB':>8}  {'damage':>9}"
    lines = [head, "-" * len(head)]
    for k, u in enumerate(sens.ranked()[:top]):
        lines.append(f"{k + 1:>4}  {u.unit[:40]:<40}  {u.position:>4}  {len(u.nodes):>5}  {u.cosine:>8.5f}  "
                     f"{u.sqnr_db:>8.2f}  {u.damage:>9.2e}")
    return "\n".join(lines)


def sensitivity_png(sens: Sensitivity, *, top: int = 30, dpi: int = 100) -> bytes:
    """Ranked horizontal bar chart of the ``top`` most damaging units (PNG bytes, Agg)."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    ranked = sens.ranked()[:top]
    fig = Figure(figsize=(8, 0.25 * len(ranked) + 1.2), dpi=dpi)
    ax = fig.add_subplot(1, 1, 1)
    ys = list(range(len(ranked)))[::-1]
    ax.barh(ys, [u.damage for u in ranked], color="#c0392b")
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{u.unit[:32]} ({len(u.nodes)})" for u in ranked], fontsize=7)
    ax.set_xlabel(f"damage of int8: output cosine gain with the unit in {sens.probe} over all-int8 ({sens.images} images)")
    ax.set_title(f"sensitivity: top {len(ranked)} of {len(sens.units)} units", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def sensitivity_artifacts(sens: Sensitivity | None) -> dict[str, str | bytes]:
    """The parent run's sensitivity.csv + sensitivity.png (nothing when the study ran no sweep)."""
    if sens is None:
        return {}
    return {"sensitivity.csv": sensitivity_csv(sens), "sensitivity.png": sensitivity_png(sens)}


def write_outputs(sens: Sensitivity, out: Path) -> list[Path]:
    """``out``.csv and ``out``.png."""
    out = Path(out)
    csv, png = out.with_suffix(".csv"), out.with_suffix(".png")
    csv.parent.mkdir(parents=True, exist_ok=True)
    csv.write_text(sensitivity_csv(sens))
    png.write_bytes(sensitivity_png(sens))
    return [csv, png]

