"""Cost-model benchmark: does the fitted ``ort-cpu`` model rank trial configs like real timings?

30 configs of YOLOX-nano (../shared/data/models/yolox_nano.onnx, read-only; the input dims are
made symbolic on an in-memory copy) varying the int8/int16/float mix and the resolution
(320/352/416). Each config's QDQ model (autoq.quant.qdq.build_qdq, min/max ranges from
autoq.quant.calibrate.collect_stats over a few calibration images at 416) is timed in ONNX Runtime
on this machine: one intra-op thread, the process pinned to one core, every config run once per round
in a freshly shuffled order (load bursts and cache effects of the previous model hit all alike), a
config's latency = the QUANTILE-th percentile (default 20) of its times (other processes only ever add
time: on a shared machine the upper half of the distribution is their noise, p75 ran 30 % over the
median in a run at load ~0.8), rounds in blocks of BLOCK until the rank order of those figures holds (at most one pair swapped: a
near-tie) after two consecutive blocks (at least MIN_ROUNDS, at most MAX_ROUNDS). Within one resolution the configs differ by a few
percent, so a fixed 21 rounds gave rho 0.85-0.92 run to run. The node table at each resolution comes
from node_table(proto, (1, 3, r, r)). ``ort-cpu`` is fitted on 10 configs and evaluated on the other
20: Spearman rho and MAPE between estimate and measurement, overall and per resolution (the
within-resolution order is the hard part: between resolutions it is nearly free); the split-half rho
of the measurements (even vs odd rounds) says how far that order is measurable at all.

Run:  python experiments/bench_cost_model.py   (last line: spearman=<rho> spearman_<res>=<rho> ...)
      python experiments/bench_cost_model.py --refit experiments/_work/bench_cost_model/timings-<run>.json
      (the fit again on a run's saved timings: a change to the fit compared on the same measurements)
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("AUTOQ_REAL_DATA", ROOT.parent / "shared" / "data"))
QUANTILE = float(os.environ.get("BENCH_QUANTILE", "20"))  # percentile of a config's times taken as its latency
BLOCK = int(os.environ.get("BENCH_BLOCK", "8"))
MIN_ROUNDS = int(os.environ.get("BENCH_MIN_ROUNDS", "24"))
MAX_ROUNDS = int(os.environ.get("BENCH_MAX_ROUNDS", "96"))
THREADS = 1
RESOLUTIONS = (320, 352, 416)
N_CONFIGS = 30
N_FIT = 10


def spearman(a, b) -> float:
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def symbolic_model(path: Path):
    """The model loaded normally, then with H and W made symbolic (in memory, via a temp file)."""
    import tempfile

    import onnx

    from autoq.model.graph import load_model

    proto = onnx.load(str(path))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    dims[2].Clear()
    dims[2].dim_param = "height"
    dims[3].Clear()
    dims[3].dim_param = "width"
    for out in proto.graph.output:
        for d in out.type.tensor_type.shape.dim:
            d.Clear()
    del proto.graph.value_info[:]
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "yolox_nano_symbolic.onnx"
        onnx.save(proto, str(p))
        return load_model(p)


def calibration_batches(n: int = 4, size: int = 416):
    import cv2

    files = sorted((DATA / "coco_tiny" / "val2017").glob("*.jpg"))[:n]
    for f in files:
        img = cv2.resize(cv2.imread(str(f)), (size, size)).astype(np.float32)
        yield img.transpose(2, 0, 1)[None]


def make_configs(names: list[str], seed: int = 0):
    from autoq.plan import QuantConfig

    rng = random.Random(seed)
    configs = []
    for k in range(N_CONFIGS):
        res = RESOLUTIONS[k % len(RESOLUTIONS)]
        style = k % 5
        f16 = rng.choice([0.0, 0.1, 0.25, 0.5, 0.8])
        ffl = rng.choice([0.0, 0.0, 0.05, 0.15, 0.4])
        nodes = {}
        if style == 4:  # contiguous blocks: a float tail / int16 middle
            n = len(names)
            a = int(n * rng.uniform(0.2, 0.6))
            b = min(n, a + int(n * f16 * 0.5))
            for i, name in enumerate(names):
                if i >= n - int(n * ffl):
                    nodes[name] = "float"
                elif a <= i < b:
                    nodes[name] = "int16"
        else:
            for name in names:
                u = rng.random()
                if u < ffl:
                    nodes[name] = "float"
                elif u < ffl + f16 * (1 - ffl):
                    nodes[name] = "int16"
        configs.append(QuantConfig(resolution=(res, res), nodes=nodes))
    return configs


def pin_one_core() -> int | None:
    """The process on its last allowed core (no migrations between the timed runs); None off Linux."""
    try:
        core = sorted(os.sched_getaffinity(0))[-1]
        os.sched_setaffinity(0, {core})
        return core
    except (AttributeError, OSError):
        return None


def time_until_stable(models: list[bytes], shapes: list[tuple[int, ...]]) -> tuple[list[list[float]], int, list[int]]:
    """Per-config times (ms) over shuffled interleaved rounds until the rank order of the per-config p-QUANTILE holds
    for two consecutive blocks; returns (times per config, rounds run, pairs swapped after each block)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    rng = np.random.default_rng(0)
    runs = []
    for model, shape in zip(models, shapes):
        sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: rng.uniform(0, 255, size=shape).astype(np.float32)}
        for _ in range(2):  # warm-up
            sess.run(None, feed)
        runs.append((sess, feed))
    times: list[list[float]] = [[] for _ in models]
    order = list(range(len(models)))
    shuffle = random.Random(0)
    previous, stable, swaps = None, 0, []
    rounds = 0
    while rounds < MAX_ROUNDS:
        for _ in range(BLOCK):
            shuffle.shuffle(order)
            for k in order:
                sess, feed = runs[k]
                t = time.perf_counter()
                sess.run(None, feed)
                times[k].append((time.perf_counter() - t) * 1e3)
            rounds += 1
        ranks = np.argsort(np.argsort([np.percentile(ts, QUANTILE) for ts in times]))
        if previous is not None:
            swapped = int(sum(1 for i in range(len(ranks)) for j in range(i + 1, len(ranks))
                              if (ranks[i] < ranks[j]) != (previous[i] < previous[j])))
            swaps.append(swapped)
            stable = stable + 1 if swapped <= 1 else 0  # one swapped pair: a near-tie, not a changing order
        previous = ranks
        if rounds >= MIN_ROUNDS and stable >= 2:
            break
    return times, rounds, swaps


