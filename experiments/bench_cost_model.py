"""Cost-model benchmark: does the fitted ``ort-cpu`` model rank trial configs like real timings?

30 configs of YOLOX-nano (../shared/data/models/yolox_nano.onnx, read-only; the input dims are
made symbolic on an in-memory copy) varying the int8/int16/float mix and the resolution
(320/352/416). Each config's QDQ model (autoq.quant.qdq.build_qdq, min/max ranges from
autoq.quant.calibrate.collect_stats over a few calibration images at 416) is timed in ONNX Runtime
on this machine (median of RUNS timed runs after warm-up, one intra-op thread; the configs are
timed in interleaved rounds so load bursts on a shared machine hit all of them alike). The node table at
each resolution comes from node_table(proto, (1, 3, r, r)). ``ort-cpu`` is fitted on 10 configs and
evaluated on the other 20: Spearman rho and MAPE between estimate and measurement.

Run:  /work/venv/bin/python experiments/bench_cost_model.py   (last line: spearman=<rho>)
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("AUTOQ_REAL_DATA", ROOT.parent / "shared" / "data"))
RUNS = int(os.environ.get("BENCH_RUNS", "21"))
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


def main() -> int:
    from autoq.model.graph import node_table
    from autoq.quant.calibrate import collect_stats
    from autoq.quant.qdq import build_qdq
    from autoq.quant.ranges import activation_ranges
    from autoq.surrogates.cost_model import estimate_latency, load_target
    from autoq.surrogates.fit import Measurement, fit_target, mape
    from autoq.surrogates.measure import measure_many

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
    print(f"{len(protos)} QDQ models built at {time.time() - t0:.1f}s; timing {RUNS} interleaved rounds", flush=True)
    timed = measure_many(protos, shapes, runs=RUNS, warmup=2, threads=THREADS)
    measurements = []
    for i, (cfg, m) in enumerate(zip(configs, timed)):
        r = cfg.resolution[0]
        counts = cfg.counts(names)
        label = f"#{i:02d} {r} int8={counts['int8']} int16={counts['int16']} float={counts['float']}"
        measurements.append(Measurement(cfg, tables[r], m.median_ms, None, label))
        print(f"{label:<44} measured {m.median_ms:8.2f} ms (min {min(m.times_ms):.2f})", flush=True)

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
    print(f"total {time.time() - t0:.0f}s")
    print(f"spearman={rho:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
