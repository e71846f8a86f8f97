"""Per target: the searched units and the front of a study, and every front member's export checked.

Issue 15 (capability tables): run once with an older checkout on PYTHONPATH ("before") and once with this one.
Issue 20 (bundles): ``--check-exports`` exports every front member in every format but rknn and runs the
format's strict checker (tests/checkers/); a format that refuses a trial says why in one line.

Usage: python experiments/compare_capabilities.py OUT_DIR [--model yolox|demo] [--budget 20]
           [--targets horizon-j5,axera-ax650,rk3588] [--check-exports]
YOLOX-nano and coco_tiny come from $AUTOQ_REAL_DATA (default ../shared/data); the demo is generated.
Writes OUT_DIR/<target>/ (projects) and OUT_DIR/summary.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from run_shared_yolox import (
    CONFIG,  # the one YOLOX-nano project config of the experiments (sibling script)
)

ROOT = Path(__file__).resolve().parents[1]


def write_config(model: str, root: Path, target: str, budget: int) -> Path:
    cfg = root / "autoq.yaml"
    if model == "yolox":
        data = Path(os.environ.get("AUTOQ_REAL_DATA") or ROOT / ".." / "shared" / "data").resolve()
        if not (data / "models" / "yolox_nano.onnx").is_file():
            sys.exit(f"no YOLOX-nano under {data}: set AUTOQ_REAL_DATA")
        cfg.write_text(CONFIG.format(data=data, target=target, budget=budget, study=f"caps-{target}"))
        return cfg
    from autoq.demo.project import write_demo_project

    write_demo_project(root, log=lambda _: None)
    text = cfg.read_text().replace("name: generic-npu", f"name: {target}").replace("budget: 30", f"budget: {budget}")
    cfg.write_text(text.replace("study_name: demo", f"study_name: caps-{target}"))
    return cfg


def check_exports(project, study, front, out: Path) -> list[str]:
    sys.path.insert(0, str(ROOT / "tests"))
    from checkers import CHECKERS

    from autoq.errors import ExportError
    from autoq.export import export_config
    from autoq.export.run import trial_context

    passed, refused, failed = {}, {}, {}
    lines = []
    for t in front:
        ctx = trial_context(project, study, t)
        for fmt, check in CHECKERS.items():
            folder = out / f"trial_{t.number}" / fmt
            try:
                export_config(ctx, fmt, folder)
            except ExportError as exc:
                refused[fmt] = refused.get(fmt, 0) + 1
                lines.append(f"    trial {t.number} {fmt}: refused: {exc}")
                continue
            problems = check(folder)
            if problems:
                failed[fmt] = failed.get(fmt, 0) + 1
                lines.append(f"    trial {t.number} {fmt}: CHECKER: {problems[:3]}")
            else:
                passed[fmt] = passed.get(fmt, 0) + 1
    table = "  exports: " + ", ".join(f"{f} {passed.get(f, 0)} pass/{refused.get(f, 0)} refused/{failed.get(f, 0)} fail"
                                      for f in CHECKERS)
    return [table, *lines]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", choices=("yolox", "demo"), default="yolox")
    ap.add_argument("--budget", type=int, default=20)
    ap.add_argument("--targets", default="horizon-j5,axera-ax650,rk3588")
    ap.add_argument("--check-exports", action="store_true")
    args = ap.parse_args()
    from autoq.app.search import run_search
    from autoq.config import load_config
    from autoq.pipeline import Project
    from autoq.results.front import front_trials
    from autoq.results.store import load_study
    from autoq.search.sensitivity import node_units
    from autoq.trial_record import trial_config

    lines = []
    for target in args.targets.split(","):
        root = (args.out / target).resolve()
        root.mkdir(parents=True, exist_ok=True)
        project = Project(load_config(write_config(args.model, root, target, args.budget)))
        run_search(project, log=lambda m, t=target: print(f"[{t}] {m}", flush=True))
        study = load_study(project)
        space = json.loads(study.user_attrs["autoq_space"])
        names = project.quantizable_names
        lines.append(f"{target}: {len(names)} quantizable nodes, {len(node_units(project))} units, "
                     f"{len(space['params'])} precision parameters "
                     f"({sum(p[0].startswith('unit:') for p in space['params'])} units of their own)")
        front = sorted(front_trials(study, project), key=lambda t: t.values[1])
        for t in front:
            c = trial_config(t).counts(names)
            lines.append(f"  trial {t.number:>3}  drop {100 * t.values[0]:6.2f} pt  {t.values[1]:8.3f} ms  "
                         f"int8 {c['int8']:>3} int16 {c['int16']:>3} float {c['float']:>3}  {t.user_attrs.get('seed', '')}")
        if args.check_exports:
            lines += check_exports(project, study, front, root / "exports")
        print("\n".join(lines[-len(front) - 1:]), flush=True)
    print("\n".join(lines))
    (args.out / "summary.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