def main() -> int:
    from autoq.model.graph import node_table
    from autoq.quant.calibrate import collect_stats
    from autoq.quant.qdq import build_qdq
    from autoq.quant.ranges import activation_ranges
    from autoq.surrogates.cost_model import estimate_latency, load_target
    from autoq.surrogates.fit import Measurement, fit_target, mape

    t0 = time.time()
    model = symbolic_model(DATA / "models" / "yolox_nano.onnx")
    stats = collect_stats(model, calibration_batches(), cache_dir=None, key="bench")
    configs = make_configs([n.name for n in model.quantizable()])
    ranges = activation_ranges(stats, configs[0].calibration)
    tables = {r: node_table(model.proto, (1, 3, r, r)) for r in RESOLUTIONS}
    print(f"model {len(model.nodes)} nodes, calibration + tables {time.time() - t0:.1f}s", flush=True)

    names = [n.name for n in model.quantizable()]
    protos = [build_qdq(model, cfg, ranges).SerializeToString() for cfg in configs]
    shapes = [(1, 3, cfg.resolution[0], cfg.resolution[1]) for cfg in configs]
    if len(sys.argv) > 2 and sys.argv[1] == "--refit":  # the fit again on a run's saved timings (no timing)
        timed = [list(map(float, ts)) for ts in json.loads(Path(sys.argv[2]).read_text())["times_ms"]]
        print(f"timings of {sys.argv[2]}: {len(timed[0])} rounds", flush=True)
    else:
        pinned = pin_one_core()
        print(f"{len(protos)} QDQ models built at {time.time() - t0:.1f}s; timing in shuffled interleaved rounds "
              f"(blocks of {BLOCK}, {MIN_ROUNDS}..{MAX_ROUNDS}) on core {pinned}; load average {os.getloadavg()[0]:.2f}",
              flush=True)
        t1 = time.time()
        timed, rounds, swaps = time_until_stable(protos, shapes)
        print(f"{rounds} rounds in {time.time() - t1:.0f}s; pairs swapped in the order after each block: {swaps}; "
              f"load average {os.getloadavg()[0]:.2f}", flush=True)
        saved = ROOT / "experiments" / "_work" / "bench_cost_model" / f"timings-{time.strftime('%Y%m%d-%H%M%S')}.json"
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps({"times_ms": timed}))
        print(f"timings saved to {saved} (refit them: --refit {saved})", flush=True)
    medians = [float(np.percentile(ts, QUANTILE)) for ts in timed]
    halves = ([float(np.percentile(ts[0::2], QUANTILE)) for ts in timed], [float(np.percentile(ts[1::2] or ts, QUANTILE)) for ts in timed])
    mhalves = ([float(np.median(ts[0::2])) for ts in timed], [float(np.median(ts[1::2] or ts)) for ts in timed])
    measurements = []
    for i, (cfg, ts) in enumerate(zip(configs, timed)):
        r = cfg.resolution[0]
        counts = cfg.counts(names)
        label = f"#{i:02d} {r} int8={counts['int8']} int16={counts['int16']} float={counts['float']}"
        measurements.append(Measurement(cfg, tables[r], medians[i], None, label))
        print(f"{label:<44} measured {medians[i]:8.2f} ms (p{QUANTILE:g}; min {min(ts):.2f}, median {np.median(ts):.2f}, "
              f"p75 {np.percentile(ts, 75):.2f})", flush=True)
    for r in RESOLUTIONS if min(len(ts) for ts in timed) > 1 else ():  # (a refit from p20 values has no rounds)
        idx = [i for i, c in enumerate(configs) if c.resolution[0] == r]
        print(f"measurement split-half (even vs odd rounds) rho at {r}: p{QUANTILE:g} "
              f"{spearman([halves[0][i] for i in idx], [halves[1][i] for i in idx]):.3f}, median "
              f"{spearman([mhalves[0][i] for i in idx], [mhalves[1][i] for i in idx]):.3f} (n={len(idx)})")

    prior = load_target("ort-cpu")
    # 10 fit points spread over the resolutions (seeded), the other 20 held out
    by_res = {r: [i for i, c in enumerate(configs) if c.resolution[0] == r] for r in RESOLUTIONS}
    rng = random.Random(1)
    fit_idx = sorted(i for r in RESOLUTIONS for i in rng.sample(by_res[r], 4))[:N_FIT]
    held_idx = [i for i in range(N_CONFIGS) if i not in fit_idx]
    result = fit_target(prior, measurements, holdout_indices=held_idx)
    print(result.report())
    held = [measurements[i] for i in held_idx]
    truth = [m.ms for m in held]
    before = [estimate_latency(m.nodes, m.config, prior).total_ms for m in held]
    after = [estimate_latency(m.nodes, m.config, result.target).total_ms for m in held]
    for m, b, a in zip(held, before, after):
        print(f"{m.label:<44} measured {m.ms:8.2f}  prior {b:8.2f}  fitted {a:8.2f}")
    out = Path(os.environ.get("BENCH_TARGET_OUT", "/tmp/ort-cpu-fitted.yaml"))
    result.write(out)
    print(f"fitted target written to {out}")
    print(f"held-out (n={len(held)}): prior  spearman {spearman(before, truth):.3f}  MAPE {mape(before, truth):.1%}")
    rho = spearman(after, truth)
    print(f"held-out (n={len(held)}): fitted spearman {rho:.3f}  MAPE {mape(after, truth):.1%}")
    per_res = {}
    for r in RESOLUTIONS:
        k = [j for j, m in enumerate(held) if m.config.resolution[0] == r]
        per_res[r] = spearman([after[j] for j in k], [truth[j] for j in k])
        print(f"held-out at {r} (n={len(k)}): prior spearman {spearman([before[j] for j in k], [truth[j] for j in k]):.3f}"
              f"  fitted spearman {per_res[r]:.3f}  MAPE {mape([after[j] for j in k], [truth[j] for j in k]):.1%}")
    print(f"total {time.time() - t0:.0f}s")
    print(f"spearman={rho:.3f} " + " ".join(f"spearman_{r}={v:.3f}" for r, v in per_res.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
