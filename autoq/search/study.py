"""The Optuna study: minimize (map_drop, latency_ms), resumable, shared by workers, mirrored to MLflow.

Overnight rules:
- Optuna storage is the source of truth. A trial's MLflow run is opened when the trial starts and
  its id stored on the trial at once, so a crash never leaves a completed trial unlogged or
  logged twice.
- A heartbeat marks a trial whose worker died (kill -9, lost machine) as failed once it is
  ``3 x heartbeat`` seconds old; its configuration is retried once.
- The budget is exact across workers: trial numbers are handed out atomically by the storage, and
  a trial whose number comes after ``budget`` counted trials is dropped before it runs.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autoq.errors import SearchError
from autoq.pipeline import Project
from autoq.plan import Calibration, Precision, QuantConfig
from autoq.search.space import params_of, suggest_config
from autoq.tracking.mlflow import FAIL_ATTR, PARENT_ATTR, RUN_ATTR, Tracker

Log = Callable[[str], None]
CONFIG_ATTR = "quant_config"
SEEDED_ATTR = "autoq_seeded"
OVER_BUDGET_ATTR = "over_budget"


@dataclass(frozen=True)
class ParetoRow:
    trial: int
    map: float
    map_drop: float
    latency_ms: float
    int8: int
    int16: int
    float: int


def redact(url: str) -> str:
    """A storage URL without its password (never print or log credentials)."""
    import re

    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def _storage(url: str, heartbeat: int):
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if url.startswith(("sqlite:", "postgresql", "mysql", "oracle", "mssql")):
        from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite:"):
            kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
        try:
            return RDBStorage(
                url,
                heartbeat_interval=heartbeat,
                grace_period=3 * heartbeat,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
                **kwargs,
            )
        except Exception as exc:  # unreachable server, bad credentials, missing driver
            raise SearchError(f"cannot open study storage {redact(url)}: {type(exc).__name__}: {exc}") from None
    return optuna.storages.get_storage(url)


def open_study(project: Project, *, seed: int | None = None, create: bool = True, worker: int = 0):
    """Opens (or creates) the project's study in its Optuna storage.

    ``worker`` offsets the sampler seed so parallel workers do not propose the same trials.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = project.config
    url = cfg.storage_url()
    if url.startswith("sqlite:///"):
        cfg.ensure_work_dir()
    seed = cfg.search.seed if seed is None else seed
    sampler = optuna.samplers.TPESampler(seed=seed + worker)
    storage = _storage(url, cfg.search.heartbeat_seconds)
    name = cfg.search.study_name
    if not create:
        try:
            return optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        except KeyError:
            raise SearchError(f"no study {name!r} in {redact(url)}; run `autoq search` first") from None
    try:
        return optuna.create_study(
            study_name=name, storage=storage, sampler=sampler, directions=["minimize", "minimize"], load_if_exists=True
        )
    except Exception as exc:  # e.g. read-only database file
        raise SearchError(f"cannot write study {name!r} to {redact(url)}: {exc}") from None


def _retried_numbers(trials) -> set[int]:
    """Trials whose configuration was retried after their worker died (not counted in the budget)."""
    out: set[int] = set()
    for t in trials:
        out.update(t.system_attrs.get("retry_history", ()))
    return out


def counted_trials(study) -> list:
    """Trials that count toward the budget: all but dropped over-budget ones and retried stale ones."""
    trials = study.get_trials(deepcopy=False)
    retried = _retried_numbers(trials)
    return [t for t in trials if not t.user_attrs.get(OVER_BUDGET_ATTR) and t.number not in retried]


def _finished(study) -> list:
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [t for t in counted_trials(study) if t.state in done]


def _in_flight(study) -> list:
    """Counted trials that are running (here or on another worker); queued ones are not in flight."""
    from optuna.trial import TrialState

    return [t for t in counted_trials(study) if t.state is TrialState.RUNNING]


def optuna_fail_stale(study) -> None:
    """Fails (and re-queues once) trials whose heartbeat stopped; a no-op without heartbeats."""
    import optuna

    optuna.storages.fail_stale_trials(study)


def trial_config(trial) -> QuantConfig:
    """The QuantConfig a trial evaluated."""
    data = trial.user_attrs.get(CONFIG_ATTR)
    if data is None:
        raise SearchError(f"trial {trial.number} has no recorded configuration (state {trial.state.name})")
    return QuantConfig.from_dict(data)


