"""Scoring one trial: autoq's COCO evaluation against pycocotools and faster-coco-eval (issue 19 part 2).

Usage: python experiments/bench_scoring.py [--repeats 7]

On the detections of the float YOLOX-nano over coco_tiny (80 images; $AUTOQ_REAL_DATA, default
../shared/data; the project of experiments/run_shared_yolox.py) and of the demo detector, interleaved,
``--repeats`` times each, median seconds of:

* ``pycocotools``: ``loadRes`` + ``COCOeval.evaluate`` + ``accumulate`` on the whole set (the reference);
* ``pycocotools_per_image``: autoq's image-by-image evaluation as it was (``evaluateImg`` per image,
  category and area range, then ``accumulate``);
* ``autoq``: `autoq.objectives.accuracy.CocoEvaluation` now (`autoq.objectives.cocoeval_numpy`), image by
  image, plus the per-image statistics the bootstrap needs (which neither of the others gives);
* ``faster_coco_eval`` (when installed): its C++ ``COCOeval_faster`` evaluate + accumulate on the whole set.

Every variant's mAP is printed: they must be equal. Adapter decode + NMS is not included (the same for all).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
WORK = ROOT / "experiments" / "_work" / "bench_scoring"


def _projects():
    from run_shared_yolox import CONFIG, shared_data

    from autoq.config import load_config
    from autoq.demo.project import write_demo_project
    from autoq.pipeline import Project

    out = {}
    data = shared_data(required=False)
    if data is not None:
        (WORK / "yolox").mkdir(parents=True, exist_ok=True)
        path = WORK / "yolox" / "autoq.yaml"
        path.write_text(CONFIG.format(data=data, target="generic-npu", budget=1, study="scoring"))
        out["yolox_nano"] = Project(load_config(path))
    out["demo"] = Project(load_config(write_demo_project(WORK / "demo")))
    return out


def _pycocotools(es, results, per_image: bool):
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(es.coco, es.coco.loadRes(copy.deepcopy(results)) if results else None, "bbox")
        ev.params.imgIds = sorted({int(i) for i in es.image_ids})
        if not per_image:
            ev.evaluate()
            ev.accumulate()
            return float(np.mean(ev.eval["precision"][:, :, :, 0, -1][ev.eval["precision"][:, :, :, 0, -1] > -1]))
        ev._prepare()
        p = ev.params
        p.maxDets = sorted(p.maxDets)
        ev.ious = {}
        rows = {}
        for i in p.imgIds:
            for c in p.catIds:
                ev.ious[i, c] = ev.computeIoU(i, c)
            rows[i] = [ev.evaluateImg(i, c, a, p.maxDets[-1]) for c in p.catIds for a in p.areaRng]
        ev.evalImgs = [rows[i][k * 4 + a] for k in range(len(p.catIds)) for a in range(4) for i in p.imgIds]
        p.maxDets = p.maxDets[-1:]
        ev._paramsEval = copy.deepcopy(p)
        ev.accumulate()
        prec = ev.eval["precision"][:, :, :, 0, 0]
        return float(prec[prec > -1].mean())


def _faster(es, results):
    from faster_coco_eval import COCO, COCOeval_faster

    gt = COCO(copy.deepcopy(es.coco.dataset))
    ev = COCOeval_faster(gt, gt.loadRes(copy.deepcopy(results)), "bbox", print_function=lambda *a: None)
    ev.params.imgIds = sorted({int(i) for i in es.image_ids})
    ev.evaluate()
    ev.accumulate()
    prec = ev.eval["precision"][:, :, :, 0, -1]
    return float(prec[prec > -1].mean())


def _autoq(es, dets):
    from autoq.objectives.accuracy import CocoEvaluation

    ev = CocoEvaluation(es)
    for d in dets:
        ev.add([d])
    ev.image_stats()
    return ev.result().map


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    try:
        import faster_coco_eval  # noqa: F401
        have_faster = True
    except ImportError:
        have_faster = False
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    for label, project in _projects().items():
        es = project.eval_set
        outs = project.outputs(project.model.serialized())
        from autoq.objectives.accuracy import CocoEvaluation, detect

        dets = detect(outs, es.metas, project.adapter, input_size=es.size)
        conv = CocoEvaluation(es)
        results = [r for d, m in zip(dets, es.metas) for r in conv._results(d, m.image_id)]
        for r in results:  # loadRes assigns ids and areas itself
            r.pop("id"), r.pop("area"), r.pop("iscrowd")
        variants = {
            "pycocotools": lambda: _pycocotools(es, results, False),
            "pycocotools_per_image": lambda: _pycocotools(es, results, True),
            "autoq": lambda: _autoq(es, dets),
        }
        if have_faster:
            variants["faster_coco_eval"] = lambda: _faster(es, results)
        times: dict[str, list[float]] = {k: [] for k in variants}
        maps: dict[str, float] = {}
        for _ in range(args.repeats):
            for name, fn in variants.items():
                t = time.perf_counter()
                maps[name] = fn()
                times[name].append(time.perf_counter() - t)
        ref = statistics.median(times["pycocotools"])
        print(f"[{label}] {len(es.metas)} images, {len(results)} detections; median of {args.repeats}, interleaved")
        for name in variants:
            m = statistics.median(times[name])
            print(f"[{label}]   {name:<22} {m:7.3f} s  ({m / ref:.2f} x pycocotools)  mAP {maps[name]:.6f}")
        print(f"[{label}] scoring_speedup={ref / statistics.median(times['autoq']):.2f} "
              f"(vs per-image pycocotools {statistics.median(times['pycocotools_per_image']) / statistics.median(times['autoq']):.2f})")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
