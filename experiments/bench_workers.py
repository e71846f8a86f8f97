"""Trials per hour on the demo with local workers on their own cores (`autoq search --workers K`).

Compared, each on a fresh copy of the demo project (same data, model and warmed caches, so only the
trials are timed: the span from the first trial's start to the last trial's end in the Optuna storage):

* ``1w/1c``: one worker pinned to one core (``autoq search`` started with that affinity: its session is
  measured on, and runs with, one intra-op thread; inference and scoring share the core);
* ``2w/1c``: ``autoq search --workers 2``, which pins each worker to its own core (autoq.runtime.cores);
* ``1w/all``: one worker on every core (the plain ``autoq search``), for reference.

``scale_2w`` = trials/hour of 2w/1c over 1w/1c (goal >= 1.8). Each configuration's session settings are
printed from the study (attr ``autoq_session``).

Usage: python experiments/bench_workers.py [--budget 30] [--rounds 1]
Last line: ``trials_per_hour_1w1c=<x> trials_per_hour_2w1c=<y> trials_per_hour_1wall=<z> scale_2w=<y/x>``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "experiments" / "_work" / "bench_workers"


def study_figures(project_dir: Path, study: str) -> tuple[float, int, dict, float]:
    """(trials/hour over the span of completed trials, count, recorded session settings, median trial seconds)."""
    import optuna
    from optuna.trial import TrialState

    s = optuna.load_study(study_name=study, storage=f"sqlite:///{project_dir / '.autoq' / 'study.db'}")
    done = [t for t in s.trials if t.state is TrialState.COMPLETE]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    per_trial = statistics.median((t.datetime_complete - t.datetime_start).total_seconds() for t in done)
    return len(done) / span * 3600.0, len(done), s.user_attrs.get("autoq_session", {}), per_trial


def run(cmd: list[str], cores: set[int] | None) -> None:
    pre = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    subprocess.run(cmd, check=True, capture_output=True, preexec_fn=pre)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=1, help="repeat the three configurations (interleaved)")
    args = ap.parse_args()
    from autoq.demo.project import write_demo_project

    cores = sorted(os.sched_getaffinity(0))
    print(f"cores {cores}; load average {os.getloadavg()[0]:.2f}", flush=True)
    base = WORK / "base"
    config = write_demo_project(base, log=lambda _m: None)
    search = [sys.executable, "-m", "autoq", "search", "-c"]
    # warm the caches (statistics, baseline, sensitivity, session settings on 1 core and on all) once
    run([*search, str(config), "--budget", "1"], {cores[0]})
    (base / ".autoq" / "study.db").unlink(missing_ok=True)
    run([*search, str(config), "--budget", "1"], None)
    setups = {"1w1c": (1, {cores[0]}), "2w1c": (2, None), "1wall": (1, None)}
    rates: dict[str, list[float]] = {k: [] for k in setups}
    for r in range(args.rounds):
        for name, (k, pin) in setups.items():
            d = WORK / name
            shutil.rmtree(d, ignore_errors=True)
            shutil.copytree(base, d, ignore=shutil.ignore_patterns("study.db", "mlflow.db", "mlartifacts"))
            cmd = [*search, str(d / "autoq.yaml"), "--budget", str(args.budget), "--workers", str(k)]
            run(cmd, pin)
            rate, n, session, per_trial = study_figures(d, "demo")
            rates[name].append(rate)
            print(f"round {r} {name}: {n} trials, {rate:.0f} trials/hour, median trial {per_trial:.2f}s, "
                  f"session {session}, load average {os.getloadavg()[0]:.2f}", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"trials_per_hour_1w1c={med['1w1c']:.0f} trials_per_hour_2w1c={med['2w1c']:.0f} "
          f"trials_per_hour_1wall={med['1wall']:.0f} scale_2w={med['2w1c'] / med['1w1c']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
