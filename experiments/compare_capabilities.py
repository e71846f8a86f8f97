"""Searched units and the front of YOLOX-nano per target, for the capability tables' before/after (issue 15).

Usage: python experiments/compare_capabilities.py OUT_DIR [--budget 20] [--targets horizon-j5,axera-ax650,rk3588]
Runs one `autoq search` per target on ../shared/data (AUTOQ_REAL_DATA) in OUT_DIR/<target>/ with the autoq
on PYTHONPATH (run it once with an older checkout to get "before"), then prints per target: units, precision
parameters of the space, and the front (trial, drop pt, estimated latency ms, #int8/#int16/#float).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

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
search: {{budget: {budget}, seed: 0, study_name: caps-{target}}}
tracking: {{experiment: caps-{target}}}
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--budget", type=int, default=20)
    ap.add_argument("--targets", default="horizon-j5,axera-ax650,rk3588")
    args = ap.parse_args()
    data = Path(os.environ.get("AUTOQ_REAL_DATA") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
    if not (data / "models" / "yolox_nano.onnx").is_file():
        print(f"no YOLOX-nano under {data}: set AUTOQ_REAL_DATA", file=sys.stderr)
        return 2
    from autoq.app.search import run_search
    from autoq.config import load_config
    from autoq.pipeline import Project
    from autoq.results.front import front_trials
    from autoq.results.store import load_study
    from autoq.search.sensitivity import node_units
    from autoq.trial_record import trial_config

    lines = []
    for target in args.targets.split(","):
        root = args.out / target
        root.mkdir(parents=True, exist_ok=True)
        cfg = root / "autoq.yaml"
        cfg.write_text(CONFIG.format(data=data, target=target, budget=args.budget))
        project = Project(load_config(cfg))
        run_search(project, log=lambda m: print(f"[{target}] {m}", flush=True))
        study = load_study(project)
        space = json.loads(study.user_attrs["autoq_space"])
        names = project.quantizable_names
        lines.append(f"{target}: {len(names)} quantizable nodes, {len(node_units(project))} units, "
                     f"{len(space['params'])} precision parameters "
                     f"({sum(p[0].startswith('unit:') for p in space['params'])} units of their own)")
        for t in sorted(front_trials(study, project), key=lambda t: t.values[1]):
            c = trial_config(t).counts(names)
            lines.append(f"  trial {t.number:>3}  drop {100 * t.values[0]:6.2f} pt  {t.values[1]:8.3f} ms  "
                         f"int8 {c['int8']:>3} int16 {c['int16']:>3} float {c['float']:>3}  {t.user_attrs.get('seed', '')}")
    print("\n".join(lines))
    (args.out / "summary.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