def pareto_rows(study, node_names: tuple[str, ...]) -> list[ParetoRow]:
    """The front, sorted by latency."""
    rows = []
    for t in study.best_trials:
        counts = trial_config(t).counts(node_names)
        rows.append(
            ParetoRow(
                trial=t.number,
                map=t.user_attrs.get("map", float("nan")),
                map_drop=t.values[0],
                latency_ms=t.values[1],
                int8=counts["int8"],
                int16=counts["int16"],
                float=counts["float"],
            )
        )
    return sorted(rows, key=lambda r: r.latency_ms)


def format_pareto(rows: list[ParetoRow]) -> str:
    """The Pareto table as printed at the end of a search (mAP and drop in points)."""
    head = f"{'trial':>5}  {'mAP':>6}  {'drop':>6}  {'latency_ms':>10}  {'#int8':>5}  {'#int16':>6}  {'#float':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.trial:>5}  {100 * r.map:>6.2f}  {100 * r.map_drop:>6.2f}  {r.latency_ms:>10.3f}  "
            f"{r.int8:>5}  {r.int16:>6}  {r.float:>6}"
        )
    return "\n".join(lines)


def pareto_csv(rows: list[ParetoRow]) -> str:
    lines = ["trial,map,map_drop,latency_ms,int8,int16,float"]
    lines += [f"{r.trial},{r.map:.6f},{r.map_drop:.6f},{r.latency_ms:.6f},{r.int8},{r.int16},{r.float}" for r in rows]
    return "\n".join(lines) + "\n"


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class _Progress:
    """One line per finished trial: count, ETA, the best drop and the fastest trial so far.

    A failure reason seen before is not repeated: the line names the first trial that had it.
    """

    def __init__(self, log: Log, budget: int, done_before: int, timeout: float | None) -> None:
        self.log, self.budget, self.done_before, self.timeout = log, budget, done_before, timeout
        self.start = time.perf_counter()
        self.failures: dict[str, int] = {}

    def __call__(self, study, trial) -> None:
        from optuna.trial import TrialState

        if trial.user_attrs.get(OVER_BUDGET_ATTR):
            return
        done = len(_finished(study))
        ran = max(done - self.done_before, 1)
        elapsed = time.perf_counter() - self.start
        left = max(self.budget - done, 0) * elapsed / ran
        if self.timeout is not None:
            left = min(left, max(self.timeout - elapsed, 0.0))
        if trial.state is TrialState.COMPLETE:
            now = f"drop {100 * trial.values[0]:.2f} pt, {trial.values[1]:.3f} ms"
        else:
            reason = trial.user_attrs.get(FAIL_ATTR, "unknown")
            first = self.failures.setdefault(reason, trial.number)
            now = f"FAILED: {reason[:300]}" if first == trial.number else f"failed like trial {first}"
        best = ""
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if complete:
            lo = min(complete, key=lambda t: (t.values[0], t.values[1]))
            fast = min(complete, key=lambda t: (t.values[1], t.values[0]))
            best = (
                f" | best drop {100 * lo.values[0]:.2f} pt @ {lo.values[1]:.3f} ms (#{lo.number})"
                f" | fastest {fast.values[1]:.3f} ms @ {100 * fast.values[0]:.2f} pt (#{fast.number})"
            )
        self.log(
            f"[{min(done, self.budget)}/{self.budget}] trial {trial.number}: {now} | "
            f"{elapsed / ran:.1f} s/trial, ETA {_fmt_seconds(left)}{best}"
        )


class _ParetoTags:
    """Keeps MLflow tag ``pareto`` current as trials finish: after each completed trial only the runs
    whose front membership changed are re-tagged (a tracking hiccup is a warning, not a failed search)."""

    def __init__(self, tracker: Tracker, parent: str, log: Log) -> None:
        self.tracker, self.parent, self.log, self.warned = tracker, parent, log, False

    def __call__(self, study, trial) -> None:
        from optuna.trial import TrialState

        if trial.state is not TrialState.COMPLETE:
            return  # only a completed trial can change the front
        try:
            front = {t.user_attrs.get(RUN_ATTR) for t in study.best_trials}
            self.tracker.update_pareto(self.parent, front - {None})
        except Exception as exc:
            if not self.warned:
                self.warned = True
                self.log(f"warning: cannot update MLflow pareto tags: {type(exc).__name__}: {exc}")


