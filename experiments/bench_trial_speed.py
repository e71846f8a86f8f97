"""What does one trial cost next to the inference it cannot avoid?

Usage: python experiments/bench_trial_speed.py [--configs 10] [--naive 5] [--no-fidelity] [--no-estimators]

On the shared YOLOX-nano + coco_tiny (80 eval images, 32 calibration images; $AUTOQ_REAL_DATA,
default ../shared/data) and on the demo project (when autoq/demo/detector.onnx exists), for
``--configs`` random mixed configs (seed 0: int8/int16/float per node x granularity x method):

* per-stage seconds of a real trial (`Project.evaluate`): ranges from cached statistics, QDQ
  build, session creation, inference (streamed: the metric scores finished batches meanwhile),
  the scoring left after the inference, latency estimate; and, timed alone on the same outputs,
  post-processing + NMS (adapter) and COCOeval;
* ``trial_wall / pure_inference_wall`` (pure inference = a plain ORT run over the eval images of
  the same QDQ model, same session settings) and the same ratio for the naive loop (ORT
  ``quantize_static`` with its own MinMax calibration over the 32 images on every trial, then a
  sequential pass and scoring) for the first ``--naive`` configs;
* the fidelity difference (mAP with ORT graph optimizations on minus off) for every config;
* the estimator comparison on all-int8 per-channel (mAP per method).

The LAST line is ``trial_overhead_ratio=<median over the configs>`` of the YOLOX project.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "experiments" / "_work"

YOLOX_CONFIG = """\
model:
  path: {data}/models/yolox_nano.onnx
  adapter: yolox
  adapter_options: {{num_classes: 80, score_threshold: 0.01, nms_iou: 0.65, max_detections: 100}}
data:
  eval_images: {data}/coco_tiny/val2017
  eval_annotations: {data}/coco_tiny/annotations/instances_val2017.json
  calib_images: {data}/coco_tiny/train2017
  calib_count: 32
preprocess: {{resize: letterbox, pad_value: 114, color: bgr}}
space: {{methods: [minmax, percentile, mse, kl], percentiles: [99.99, 99.999]}}
search: {{budget: 10, seed: 0, study_name: bench}}
"""

METHODS = ("minmax", "percentile", "mse", "kl")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def random_configs(project, n: int, seed: int = 0):
    from autoq.plan import Calibration, QuantConfig

    rng = np.random.default_rng(seed)
    names = project.quantizable_names
    out = []
    for _ in range(n):
        p_int16, p_float = rng.uniform(0, 0.4), rng.uniform(0, 0.15)
        draw = rng.random(len(names))
        nodes = {n: ("float" if d < p_float else "int16" if d < p_float + p_int16 else "int8") for n, d in zip(names, draw)}
        method = METHODS[int(rng.integers(len(METHODS)))]
        cal = Calibration(
            granularity=("per_tensor", "per_channel")[int(rng.integers(2))],
            method=method,
            percentile=(99.99, 99.999)[int(rng.integers(2))] if method == "percentile" else None,
        )
        out.append(QuantConfig(default="int8", nodes=nodes, calibration=cal))
    return out


def staged_trial(project, config) -> dict[str, float]:
    """One real trial (`Project.evaluate`), then what it cannot avoid and what it hides.

    * ``wall``: the trial as the search runs it (ranges, build, session, inference streamed on a
      thread while the metric scores the finished batches, latency estimate); its own stage
      seconds come from ``result.seconds`` (``score`` = the scoring inference did not hide);
    * ``pure_inference``: a second, plain ORT pass of the same QDQ model with the same session
      settings over the same images (the floor);
    * ``postprocess_nms`` / ``cocoeval``: the scoring stages timed alone on that pass's outputs
      (inside the trial they overlap the inference).
    """
    from autoq.objectives.accuracy import coco_metrics, detect
    from autoq.runtime.session import create_session

    t = time.perf_counter()
    result = project.evaluate(config)
    s: dict[str, float] = {"wall": time.perf_counter() - t, "map": result.map, **result.seconds}
    session = create_session(project.build(config).SerializeToString(), settings=project.session_settings)
    t = time.perf_counter()
    outputs = project.outputs(session)
    s["pure_inference"] = time.perf_counter() - t
    t = time.perf_counter()
    dets = detect(outputs, project.eval_set.metas, project.adapter, input_size=project.eval_set.size)
    s["postprocess_nms"] = time.perf_counter() - t
    t = time.perf_counter()
    m = coco_metrics(dets, project.eval_set)
    s["cocoeval"] = time.perf_counter() - t
    assert abs(m.map - result.map) < 1e-9, (m.map, result.map)  # the streamed trial scores the same
    return s


def naive_trial(project, config) -> dict[str, float]:
    """What a loop without caching does: quantize_static with its own calibration, then evaluate."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from autoq.data.coco import load_calibration
    from autoq.data.preprocess import to_input
    from autoq.objectives.accuracy import coco_metrics, detect
    from autoq.plan import Precision
    from autoq.quant.qdq import config_int16_tensors
    from autoq.runtime.session import create_session

    s: dict[str, float] = {}
    t0 = time.perf_counter()
    d = project.config.data
    images, _ = load_calibration(d.calib_images, d.calib_count, project.input_size, project.preprocess)
    pp = project.preprocess
    name = project.model.input_name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{name: to_input(images[i : i + 1], pp)} for i in range(len(images))])

        def get_next(self):
            return next(self.it, None)

    quantizable = project.model.quantizable()
    to_q = [n.name for n in quantizable if config.precision_of(n.name) is not Precision.FLOAT]
    to_x = [n.name for n in quantizable if config.precision_of(n.name) is Precision.FLOAT]
    overrides = {t: [{"quant_type": QuantType.QInt16}] for t in config_int16_tensors(project.model, config)}
    with tempfile.TemporaryDirectory(prefix="autoq-naive-") as tmp:
        src, dst = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        onnx.save_model(project.model.proto, str(src))
        quantize_static(
            str(src),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=config.calibration.granularity == "per_channel",
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_quantize=to_q,
            nodes_to_exclude=to_x,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={
                "ActivationSymmetric": False,
                "WeightSymmetric": True,
                "TensorQuantOverrides": overrides,
                "UseQDQContribOps": bool(overrides),
            },
        )
        data = dst.read_bytes()
    s["calibrate_quantize"] = time.perf_counter() - t0
    t = time.perf_counter()
    session = create_session(data, settings=project.session_settings)
    outputs = project.outputs(session)
    s["inference"] = time.perf_counter() - t
    dets = detect(outputs, project.eval_set.metas, project.adapter, input_size=project.eval_set.size)
    s["map"] = coco_metrics(dets, project.eval_set).map
    s["wall"] = time.perf_counter() - t0
    return s


