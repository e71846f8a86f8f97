"""How noisy is a drop on the shared YOLOX-nano eval set (issue 17): paired bootstrap intervals.

Usage: python experiments/measure_drop_noise.py [--budget 16] [--target horizon-j5]
Runs (or continues) a short search on ../shared/data (see run_shared_yolox.py) and prints, for the
all-int16 seed, the knapsack seeds and every front member, the drop with its 95% paired bootstrap
interval (200 resamples of the 80 images) and how many front members are distinguishable from every
faster member. Writes experiments/results/drop_noise.txt.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))


def main() -> int:
    import run_shared_yolox

    from autoq.app.search import run_search
    from autoq.config import load_config
    from autoq.pipeline import Project
    from autoq.plan import percentile_interval
    from autoq.results.front import format_pareto, pareto_rows, target_label
    from autoq.trial_record import BOOT_ATTR

    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=int, default=16)
    ap.add_argument("--target", default="horizon-j5")
    ap.add_argument("--work", default=str(ROOT / "experiments/_work/drop_noise"))
    args = ap.parse_args()
    data = Path(os.environ.get("AUTOQ_REAL_DATA", ROOT.parent / "shared" / "data")).resolve()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cfg = work / "autoq.yaml"
    cfg.write_text(run_shared_yolox.CONFIG.format(data=data, target=args.target, budget=args.budget, study="drop-noise"))
    project = Project(load_config(cfg), log=lambda m: print(m, file=sys.stderr))
    study = run_search(project, log=lambda m: print(m, file=sys.stderr))
    n = len(project.eval_set.metas)
    lines = [f"YOLOX-nano, {n} eval images (coco_tiny), target {args.target}; 95% paired bootstrap interval of the drop "
             "(200 resamples, float and trial on the same draws), mAP points", ""]
    head = f"{'trial':>5}  {'seed':<22}  {'drop':>6}  {'interval':>16}  {'width':>6}  {'est. ms':>8}"
    lines += [head, "-" * len(head)]
    for t in study.trials:
        boot = t.user_attrs.get(BOOT_ATTR)
        if t.values is None or not boot:
            continue
        lo, hi = percentile_interval(boot)
        seed = str(t.user_attrs.get("seed", "sampler"))[:22]
        lines.append(f"{t.number:>5}  {seed:<22}  {100 * t.values[0]:>6.2f}  [{100 * lo:>6.2f}, {100 * hi:>6.2f}]  "
                     f"{100 * (hi - lo):>6.2f}  {t.values[1]:>8.3f}")
    rows = pareto_rows(study, project.quantizable_names, project)
    lines += ["", "front:", format_pareto(rows, target_label(project))]
    text = "\n".join(lines)
    print(text)
    out = ROOT / "experiments/results/drop_noise.txt"
    out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