def make_tracker(project: Project) -> Tracker:
    cfg = project.config
    try:
        return Tracker(uri=cfg.tracking_uri(), experiment=cfg.experiment_name(), artifact_root=cfg.root / "mlartifacts")
    except Exception as exc:
        raise SearchError(f"cannot open MLflow tracking {redact(cfg.tracking_uri())}: {exc}") from None


def prepare_study(project: Project, *, seed: int | None = None, worker: int = 0, log: Log = print):
    """Everything before the first trial: baseline, statistics, study, parent run, seed trials."""
    cfg = project.config
    cfg.ensure_work_dir()
    names = project.quantizable_names
    precisions = project.allowed_precisions()
    base = project.baseline
    _ = project.stats  # calibration statistics once, before any trial
    study = open_study(project, seed=seed, worker=worker)
    tracker = make_tracker(project)
    parent = tracker.parent_run(
        cfg.search.study_name,
        study.user_attrs.get(PARENT_ATTR),
        {
            "model": cfg.model.path.name,
            "model_sha256": project.model.sha256,
            "target": project.target.name,
            "quantizable_nodes": len(names),
            "eval_images": len(project.eval_set.metas),
            "float_map": round(base.map, 6),
        },
    )
    if study.user_attrs.get(PARENT_ATTR) != parent:
        study.set_user_attr(PARENT_ATTR, parent)
        study.set_user_attr("float_map", base.map)
    if not study.user_attrs.get(SEEDED_ATTR):
        study.set_user_attr(SEEDED_ATTR, True)
        # Per-channel weights when allowed: per-tensor int8 weights alone can ruin a detector
        # (depthwise convs), which would hide what the activation precision does.
        gran = "per_channel" if "per_channel" in cfg.space.granularities else cfg.space.granularities[0]
        method = cfg.space.methods[0]
        percentile = cfg.space.percentiles[-1] if method == "percentile" else None
        calibration = Calibration(granularity=gran, method=method, percentile=percentile)
        # Seeds run the original model, at its own resolution when that is among the choices.
        resolutions, variants = project.resolution_choices(), project.variant_choices()
        resolution = None
        if resolutions:
            from autoq.model.resolution import format_resolution, parse_resolution

            own = format_resolution(project.input_size)
            resolution = parse_resolution(own if own in resolutions else resolutions[0])
        for p in (Precision.INT8, Precision.INT16):
            if p in precisions:
                seed_cfg = QuantConfig.uniform(p, calibration=calibration, resolution=resolution, variant="")
                params = params_of(seed_cfg, names, resolutions=resolutions, variants=variants)
                study.enqueue_trial(params, user_attrs={"seed": f"all-{p.value}"})
    return study, tracker, parent


def _objective(project: Project, study, tracker: Tracker, parent: str, budget: int):
    from optuna import TrialPruned

    cfg = project.config
    names = project.quantizable_names
    precisions = project.allowed_precisions()

    def objective(trial) -> tuple[float, float]:
        earlier = [t for t in counted_trials(study) if t.number < trial.number]
        if len(earlier) >= budget:  # another worker filled the budget first
            trial.set_user_attr(OVER_BUDGET_ATTR, True)
            study.stop()
            raise TrialPruned("over budget")
        frozen = study.get_trials(deepcopy=False)[trial.number]
        stale = frozen.system_attrs.get("failed_trial")  # set by RetryHeartbeatStaleTrialCallback
        if stale is not None and trial.user_attrs.get(RUN_ATTR):
            tracker.close_stale(trial.user_attrs[RUN_ATTR], f"worker stopped during trial {stale}; retried as trial {trial.number}")
        config = suggest_config(trial, names, precisions, cfg.space.granularities, cfg.space.methods, cfg.space.percentiles,
                                resolutions=project.resolution_choices(), variants=project.variant_choices())
        trial.set_user_attr(CONFIG_ATTR, config.to_dict())
        counts = config.counts(names)
        params = {
            "resolution": "x".join(map(str, config.resolution or project.input_size)),
            "variant": config.variant or "original",
            "calibration": config.calibration.method
            + (f" {config.calibration.percentile}" if config.calibration.percentile else "")
            + f", {config.calibration.granularity} weights",
            "granularity": config.calibration.granularity,
            "method": config.calibration.method,
            "n_int8": counts["int8"],
            "n_int16": counts["int16"],
            "n_float": counts["float"],
            "seed": trial.user_attrs.get("seed", "sampler"),
            "retry_of": stale if stale is not None else "",
        }
        run_id = tracker.start_trial(parent_id=parent, number=trial.number, params=params)
        trial.set_user_attr(RUN_ATTR, run_id)
        try:
            result = project.evaluate(config)
        except Exception as exc:  # isolate the trial: record why, keep the study going
            reason = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr(FAIL_ATTR, reason[:2000])
            trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
            tracker.finish_trial(run_id, config=config, result=None, failure=reason)
            raise
        for k, v in result.metrics().items():
            trial.set_user_attr(k, v)
        trial.set_user_attr("seconds", dict(result.seconds))
        tracker.finish_trial(run_id, config=config, result=result)
        return result.map_drop, result.latency_ms

    return objective


