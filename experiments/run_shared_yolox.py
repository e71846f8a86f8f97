"""Short search on the shared YOLOX-nano + coco_tiny (not part of the repo).

Usage: python experiments/run_shared_yolox.py [--budget 6] [--target generic-npu]
           [--resolutions 416x416,352x352,320x320] [--rewrites silu_to_hardswish[,a+b]]
With --resolutions / --rewrites they become search dimensions (space.resolutions / space.rewrites), and
before the search a table of float mAP and all-int8 estimated latency (generic-npu, horizon-j5) per
resolution x variant is printed and written to experiments/results/resolution_rewrites.txt.
Reads the data from $AUTOQ_REAL_DATA (default ../shared/data); writes the project under
experiments/_work/shared_yolox/. Prints the float mAP (must be 0.305 +- 0.005) and seconds per trial.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """\
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
target: {{name: {target}}}
search: {{budget: {budget}, seed: 0, study_name: {study}}}
tracking: {{experiment: shared-yolox}}
"""


def shared_data(*, required: bool = True) -> Path | None:
    """The real-data folder ($AUTOQ_REAL_DATA, default ../shared/data) when it holds the YOLOX-nano model;
    otherwise one line on stderr and exit code 2 (``required``) or None."""
    data = Path(os.environ.get("AUTOQ_REAL_DATA", ROOT.parent / "shared" / "data")).resolve()
    if (data / "models" / "yolox_nano.onnx").is_file():
        return data
    print(f"real data not found at {data}; set AUTOQ_REAL_DATA" + ("" if required else " (YOLOX-nano skipped)"),
          file=sys.stderr)
    if required:
        raise SystemExit(2)
    return None


def variant_table(project) -> str:
    """Float mAP and all-int8 estimated latency per resolution x variant of the project's space."""
    from autoq.model.resolution import parse_resolution
    from autoq.plan import QuantConfig
    from autoq.surrogates.cost_model import estimate_latency, load_target

    targets = ["generic-npu", "horizon-j5"]
    head = f"{'resolution':>10}  {'variant':<22}  {'float mAP':>9}  {'AP50':>6}  " + "  ".join(
        f"{t + ' ms':>15}" for t in targets) + "  rewrite max err"
    lines = [f"YOLOX-nano on coco_tiny ({len(project.eval_set.metas)} images); latency: all-int8 cost-model estimate",
             head, "-" * len(head)]
    sizes = [parse_resolution(r) for r in project.resolution_choices()] or [project.input_size]
    for size in sizes:
        for variant in project.variant_choices() or ("",):
            state = project.variant(size, variant)
            base = state.baseline
            cfg = QuantConfig.uniform("int8", resolution=size, variant=variant)
            lat = [estimate_latency(state.model.nodes, cfg, load_target(t)).total_ms for t in targets]
            err = ", ".join(f"{r['name']} {r['max_error']:.3g}" for r in getattr(state, "rewrite_reports", [])) or "-"
            lines.append(f"{size[0]}x{size[1]:<6}  {variant or 'original':<22}  {base.map:>9.4f}  {base.map50:>6.4f}  "
                         + "  ".join(f"{v:>15.3f}" for v in lat) + f"  {err}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=int, default=6)
    ap.add_argument("--target", default="generic-npu")
    ap.add_argument("--study", default="shared-yolox")
    ap.add_argument("--resolutions", default="", help="comma-separated HxW, e.g. 416x416,320x320")
    ap.add_argument("--rewrites", default="", help="comma-separated rewrite sets (a set joined with +)")
    args = ap.parse_args()
    data = shared_data()
    work = ROOT / "experiments" / "_work" / "shared_yolox"
    work.mkdir(parents=True, exist_ok=True)
    cfg_path = work / "autoq.yaml"
    text = CONFIG.format(data=data, target=args.target, budget=args.budget, study=args.study)
    resolutions = [r.strip() for r in args.resolutions.split(",") if r.strip()]
    rewrites = [r.strip().split("+") for r in args.rewrites.split(",") if r.strip()]
    if resolutions or rewrites:
        res = ", ".join("[" + r.replace("x", ", ") + "]" for r in resolutions)
        sets = ", ".join("[" + ", ".join(s) + "]" for s in rewrites)
        text += f"space: {{resolutions: [{res}], rewrites: [{sets}]}}\n"
    cfg_path.write_text(text)

    from autoq.app.search import run_search
    from autoq.config import load_config
    from autoq.pipeline import Project
    from autoq.results.front import format_pareto, pareto_rows

    project = Project(load_config(cfg_path), log=lambda m: print(m, file=sys.stderr))
    t = time.perf_counter()
    base = project.baseline
    print(f"float baseline: mAP {base.map:.4f} AP50 {base.map50:.4f} ({time.perf_counter() - t:.1f}s)")
    if resolutions or rewrites:
        table = variant_table(project)
        print(table)
        out = ROOT / "experiments" / "results" / "resolution_rewrites.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table + "\n")
    study = run_search(project, log=lambda m: print(m, file=sys.stderr))
    print(format_pareto(pareto_rows(study, project.quantizable_names)))
    secs = [sum(t.user_attrs["seconds"].values()) for t in study.trials if "seconds" in t.user_attrs]
    if secs:
        print(f"seconds per trial: median {statistics.median(secs):.2f} (n={len(secs)})")
    ok = abs(base.map - 0.305) <= 0.005
    print(f"float_map={base.map:.4f} reproduces_0.305={ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
