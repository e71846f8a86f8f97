"""The real search loop next to the inference it cannot avoid (issue 19, "the overnight loop at the floor").

Usage: python experiments/bench_search_loop.py [--trials 20] [--naive 3] [--no-demo] [--no-yolox]

For YOLOX-nano on coco_tiny (80 eval images; $AUTOQ_REAL_DATA, default ../shared/data; the project of
experiments/run_shared_yolox.py) and for the generated demo project (`autoq demo`), one run:

1. ``autoq search`` itself (`autoq.cli.main`, in this process, on a fresh study; the project's caches are
   kept between runs, as a resumed overnight study keeps them) with budget ``--trials`` + 1, continued
   (rerun with a larger budget, as a user would) while trials pruned by the early stop leave fewer than
   ``--trials`` + 1 completed, so that ``--trials`` completed trials have a next one to measure against;
2. per completed trial: start-to-start (Optuna ``datetime_start`` of the next completed trial minus its
   own: includes any screened trial in between), the trial's own stage seconds (user attr ``seconds``,
   MLflow ``seconds.*``: ranges, build, session, inference, score, latency), and, from timing wrappers
   around the real functions (they time, they change nothing): the bootstrap samples of the drop
   (``trial_drop_samples``), the rest of ``Project.evaluate``, MLflow logging (``Tracker.start_trial`` /
   ``finish_trial``), front tagging (``ParetoTags``), the sampler (``suggest_layout_config`` and the
   sampler's relative sampling in ``ask``), screening, and what is left (Optuna storage, ask/tell);
   ``evaluate_rest`` is the rest of ``Project.evaluate`` beyond its stage seconds (an early-stop partial
   pass, when the search runs one, lands there);
3. after the search, every completed trial's QDQ model timed alone: the faster of two plain ORT passes
   over the eval images with the study's session settings (attr ``autoq_session``): the floor;
4. the naive loop on the first ``--naive`` trials' configs: ORT ``quantize_static`` with its own MinMax
   calibration, a sequential pass, pycocotools (experiments/bench_trial_speed.py ``naive_trial``).

``loop_overhead_ratio`` = median start-to-start / median pure inference. A trial stopped early lands in
the interval of the completed trial before it (its time counts, its images do not), so the search's wall
against the inference of every image its trials evaluated is printed too (``wall_per_image_ratio``).
The LAST line gives both projects' ``loop_overhead_ratio``.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "experiments" / "_work" / "bench_loop"
sys.path.insert(0, str(ROOT / "experiments"))

STAGES = ("ranges", "build", "session", "inference", "score", "latency")
LOOP = ("bootstrap", "evaluate_rest", "mlflow", "tagging", "sampling", "screening", "progress", "other",
        "outside_evaluation", "start_to_start", "pure_inference", "between")
EVENTS: list[tuple[float, float, str]] = []  # (wall-clock start, seconds, kind)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


_DEPTH: dict[str, int] = defaultdict(int)


def timed(kind: str, fn):
    """``fn`` recording (start, seconds, kind) per call; a call inside another of the same kind (a
    variant's ``evaluate`` calling its own, the sampler inside ``suggest_layout_config``) is not counted twice."""

    @functools.wraps(fn)
    def wrapper(*a, **k):
        if _DEPTH[kind]:
            return fn(*a, **k)
        _DEPTH[kind] += 1
        start, t = time.time(), time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            EVENTS.append((start, time.perf_counter() - t, kind))
            _DEPTH[kind] -= 1

    return wrapper


def instrument() -> None:
    """Timing wrappers on the functions the loop really calls (patched where the loop looks them up)."""
    import optuna

    from autoq import pipeline
    from autoq.search import objective, progress
    from autoq.tracking.mlflow import Tracker

    pipeline.trial_drop_samples = timed("bootstrap", pipeline.trial_drop_samples)
    pipeline.Project.evaluate = timed("evaluate", pipeline.Project.evaluate)
    Tracker.start_trial = timed("mlflow", Tracker.start_trial)
    Tracker.finish_trial = timed("mlflow", Tracker.finish_trial)
    progress.ParetoTags.__call__ = timed("tagging", progress.ParetoTags.__call__)
    progress.Progress.__call__ = timed("progress", progress.Progress.__call__)
    objective.suggest_layout_config = timed("sampling", objective.suggest_layout_config)
    for cls in (optuna.samplers.TPESampler, optuna.samplers.NSGAIISampler):  # relative sampling runs in ask()
        for name in ("infer_relative_search_space", "sample_relative", "sample_independent"):
            setattr(cls, name, timed("sampling", getattr(cls, name)))
    objective.screen = timed("screening", objective.screen)
    objective._same_config = timed("screening", objective._same_config)


def bench(label: str, config: Path, args) -> float:
    import optuna
    from bench_trial_speed import naive_trial
    from optuna.trial import TrialState

    from autoq.cli import main as autoq_main
    from autoq.config import load_config
    from autoq.pipeline import Project
    from autoq.runtime.session import SessionSettings, create_session
    from autoq.trial_record import SESSION_ATTR, trial_config

    cfg = load_config(config)
    for stale in ("study.db", "mlflow.db", "mlartifacts", "search-debug.log"):  # a fresh study, warm caches
        p = cfg.work_dir / stale
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    EVENTS.clear()
    print(f"[{label}] load average before: {os.getloadavg()[0]:.2f}", flush=True)
    t = time.perf_counter()
    budget, restarts = args.trials + 1, []
    while True:  # trials pruned by an early stop count in the budget: continue the study (a rerun) until enough completed
        restarts.append(time.time())
        code = autoq_main(["search", "-c", str(config), "--budget", str(budget)])
        if code != 0:
            raise SystemExit(f"[{label}] autoq search exited {code}")
        study = optuna.load_study(study_name=cfg.search.study_name, storage=cfg.storage_url())
        complete = sum(1 for tr in study.trials if tr.state is TrialState.COMPLETE)
        if complete >= args.trials + 1 or budget >= 3 * (args.trials + 1):
            break
        budget += args.trials + 1 - complete
    wall = time.perf_counter() - t
    everything = sorted((tr for tr in study.trials if tr.datetime_start), key=lambda tr: tr.datetime_start)
    done = [tr for tr in everything if tr.state is TrialState.COMPLETE]
    print(f"[{label}] {len(restarts)} autoq search run(s) (budget {budget}); intervals spanning a rerun left out")
    print(f"[{label}] autoq search: {len(done)} completed, {len(everything) - len(done)} other trials "
          f"(screened/pruned), {wall:.1f}s in all; load average after: {os.getloadavg()[0]:.2f}", flush=True)

    project = Project(cfg, log=lambda _m: None)
    settings = SessionSettings(**study.user_attrs[SESSION_ATTR])
    project.pin_session_settings(settings)
    rows = []
    for i, tr in enumerate(done[:-1]):
        start, nxt = tr.datetime_start.timestamp(), done[i + 1].datetime_start.timestamp()
        if any(start < r < nxt for r in restarts[1:]):
            continue
        between = sum(1 for o in everything if start < o.datetime_start.timestamp() < nxt and o.state is not TrialState.COMPLETE)
        ev: dict[str, float] = defaultdict(float)
        for s, d, kind in EVENTS:
            if start <= s < nxt:
                ev[kind] += d
        secs = {k: v for k, v in tr.user_attrs.get("seconds", {}).items() if not k.endswith("bootstrap")}  # timed here
        own = sum(secs.values())
        row = {k: secs.get(k, 0.0) for k in STAGES} | secs  # any other stage the trial records (e.g. subset_*)
        row["bootstrap"] = ev["bootstrap"]  # every bootstrap of the trial (a subset pass's too)
        row["evaluate_rest"] = max(0.0, ev["evaluate"] - own - ev["bootstrap"])
        row["mlflow"], row["tagging"] = ev["mlflow"], ev["tagging"]
        row["sampling"], row["screening"], row["progress"] = ev["sampling"], ev["screening"], ev["progress"]
        row["start_to_start"] = nxt - start
        row["outside_evaluation"] = row["start_to_start"] - ev["evaluate"]
        row["other"] = row["outside_evaluation"] - sum(row[k] for k in ("mlflow", "tagging", "sampling", "screening", "progress"))
        session = create_session(project.build(trial_config(tr)).SerializeToString(), settings=settings)
        passes = []
        for _ in range(2):  # the floor: the faster of two passes (other processes only ever add time)
            t = time.perf_counter()
            project.outputs(session)
            passes.append(time.perf_counter() - t)
        row["pure_inference"] = min(passes)
        row["between"] = between
        rows.append(row)
        print(f"[{label}] trial {tr.number:3d} ({tr.user_attrs.get('seed', 'sampler')}): start-to-start "
              f"{row['start_to_start']:.2f}s pure {row['pure_inference']:.2f}s | "
              + " ".join(f"{k} {v:.3f}" for k, v in row.items() if k not in ("start_to_start", "pure_inference",
                                                                                "between", "outside_evaluation"))
              + (f" | {between} screened before the next" if between else ""), flush=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    med = {k: statistics.median(r.get(k, 0.0) for r in rows) for k in keys}
    extra = [k for k in keys if k not in (*STAGES, *LOOP)]
    ratio = med["start_to_start"] / med["pure_inference"]
    print(f"[{label}] session settings {settings}; {len(rows)} start-to-start intervals")
    print(f"[{label}] median seconds: " + ", ".join(f"{k} {med[k]:.3f}" for k in (*STAGES, *extra, *LOOP)))
    parts = {"inference": med["inference"] + med.get("subset_inference", 0.0),  # a subset pass's too
             "score": med["score"] + med.get("subset_score", 0.0),
             "build+session": med["build"] + med["session"],
             **{k: med[k] for k in ("bootstrap", "evaluate_rest", "mlflow", "tagging", "sampling", "other")}}
    share = {k: v / med["start_to_start"] for k, v in parts.items()}
    print(f"[{label}] share of median start-to-start: " + ", ".join(f"{k} {v:.0%}" for k, v in share.items()))
    over = med["start_to_start"] - med["pure_inference"]
    print(f"[{label}] overhead over the floor {over:.2f}s per trial, of which bootstrap {med['bootstrap']:.2f}s "
          f"({med['bootstrap'] / over:.0%})" if over > 0 else f"[{label}] no overhead over the floor")
    print(f"[{label}] loop_overhead_ratio (median start-to-start / median pure inference) = {ratio:.3f}", flush=True)
    # The same wall against the inference of every image the trials in it evaluated: a trial stopped on
    # its subset (dominance) lands inside a completed trial's interval above, which counts its time but
    # not its images. Stopped trials' floor: their images at the median pure seconds per image.
    n = len(project.eval_set.metas)
    pure_of = {d.number: r["pure_inference"] for d, r in zip(done, rows)}
    per_image = statistics.median(r["pure_inference"] for r in rows) / n
    t0, t1 = done[0].datetime_start.timestamp(), done[-1].datetime_start.timestamp()
    evaluated = [o for o in everything if t0 <= o.datetime_start.timestamp() < t1
                 and (o.state is TrialState.COMPLETE or o.user_attrs.get("stopped_early"))]
    images = sum(int(o.user_attrs.get("images", n)) for o in evaluated)
    floor = sum(pure_of.get(o.number, per_image * int(o.user_attrs.get("images", n))) for o in evaluated)
    stopped = sum(1 for o in evaluated if o.user_attrs.get("stopped_early"))
    print(f"[{label}] per evaluated image: {t1 - t0:.1f}s of search for {images} images ({stopped} trials stopped on "
          f"their subset) whose pure inference is {floor:.1f}s: wall_per_image_ratio = {(t1 - t0) / floor:.3f}", flush=True)

    naive = []
    for tr in done[: args.naive]:
        s = naive_trial(project, trial_config(tr))
        pure = next(r["pure_inference"] for r, d in zip(rows, done) if d is tr)
        naive.append((s["wall"], pure))
        print(f"[{label}] naive trial {tr.number}: calibrate+quantize {s['calibrate_quantize']:.2f}s inference "
              f"{s['inference']:.2f}s wall {s['wall']:.2f}s ratio {s['wall'] / pure:.2f} mAP {s['map']:.4f}", flush=True)
    if naive:
        nr = statistics.median(w / p for w, p in naive)
        print(f"[{label}] naive_overhead_ratio (median over {len(naive)}) = {nr:.3f}; median naive wall "
              f"{statistics.median(w for w, _ in naive):.2f}s vs loop start-to-start {med['start_to_start']:.2f}s")
    return ratio


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=20,
                    help="completed trials measured (the search runs until one more has completed)")
    ap.add_argument("--naive", type=int, default=3, help="trials whose config the naive loop also runs (0 = skip)")
    ap.add_argument("--no-demo", dest="demo", action="store_false")
    ap.add_argument("--no-yolox", dest="yolox", action="store_false")
    args = ap.parse_args()
    import logging
    import warnings

    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's opset/preprocessing warnings
    warnings.filterwarnings("ignore")
    instrument()
    print(f"cpu_count={os.cpu_count()} load average {os.getloadavg()}")
    ratios = {}
    if args.demo:
        from autoq.demo.project import write_demo_project

        ratios["demo"] = bench("demo", write_demo_project(WORK / "demo", log=log), args)
    if args.yolox:
        from run_shared_yolox import CONFIG, shared_data

        data = shared_data()
        (WORK / "yolox").mkdir(parents=True, exist_ok=True)
        config = WORK / "yolox" / "autoq.yaml"
        config.write_text(CONFIG.format(data=data, target="generic-npu", budget=args.trials + 1, study="bench-loop"))
        ratios["yolox_nano"] = bench("yolox_nano", config, args)
    print(" ".join(f"loop_overhead_ratio_{k}={v:.3f}" for k, v in ratios.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
