"""Trials per hour on the demo with 1 and 2 local workers (`autoq search --workers K`).

Each run uses a fresh copy of the demo project (same data, model and caches warmed once), so only the
trials are timed: the span from the first trial's start to the last trial's end in the Optuna storage.

Usage: python experiments/bench_workers.py [--budget 16]
Last line: ``trials_per_hour_1=<x> trials_per_hour_2=<y>``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "experiments" / "_work" / "bench_workers"


def trials_per_hour(project_dir: Path, study: str) -> tuple[float, int]:
    import optuna
    from optuna.trial import TrialState

    s = optuna.load_study(study_name=study, storage=f"sqlite:///{project_dir / '.autoq' / 'study.db'}")
    done = [t for t in s.trials if t.state is TrialState.COMPLETE]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    return len(done) / span * 3600.0, len(done)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=int, default=16)
    args = ap.parse_args()
    from autoq.demo.project import write_demo_project

    base = WORK / "base"
    config = write_demo_project(base, log=lambda _m: None)
    # warm the caches (statistics, baseline, session settings) once; copies reuse them
    subprocess.run([sys.executable, "-m", "autoq", "search", "-c", str(config), "--budget", "1"],
                   check=True, capture_output=True)
    results = {}
    for k in (1, 2):
        d = WORK / f"workers{k}"
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(base, d, ignore=shutil.ignore_patterns("study.db", "mlflow.db", "mlartifacts"))
        cmd = [sys.executable, "-m", "autoq", "search", "-c", str(d / "autoq.yaml"), "--budget", str(args.budget),
               "--workers", str(k)]
        subprocess.run(cmd, check=True, capture_output=True)
        rate, n = trials_per_hour(d, "demo")
        results[k] = rate
        print(f"{k} worker(s): {n} trials, {rate:.0f} trials/hour", flush=True)
    print(f"trials_per_hour_1={results[1]:.0f} trials_per_hour_2={results[2]:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