def run_search(
    project: Project,
    *,
    budget: int | None = None,
    timeout: float | None = None,
    seed: int | None = None,
    worker: int = 0,
    log: Log = print,
):
    """Runs trials until the study holds ``budget`` finished trials (or ``timeout`` seconds pass).

    Running it again with the same project continues the same study; several processes
    (``autoq worker``) may run it at once against one storage.
    """
    cfg = project.config
    budget = cfg.search.budget if budget is None else budget
    timeout = cfg.search.timeout if timeout is None else timeout
    if budget <= 0:
        raise SearchError("--budget must be > 0 (number of trials)")
    study, tracker, parent = prepare_study(project, seed=seed, worker=worker, log=log)
    tracker.mark_stale_runs(study)
    done_before = len(_finished(study))
    log(f"search: {max(budget - done_before, 0)} trial(s) to run ({done_before} already in study {cfg.search.study_name!r})")
    objective = _objective(project, study, tracker, parent, budget)
    progress = _Progress(log, budget, done_before, timeout)
    pareto_tags = _ParetoTags(tracker, parent, log)
    start = time.monotonic()
    stalled = False  # the last optimize() finished nothing (other workers took the budget)
    while True:
        left = None if timeout is None else timeout - (time.monotonic() - start)
        if left is not None and left <= 0:
            break
        remaining = budget - len(_finished(study)) - len(_in_flight(study))
        if remaining > 0 and not stalled:
            before = len(_finished(study))
            study.optimize(objective, n_trials=remaining, timeout=left, catch=(Exception,),
                           callbacks=[progress, pareto_tags], gc_after_trial=False)
            stalled = len(_finished(study)) == before
            continue
        if not _in_flight(study):
            break
        stalled = False
        # Trials of other workers still run, or a dead worker's trial awaits its heartbeat timeout:
        # wait, then let Optuna fail and re-queue the stale ones, so the budget is really finished.
        time.sleep(cfg.search.heartbeat_seconds)
        optuna_fail_stale(study)
        tracker.mark_stale_runs(study)
    finish_study(project, study, tracker, parent, log=log)
    return study


def finish_study(project: Project, study, tracker: Tracker, parent: str, *, log: Log = print) -> None:
    """Pareto tags on every trial run, front table and failure summary on the parent run."""
    from collections import Counter

    from optuna.trial import TrialState

    finished = _finished(study)
    failures = Counter(t.user_attrs.get(FAIL_ATTR, "unknown") for t in finished if t.state is TrialState.FAIL)
    for reason, n in failures.most_common():
        log(f"warning: {n} trial(s) failed: {reason[:300]}")
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise SearchError(f"no trial completed; failures: {'; '.join(failures)[:500]}")
    rows = pareto_rows(study, project.quantizable_names)
    front_runs = {t.user_attrs.get(RUN_ATTR) for t in study.best_trials}
    tracker.update_pareto(parent, front_runs - {None})
    from autoq.report.mlflow_views import log_study_views

    log_study_views(project, study, tracker, parent, rows, log=log)
    tracker.finish_parent(
        parent,
        metrics={"float_map": project.baseline.map, "trials": len(finished), "pareto_size": len(rows)},
        texts={"pareto.csv": pareto_csv(rows), "pareto.txt": format_pareto(rows) + "\n"},
    )


def get_trial(study, number: int):
    """A completed trial by number, or a clear error saying what exists."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        raise SearchError(f"study {study.study_name!r} has no trial {number} (it has {len(trials)} trials)")
    t = trials[number]
    if t.state is not TrialState.COMPLETE:
        raise SearchError(
            f"trial {number} is {t.state.name.lower()}"
            + (f" ({t.user_attrs[FAIL_ATTR]})" if FAIL_ATTR in t.user_attrs else "")
            + "; pick a completed trial (see `autoq pareto`)"
        )
    return t