def bench_project(label: str, project, args) -> float:
    from autoq.plan import Calibration, QuantConfig
    from autoq.quant import calibrate

    t = time.perf_counter()
    passes = calibrate.CALIBRATION_PASSES
    project.stats
    print(f"[{label}] statistics ready in {time.perf_counter() - t:.1f}s (calibration passes run: {calibrate.CALIBRATION_PASSES - passes})")
    t = time.perf_counter()
    settings = project.session_settings
    print(f"[{label}] session settings: {settings} ({time.perf_counter() - t:.1f}s)")
    base = project.baseline
    print(f"[{label}] float baseline mAP {base.map:.4f}; {len(project.eval_set.metas)} eval images")
    project.cosine_reference  # float outputs kept for per-output cosines: once per search, like the baseline
    for m in METHODS:  # the first trial of each method computes its ranges once (memoized after)
        cal = Calibration(method=m, percentile=99.99 if m == "percentile" else None)
        t = time.perf_counter()
        project.ranges(QuantConfig.uniform("int8", calibration=cal))
        t8 = time.perf_counter() - t
        t = time.perf_counter()
        project.ranges(QuantConfig.uniform("int16", calibration=cal))
        t16 = time.perf_counter() - t
        t = time.perf_counter()
        project.ranges(QuantConfig(default="int8", nodes={project.quantizable_names[3]: "int16"}, calibration=cal))
        print(
            f"[{label}] ranges {m}: first int8 {t8 * 1000:.0f} ms, first int16 {t16 * 1000:.0f} ms, "
            f"memoized mixed {(time.perf_counter() - t) * 1000:.2f} ms"
        )

    configs = random_configs(project, args.configs)
    rows = []
    stages = ("ranges", "build", "session", "inference", "score", "latency", "postprocess_nms", "cocoeval")
    for i, cfg in enumerate(configs):
        s = staged_trial(project, cfg)
        s["ratio"] = s["wall"] / s["pure_inference"]
        rows.append(s)
        c = cfg.counts(project.quantizable_names)
        cal = cfg.calibration
        print(
            f"[{label}] cfg {i}: int8 {c['int8']:3d} int16 {c['int16']:3d} float {c['float']:3d} "
            f"{cal.granularity:11s} {cal.method}{'' if cal.percentile is None else ' ' + str(cal.percentile):9s} "
            f"mAP {s['map']:.4f} | " + " ".join(f"{k} {s[k]:.3f}" for k in stages)
            + f" | wall {s['wall']:.2f}s pure inference {s['pure_inference']:.2f}s ratio {s['ratio']:.2f}",
            flush=True,
        )
    print(
        f"[{label}] median seconds per stage (trial: {', '.join(stages[:6])}; alone: {', '.join(stages[6:])}): "
        + ", ".join(f"{k} {statistics.median(r[k] for r in rows):.3f}" for k in (*stages, "wall", "pure_inference"))
    )
    ratio = statistics.median(r["ratio"] for r in rows)
    print(f"[{label}] trial_overhead_ratio (median trial_wall / pure_inference_wall) = {ratio:.3f}")

    if args.naive:
        naive = []
        for i, cfg in enumerate(configs[: args.naive]):
            s = naive_trial(project, cfg)
            s["ratio"] = s["wall"] / s["inference"]
            naive.append(s)
            print(
                f"[{label}] naive cfg {i}: calibrate+quantize {s['calibrate_quantize']:.2f}s inference {s['inference']:.2f}s "
                f"wall {s['wall']:.2f}s ratio {s['ratio']:.2f} mAP {s['map']:.4f}",
                flush=True,
            )
        print(
            f"[{label}] naive_overhead_ratio (median over {len(naive)} configs, MinMax calibration each trial) = "
            f"{statistics.median(r['ratio'] for r in naive):.3f}; median naive wall "
            f"{statistics.median(r['wall'] for r in naive):.2f}s vs cached {statistics.median(r['wall'] for r in rows):.2f}s"
        )

    if args.fidelity:
        from autoq.report.fidelity import check_fidelity

        diffs = []
        for i, cfg in enumerate(configs):
            r = check_fidelity(project, cfg)
            diffs.append(r.diff)
            print(f"[{label}] fidelity cfg {i}: fake {r.map_fake:.4f} int {r.map_int:.4f} diff {r.diff * 100:+.2f} points", flush=True)
        print(
            f"[{label}] fidelity |diff| points: median {statistics.median(abs(d) for d in diffs) * 100:.2f}, "
            f"max {max(abs(d) for d in diffs) * 100:.2f} (target <= 0.3)"
        )

    if args.estimators:
        results = {}
        for m, p in (("minmax", None), ("percentile", 99.99), ("percentile", 99.999), ("mse", None), ("kl", None)):
            cfg = QuantConfig.uniform("int8", calibration=Calibration("per_channel", m, p))
            value = project.evaluate(cfg).map
            results[f"{m}{'' if p is None else ' ' + str(p)}"] = value
            print(f"[{label}] all-int8 per-channel {m}{'' if p is None else ' ' + str(p)}: mAP {value:.4f}", flush=True)
        best = max(results, key=results.get)
        second = sorted(results.values())[-2]
        print(
            f"[{label}] estimator winner on all-int8 per-channel: {best} mAP {results[best]:.4f} "
            f"(+{(results[best] - second) * 100:.2f} points over the next, +{(results[best] - results['minmax']) * 100:.2f} over minmax; "
            f"float {base.map:.4f})"
        )
    return ratio


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=int, default=10)
    ap.add_argument("--naive", type=int, default=5, help="configs to run the naive loop on (0 = skip)")
    ap.add_argument("--no-fidelity", dest="fidelity", action="store_false")
    ap.add_argument("--no-estimators", dest="estimators", action="store_false")
    ap.add_argument("--no-demo", dest="demo", action="store_false")
    args = ap.parse_args()

    from autoq.config import load_config
    from autoq.pipeline import Project

    print(f"cpu_count={os.cpu_count()}")
    if args.demo:
        detector = ROOT / "autoq" / "demo" / "detector.onnx"
        if detector.is_file():
            from autoq.demo.project import write_demo_project

            cfg_path = write_demo_project(WORK / "bench_demo", log=log)
            bench_project("demo", Project(load_config(cfg_path), log=log), args)
        else:
            print(f"[demo] skipped: {detector} does not exist (train it with experiments/train_demo_detector.py)")

    data = Path(os.environ.get("AUTOQ_REAL_DATA", ROOT.parent / "shared" / "data")).resolve()
    if not (data / "models" / "yolox_nano.onnx").is_file():
        print(f"real data not found at {data}; set AUTOQ_REAL_DATA", file=sys.stderr)
        return 2
    work = WORK / "bench_speed"
    work.mkdir(parents=True, exist_ok=True)
    cfg_path = work / "autoq.yaml"
    cfg_path.write_text(YOLOX_CONFIG.format(data=data))
    ratio = bench_project("yolox_nano", Project(load_config(cfg_path), log=log), args)
    print(f"trial_overhead_ratio={ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
