"""Dominance early stop (issue 19 part 3): images evaluated per trial and hypervolume, with and without.

Usage: python experiments/bench_dominance_stop.py [--budget 40] [--seed 0] [--target generic-npu] [--keep-off]

Two studies of ``--budget`` trials on the shared YOLOX-nano + coco_tiny ($AUTOQ_REAL_DATA, default
../shared/data), same sampler seed, same defaults (sensitivity sweep, seeds, screen), one with
``search.dominance_stop: true`` (the default) and one with ``false``. Printed and appended to
experiments/results/dominance_stop.txt:

* images evaluated per counted trial (completed ones: the whole set; stopped ones: the subset),
  mean and as a fraction of the eval set;
* hypervolume of each study's front (completed trials), minimizing (drop, latency), reference point
  = the worst drop and the worst latency among the completed trials of both studies (the union), the
  objectives normalized by that box so the HV is a fraction of it; and the ratio on/off;
* wall seconds of each search.

Done when (issue 19): images per trial <= 0.5x the eval set and HV(on) >= 0.98 HV(off).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from run_shared_yolox import CONFIG, shared_data  # noqa: E402 - the one YOLOX-nano project config of the experiments (sibling)


def hypervolume(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """2-D hypervolume (both minimized) of ``points`` up to ``ref``."""
    pts = sorted(p for p in points if p[0] < ref[0] and p[1] < ref[1])
    hv, best_y = 0.0, ref[1]
    for x, y in pts:  # by drop ascending: each point adds the strip below the best latency so far
        if y < best_y:
            hv += (ref[0] - x) * (best_y - y)
            best_y = y
    return hv


def run(data: Path, work: Path, args, on: bool):
    from autoq.app.search import run_search
    from autoq.config import load_config
    from autoq.pipeline import Project
    from autoq.results.trials import finished_trials
    from autoq.search.study import open_study

    study_name = f"dom-{'on' if on else 'off'}-s{args.seed}"
    folder = work / study_name
    if not on and args.keep_off and (folder / "autoq.yaml").is_file():  # the same seed gives the same study
        project = Project(load_config(folder / "autoq.yaml"), log=lambda m: None)
        study = open_study(project, create=False)
        if len(finished_trials(study)) >= args.budget:
            return project, study, float("nan")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    cache = work / "cache"  # statistics, baselines, sweeps: shared by the studies (content-keyed)
    cache.mkdir(exist_ok=True)
    (folder / ".autoq").mkdir()
    os.symlink(cache, folder / ".autoq" / "cache")
    cfg = folder / "autoq.yaml"
    text = CONFIG.format(data=data, target=args.target, budget=args.budget, study=study_name)
    cfg.write_text(text.replace("seed: 0,", f"seed: {args.seed}, dominance_stop: {'true' if on else 'false'},"))
    lines: list[str] = []
    project = Project(load_config(cfg), log=lambda m: None)

    def log(m: str) -> None:
        lines.append(m)
        print(m, file=sys.stderr, flush=True)

    t = time.perf_counter()
    study = run_search(project, log=log)
    return project, study, time.perf_counter() - t


def summary(project, study) -> dict:
    from optuna.trial import TrialState

    from autoq.results.trials import finished_trials

    n = len(project.eval_set.metas)
    done = [t for t in finished_trials(study) if t.state is not TrialState.FAIL]
    images = [t.user_attrs.get("images", n) for t in done]
    complete = [t for t in done if t.state is TrialState.COMPLETE]
    secs = [sum(v for k, v in t.user_attrs.get("seconds", {}).items()) for t in complete]
    return {
        "n": n,
        "trials": len(done),
        "stopped": sum(1 for t in done if t.state is TrialState.PRUNED),
        "images_mean": sum(images) / max(len(images), 1),
        "points": [(t.values[0], t.values[1]) for t in complete if not t.user_attrs.get("infeasible")],
        "trial_seconds": sorted(secs)[len(secs) // 2] if secs else float("nan"),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", default="generic-npu")
    ap.add_argument("--keep-off", action="store_true", help="reuse a finished study without the stop (same seed)")
    args = ap.parse_args()
    data = shared_data()
    work = ROOT / "experiments" / "_work" / "dominance"
    results = {}
    for on in (True, False):
        project, study, wall = run(data, work, args, on)
        results[on] = {**summary(project, study), "wall": wall}
    union = results[True]["points"] + results[False]["points"]
    ref = (max(p[0] for p in union), max(p[1] for p in union))
    lo = (min(p[0] for p in union), min(p[1] for p in union))
    box = max(ref[0] - lo[0], 1e-12) * max(ref[1] - lo[1], 1e-12)
    load = os.getloadavg()[0]
    out = [f"bench_dominance_stop: YOLOX-nano, {results[True]['n']} eval images, budget {args.budget}, seed {args.seed}, "
           f"target {args.target}; 1-min load at the end {load:.2f}",
           f"HV reference point: worst drop {100 * ref[0]:.2f} pt, worst latency {ref[1]:.4f} ms of the union "
           f"({len(union)} completed trials); HV as a fraction of the box from the union's best corner"]
    hv = {}
    for on in (True, False):
        r = results[on]
        hv[on] = hypervolume(r["points"], ref) / box
        out.append(f"  dominance_stop={'on ' if on else 'off'}: {r['trials']} trials ({r['stopped']} stopped early), "
                   f"images/trial {r['images_mean']:.1f} ({r['images_mean'] / r['n']:.2f}x), HV {hv[on]:.4f}, "
                   f"median completed trial {r['trial_seconds']:.2f} s, search wall {r['wall']:.0f} s")
    ratio = hv[True] / hv[False] if hv[False] > 0 else float("nan")
    frac = results[True]["images_mean"] / results[True]["n"]
    out.append(f"  HV on/off = {ratio:.4f}; done (images <= 0.5x and HV >= 0.98x): {frac <= 0.5 and ratio >= 0.98}")
    text = "\n".join(out)
    print(text)
    dest = ROOT / "experiments" / "results" / "dominance_stop.txt"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "a", encoding="utf-8") as f:
        f.write(text + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
