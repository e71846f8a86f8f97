"""`autoq diagnose`: the quantization troubleshooting checklist, automated, as a report (HTML + Markdown).

Checks, all on the first ``images`` evaluation images (``sens_images`` for the per-group sweep):

1. NV12 input: float mAP after the camera path's BGR -> NV12 (YUV420) -> BGR round trip (cv2, on the
   already resized uint8 images) vs the direct input.
2. Float vs fake-quant vs integer-kernel mAP, overall and per class, for all-int8 and all-int16
   (per-channel weights, minmax ranges): fake-quant = ORT graph optimizations off, integer
   kernels = ORT_ENABLE_ALL (see `autoq.report.fidelity`).
3. Output similarity per output (cosine, L1, L2, Chebyshev; hb_mapper's table) for both.
4. Sensitive node groups: the graph is cut into groups (each Conv and the nodes after it up to the
   next Conv); each group alone in int16 over an all-int8 model, ranked by how much it raises the
   output cosine; then the mAP of all-int8 with the top-k groups in the fallback precision (int16
   when the target runs it, else float = CPU), and of the first/last groups.
5. Calibration vs evaluation statistics: input channel mean/std on both sets, and the activation
   range ratio (evaluation |max| / calibration |max|) of the tensors that differ most.
6. Calibration matrix: {per-tensor, per-channel} x {minmax, mse, percentile} mAP for all-int8 and all-int16.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autoq.data.coco import load_calibration, subset_eval_set
from autoq.data.preprocess import to_input
from autoq.objectives.metrics import MetricContext
from autoq.objectives.similarity import MEASURES, mean_cosine, similarity_per_output
from autoq.plan import Calibration, Precision, QuantConfig
from autoq.quant.calibrate import collect_stats
from autoq.quant.ranges import DEFAULT_PERCENTILE
from autoq.report.doc import Doc
from autoq.runtime.runner import run_model
from autoq.runtime.session import create_session
from autoq.search.sensitivity import GROUP_START_OPS, node_groups, sweep  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from autoq.pipeline import Project

__all__ = ["node_groups", "nv12_roundtrip", "run_diagnose"]

Log = Callable[[str], None]


def nv12_roundtrip(image: np.ndarray, color: str = "bgr") -> np.ndarray:
    """uint8 HxWx3 (in ``color`` order) -> NV12 (YUV420, interleaved UV) -> same colour order, via cv2.

    Odd sizes are padded (edge replicate) to even for the 2x2 chroma subsampling and cropped back.
    """
    import cv2

    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if color == "rgb" else image
    h, w = bgr.shape[:2]
    hh, ww = h + h % 2, w + w % 2
    padded = cv2.copyMakeBorder(bgr, 0, hh - h, 0, ww - w, cv2.BORDER_REPLICATE) if (hh, ww) != (h, w) else bgr
    i420 = cv2.cvtColor(np.ascontiguousarray(padded), cv2.COLOR_BGR2YUV_I420)  # Y, then U plane, then V plane
    y = i420[:hh].reshape(-1)
    chroma = i420[hh:].reshape(-1)
    u, v = chroma[: chroma.size // 2], chroma[chroma.size // 2 :]
    uv = np.empty(u.size * 2, np.uint8)
    uv[0::2], uv[1::2] = u, v
    nv12 = np.concatenate([y, uv]).reshape(hh * 3 // 2, ww)
    back = cv2.cvtColor(nv12, cv2.COLOR_YUV2BGR_NV12)[:h, :w]
    return np.ascontiguousarray(cv2.cvtColor(back, cv2.COLOR_BGR2RGB) if color == "rgb" else back)


class _Progress:
    """``[diagnose k/n] what (elapsed, ETA)`` lines; ETA from the mean time of the steps so far."""
    def __init__(self, log: Log, total: int) -> None:
        self.log, self.total, self.done, self.start = log, total, 0, time.perf_counter()

    def step(self, what: str, n: int = 1) -> None:
        self.done += n
        el = time.perf_counter() - self.start
        eta = el / max(self.done, 1) * max(self.total - self.done, 0)
        self.log(f"[diagnose {self.done}/{self.total}] {what} ({el:.0f}s elapsed, ETA {eta:.0f}s)")


@dataclass
class _Runner:
    """Runs models over image subsets and scores them on the matching eval subset."""
    project: Any

    def outputs(self, model: bytes, images: np.ndarray, level: str | None = None):
        settings = self.project.session_settings
        if level:
            settings = replace(settings, graph_optimization=level)
        session = create_session(model, settings=settings)
        return run_model(session, images, self.project.preprocess, batch_size=settings.batch_size, settings=settings)

    def score(self, es, outputs, reference):
        context = MetricContext(es, adapter=lambda: self.project.adapter, reference=reference, memo={})
        return self.project.metric(outputs, context)

    def build(self, config) -> bytes:
        return self.project.build(config).SerializeToString()


def _channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = images.reshape(-1, images.shape[-1]).astype(np.float64)
    return x.mean(axis=0), x.std(axis=0)


def run_diagnose(
    project: Project,
    out: Path,
    *,
    images: int = 32,
    sens_images: int = 8,
    top: int = 10,
    log: Log = print,
) -> tuple[Path, Path]:
    """Runs the checklist (module doc) and writes ``out`` (HTML) and ``out.md``; returns both paths."""
    t0 = time.perf_counter()
    r = _Runner(project)
    cfg = project.config
    es_full = project.eval_set
    es = subset_eval_set(es_full, images)
    n = len(es.metas)
    sens_n = max(1, min(sens_images, n))
    groups = node_groups(project)
    names = project.quantizable_names
    out_names = project.model.output_names
    target_int16 = "int16" in project.target.precisions
    fallback = Precision.INT16 if target_int16 else Precision.FLOAT
    ks = sorted({k for k in (1, 3, 5, top) if k <= len(groups)})
    edge = min(3, len(groups))
    percentile = (cfg.space.percentiles[-1] if cfg.space.percentiles else None) or DEFAULT_PERCENTILE
    matrix_cals = [Calibration(g, m, percentile if m == "percentile" else None)
                   for g in ("per_tensor", "per_channel") for m in ("minmax", "mse", "percentile")]
    total = 2 + 4 + 1 + len(groups) + len(ks) + 2 + 1 + 2 * len(matrix_cals)
    prog = _Progress(log, total)
    log(f"diagnose: {n} images ({sens_n} for the group sweep over {len(groups)} groups), {total} steps")
    metric_name = project.metric.name
    doc = Doc(f"autoq diagnose: {cfg.model.path.name}")
    summary: list[tuple[str, str]] = []  # (text, css class)

    # 1. float and NV12 ------------------------------------------------------------------------
    float_bytes = project.model.serialized()
    float_out = r.outputs(float_bytes, es.images)
    f = r.score(es, float_out, float_out)
    prog.step(f"float {metric_name} {100 * f.value:.2f}")
    nv12_images = np.stack([nv12_roundtrip(im, cfg.preprocess.color) for im in es.images])
    nv12_out = r.outputs(float_bytes, nv12_images)
    fn = r.score(replace_images(es, nv12_images), nv12_out, float_out)
    pixel_diff = float(np.abs(nv12_images.astype(np.int16) - es.images.astype(np.int16)).mean())
    prog.step(f"NV12 round trip {metric_name} {100 * fn.value:.2f}")
    nv12_delta = fn.value - f.value

    # 2-3. int8 / int16: fake-quant vs integer kernels, per class and similarity ----------------
    cal = Calibration("per_channel", "minmax")
    quant: dict[str, dict[str, Any]] = {}
    for prec in (Precision.INT8, Precision.INT16):
        data = r.build(QuantConfig.uniform(prec, calibration=cal))
        for level, label in (("disabled", "fake"), ("all", "int")):
            o = r.outputs(data, es.images, level)
            quant[f"{prec.value} {label}"] = {"metrics": r.score(es, o, float_out), "outputs": o}
            prog.step(f"all-{prec.value} {label}-quant {metric_name} {100 * quant[f'{prec.value} {label}']['metrics'].value:.2f}")

    # 4. sensitive groups ------------------------------------------------------------------------
    sens = es.images[:sens_n]
    ref_s = r.outputs(float_bytes, sens)
    base_cfg = QuantConfig.uniform(Precision.INT8, calibration=cal)
    base_cos = mean_cosine(ref_s, r.outputs(r.build(base_cfg), sens))
    prog.step(f"all-int8 output cosine on {sens_n} images: {base_cos:.4f}")
    scores = sweep(project, groups, base=Precision.INT8, probe=Precision.INT16, calibration=cal, images=sens,
                   reference=ref_s, step=lambda i, g, c: prog.step(f"group {i + 1}/{len(groups)} {g} in int16: cosine {c:.4f}"),
                   log=lambda m: log(m.replace("sensitivity:", "diagnose:")))
    ranked = [(i, gname, members, cos) for i, ((gname, members), (cos, _)) in enumerate(zip(groups, scores))]
    ranked.sort(key=lambda x: -(x[3] if not math.isnan(x[3]) else -9))

    def with_fallback(group_list) -> QuantConfig:
        nodes = {m: fallback for _, _, members, _ in group_list for m in members}
        return QuantConfig(default=Precision.INT8, calibration=cal, nodes=nodes)

    combos = []
    for k in ks:
        c = with_fallback(ranked[:k])
        m = r.score(es, r.outputs(r.build(c), es.images), float_out)
        combos.append((f"top {k} groups in {fallback.value}", c, m))
        prog.step(f"top-{k} groups in {fallback.value}: {metric_name} {100 * m.value:.2f}")
    by_pos = sorted(ranked, key=lambda x: x[0])
    for label, part in ((f"first {edge} groups", by_pos[:edge]), (f"last {edge} groups", by_pos[-edge:])):
        c = with_fallback(part)
        m = r.score(es, r.outputs(r.build(c), es.images), float_out)
        combos.append((f"{label} in {fallback.value}", c, m))
        prog.step(f"{label} in {fallback.value}: {metric_name} {100 * m.value:.2f}")

    # 5. calibration vs evaluation statistics ----------------------------------------------------

    calib_images, _ = load_calibration(cfg.data.calib_images, cfg.data.calib_count, project.input_size, project.preprocess)
    cm, cs = _channel_stats(calib_images)
    em, esd = _channel_stats(es_full.images)
    eval_stats = collect_stats(project.model, (to_input(es.images[i : i + 1], project.preprocess) for i in range(n)),
                               cache_dir=None, key="")
    calib_stats = project.stats
    ratios = []
    for tname, (lo, hi) in eval_stats.minmax.items():
        if tname not in calib_stats.minmax:
            continue
        clo, chi = calib_stats.minmax[tname]
        ca, ea = max(abs(clo), abs(chi)), max(abs(lo), abs(hi))
        if ca > 0 and ea > 0:
            ratios.append((tname, ca, ea, ea / ca))
    ratios.sort(key=lambda x: -abs(math.log(x[3])))
    prog.step("calibration vs evaluation statistics")

    # 6. calibration matrix ----------------------------------------------------------------------
    matrix: dict[tuple[str, str], float] = {}
    for c in matrix_cals:
        for prec in (Precision.INT8, Precision.INT16):
            label = c.method + (f" {c.percentile}" if c.percentile else "")
            try:
                m = r.score(es, r.outputs(r.build(QuantConfig.uniform(prec, calibration=c)), es.images), float_out).value
            except Exception as exc:
                log(f"diagnose: {c.granularity} {label} {prec.value}: {type(exc).__name__}: {exc}")
                m = float("nan")
            matrix[(f"{c.granularity} {label}", prec.value)] = m
            prog.step(f"{c.granularity} {label} all-{prec.value}: {metric_name} {100 * m:.2f}")

    # --- summary -----------------------------------------------------------------------------
    def pt(v: float) -> str:
        return f"{100 * v:.2f}"

    i8, i16 = quant["int8 fake"]["metrics"].value, quant["int16 fake"]["metrics"].value
    if abs(nv12_delta) > 0.005:
        summary.append((f"NV12 input changes float {metric_name} by {100 * nv12_delta:+.2f} pt: evaluate and "
                        "calibrate on NV12-converted images if the camera delivers NV12.", "bad"))
    else:
        summary.append((f"NV12 input: {100 * nv12_delta:+.2f} pt vs direct input (harmless).", "ok"))
    drop8, drop16 = f.value - i8, f.value - i16
    summary.append((f"all-int8 (per-channel minmax) drops {pt(drop8)} pt, all-int16 drops {pt(drop16)} pt "
                    f"(float {pt(f.value)}).", "bad" if drop8 > 0.02 else "ok"))
    if drop8 > 0.02 and drop16 < 0.3 * drop8:
        summary.append(("int16 activations recover most of the loss: the problem is int8 activation ranges in some "
                        "layers, not the weights; see the sensitive groups.", "bad"))
    for key in ("int8", "int16"):
        d = quant[f"{key} int"]["metrics"].value - quant[f"{key} fake"]["metrics"].value
        if abs(d) > 0.003:
            summary.append((f"all-{key}: integer kernels differ from fake-quant by {100 * d:+.2f} pt "
                            "(search numbers may not transfer to integer hardware).", "bad"))
    top3 = ranked[:3]
    pos = ", ".join(f"{g} (group {i + 1}/{len(groups)})" for i, g, _, _ in top3)
    early = sum(i < len(groups) / 3 for i, _, _, _ in top3)
    summary.append((f"most sensitive groups: {pos}" + (" - the early layers." if early >= 2 else "."),
                    "bad" if early >= 2 else ""))
    best_combo = max(combos, key=lambda x: x[2].value)
    summary.append((f"suggested fallback: {best_combo[0]} -> {metric_name} {pt(best_combo[2].value)} "
                    f"(drop {pt(f.value - best_combo[2].value)} pt, {project.latency(best_combo[1]).total_ms:.3f} ms vs "
                    f"{project.latency(base_cfg).total_ms:.3f} ms all-int8).", ""))
    worst = ratios[0] if ratios else None
    if worst and (worst[3] > 1.5 or worst[3] < 1 / 1.5):
        summary.append((f"calibration vs evaluation: tensor {worst[0]} spans {worst[3]:.2f}x the calibration range "
                        "on the evaluation images; check that calibration images match deployment data.", "bad"))
    mean_gap = float(np.max(np.abs(cm - em)))
    if mean_gap > 10:
        summary.append((f"input channel means differ by up to {mean_gap:.1f} between calibration and evaluation images.", "bad"))
    best_cal = max(((k, v) for k, v in matrix.items() if k[1] == "int8" and not math.isnan(v)), key=lambda x: x[1], default=None)
    if best_cal:
        summary.append((f"best all-int8 calibration: {best_cal[0][0]} ({metric_name} {pt(best_cal[1])}).", ""))

    # --- document ----------------------------------------------------------------------------
    doc.p(f"{n} evaluation images ({sens_n} for the group sweep), target {project.target.name}; {metric_name} in points; "
          f"ran in {time.perf_counter() - t0:.0f}s.")
    doc.h2("Summary", "summary")
    for text, css in summary:
        doc.p(text, css)

    doc.h2("1. NV12 input", "nv12")
    doc.table(["input", metric_name, "AP50"], [["direct (BGR/RGB)", 100 * f.value, 100 * f.map50],
                                               ["NV12 round trip", 100 * fn.value, 100 * fn.map50],
                                               ["delta", 100 * nv12_delta, 100 * (fn.map50 - f.map50)]])
    doc.p(f"mean absolute pixel change of the round trip: {pixel_diff:.2f} (0..255)")

    doc.h2("2. Float vs fake-quant vs integer kernels", "fidelity")
    cols = ["int8 fake", "int8 int", "int16 fake", "int16 int"]
    rows = [["(all)", 100 * f.value] + [100 * quant[c]["metrics"].value for c in cols]]
    rows.append(["(AP50)", 100 * f.map50] + [100 * quant[c]["metrics"].map50 for c in cols])
    for cls, ap in f.per_class_ap.items():
        rows.append([cls, 100 * ap] + [100 * quant[c]["metrics"].per_class_ap.get(cls, float("nan")) for c in cols])
    doc.p("Per-channel weights, minmax ranges. fake = ORT_DISABLE_ALL (Q/DQ as written), int = ORT_ENABLE_ALL (QLinear kernels where ORT has them).")
    doc.table(["class", "float", *cols], rows[:2])
    doc.table(["class", "float", *cols], rows[2:], collapsed=f"per class ({len(rows) - 2} classes with ground truth)")

    doc.h2("3. Output similarity (vs float)", "similarity")
    sim_rows = []
    for key in ("int8 fake", "int16 fake", "int8 int", "int16 int"):
        for name, s in zip(out_names, similarity_per_output(float_out, quant[key]["outputs"])):
            sim_rows.append([f"{key.split()[0]} ({key.split()[1]})", name] + [f"{s[m]:.6g}" for m in MEASURES])
    doc.table(["model", "output", *MEASURES], sim_rows)

    doc.h2("4. Sensitive node groups", "sensitivity")
    doc.p(f"Each group (a Conv and the nodes after it up to the next Conv) alone in int16 over all-int8, on {sens_n} images; "
          f"all-int8 output cosine {base_cos:.4f}. Ranked by cosine improvement.")
    doc.table(["rank", "group (first node)", "position", "nodes", "cosine", "improvement"],
              [[k + 1, g, f"{i + 1}/{len(groups)}", len(mem), f"{c:.4f}", f"{c - base_cos:+.4f}"]
               for k, (i, g, mem, c) in enumerate(ranked[:top])])
    doc.table(["configuration", metric_name, "drop (pt)", "latency_ms", f"#{fallback.value}"],
              [["all-int8", 100 * i8, 100 * drop8, f"{project.latency(base_cfg).total_ms:.3f}", 0]]
              + [[lab, 100 * m.value, 100 * (f.value - m.value), f"{project.latency(c).total_ms:.3f}",
                  c.counts(names)[fallback.value]] for lab, c, m in combos])
    doc.table(["rank", "group", "nodes"], [[k + 1, g, " ".join(mem)] for k, (_, g, mem, _) in enumerate(ranked[:top])],
              collapsed="nodes of the top groups")

    doc.h2("5. Calibration vs evaluation statistics", "stats")
    ch = list(cfg.preprocess.color)
    doc.table(["channel", "calib mean", "eval mean", "calib std", "eval std"],
              [[ch[i].upper(), cm[i], em[i], cs[i], esd[i]] for i in range(3)])
    doc.p(f"{len(calib_images)} calibration images vs {len(es_full.images)} evaluation images (uint8, after resize); "
          f"activation ranges on {n} evaluation images.")
    doc.table(["tensor", "calib |max|", "eval |max|", "ratio"], [[t, f"{a:.4g}", f"{b:.4g}", f"{q:.3f}"] for t, a, b, q in ratios[:top]])

    doc.h2("6. Calibration matrix", "matrix")
    doc.table(["calibration", "all-int8", "all-int16"],
              [[k, 100 * matrix[(k, "int8")], 100 * matrix[(k, "int16")]] for k in dict.fromkeys(k for k, _ in matrix)])
    paths = doc.write(out)
    log(f"diagnose: done in {time.perf_counter() - t0:.0f}s")
    for text, _ in summary:
        log(f"  - {text}")
    return paths


def replace_images(es, images: np.ndarray):
    """The same eval subset with other (same-shape) images."""
    import dataclasses

    return dataclasses.replace(es, images=images)
