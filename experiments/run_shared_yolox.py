"""Short search on the shared YOLOX-nano + coco_tiny (not part of the repo).

Usage: python experiments/run_shared_yolox.py [--budget 6] [--target generic-npu]
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=int, default=6)
    ap.add_argument("--target", default="generic-npu")
    ap.add_argument("--study", default="shared-yolox")
    args = ap.parse_args()
    data = Path(os.environ.get("AUTOQ_REAL_DATA", ROOT.parent / "shared" / "data")).resolve()
    if not (data / "models" / "yolox_nano.onnx").is_file():
        print(f"real data not found at {data}; set AUTOQ_REAL_DATA", file=sys.stderr)
        return 2
    work = ROOT / "experiments" / "_work" / "shared_yolox"
    work.mkdir(parents=True, exist_ok=True)
    cfg_path = work / "autoq.yaml"
    cfg_path.write_text(CONFIG.format(data=data, target=args.target, budget=args.budget, study=args.study))

    from autoq.config import load_config
    from autoq.pipeline import Project
    from autoq.search.study import format_pareto, pareto_rows, run_search

    project = Project(load_config(cfg_path), log=lambda m: print(m, file=sys.stderr))
    t = time.perf_counter()
    base = project.baseline
    print(f"float baseline: mAP {base.map:.4f} AP50 {base.map50:.4f} ({time.perf_counter() - t:.1f}s)")
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
