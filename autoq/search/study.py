"""The Optuna study: minimize (map_drop, latency_ms), resumable, mirrored to MLflow."""

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
from autoq.tracking.mlflow import PARENT_ATTR, RUN_ATTR, Tracker

Log = Callable[[str], None]
CONFIG_ATTR = "quant_config"
FAIL_ATTR = "fail_reason"
SEEDED_ATTR = "autoq_seeded"


@dataclass(frozen=True)
class ParetoRow:
    trial: int
    map: float
    map_drop: float
    latency_ms: float
    int8: int
    int16: int
    float: int


def open_study(project: Project, *, seed: int | None = None, create: bool = True):
    """Opens (or creates) the project's study in its Optuna storage."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = project.config
    url = cfg.storage_url()
    if url.startswith("sqlite:///"):
        cfg.work_dir.mkdir(parents=True, exist_ok=True)
    seed = cfg.search.seed if seed is None else seed
    sampler = optuna.samplers.TPESampler(seed=seed)
    name = cfg.search.study_name
    if not create:
        try:
            return optuna.load_study(study_name=name, storage=url, sampler=sampler)
        except KeyError:
            raise SearchError(f"no study {name!r} in {cfg.work_dir}; run `autoq search` first") from None
    return optuna.create_study(
        study_name=name,
        storage=url,
        sampler=sampler,
        directions=["minimize", "minimize"],
        load_if_exists=True,
    )


def _finished(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))


def trial_config(trial) -> QuantConfig:
    """The QuantConfig a finished trial evaluated."""
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
    """One line per finished trial: count, ETA, the best drop and the fastest trial so far."""

    def __init__(self, log: Log, budget: int, done_before: int, timeout: float | None) -> None:
        self.log, self.budget, self.done_before, self.timeout = log, budget, done_before, timeout
        self.start = time.perf_counter()

    def __call__(self, study, trial) -> None:
        from optuna.trial import TrialState

        done = len(_finished(study))
        ran = max(done - self.done_before, 1)
        elapsed = time.perf_counter() - self.start
        left = max(self.budget - done, 0) * elapsed / ran
        if self.timeout is not None:
            left = min(left, max(self.timeout - elapsed, 0.0))
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if trial.state is TrialState.COMPLETE:
            now = f"drop {100 * trial.values[0]:.2f} pt, {trial.values[1]:.3f} ms"
        else:
            now = f"{trial.state.name.lower()}: {trial.user_attrs.get(FAIL_ATTR, '')[:80]}"
        best = ""
        if complete:
            lo = min(complete, key=lambda t: (t.values[0], t.values[1]))
            fast = min(complete, key=lambda t: (t.values[1], t.values[0]))
            best = (
                f" | best drop {100 * lo.values[0]:.2f} pt @ {lo.values[1]:.3f} ms (#{lo.number})"
                f" | fastest {fast.values[1]:.3f} ms @ {100 * fast.values[0]:.2f} pt (#{fast.number})"
            )
        self.log(
            f"[{done}/{self.budget}] trial {trial.number}: {now} | {elapsed / ran:.1f} s/trial, "
            f"ETA {_fmt_seconds(left)}{best}"
        )


def _make_tracker(project: Project) -> Tracker:
    cfg = project.config
    return Tracker(uri=cfg.tracking_uri(), experiment=cfg.experiment_name(), artifact_root=cfg.root / "mlartifacts")


def run_search(
    project: Project,
    *,
    budget: int | None = None,
    timeout: float | None = None,
    seed: int | None = None,
    log: Log = print,
):
    """Runs trials until the study holds ``budget`` finished trials (or ``timeout`` seconds pass).

    Running it again with the same project continues the same study.
    """
    from optuna.trial import TrialState

    cfg = project.config
    budget = cfg.search.budget if budget is None else budget
    timeout = cfg.search.timeout if timeout is None else timeout
    if budget <= 0:
        raise SearchError("--budget must be > 0 (number of trials)")
    names = project.quantizable_names
    precisions = project.allowed_precisions()
    base = project.baseline
    _ = project.stats  # calibration statistics once, before any trial
    study = open_study(project, seed=seed)
    tracker = _make_tracker(project)
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
    study.set_user_attr(PARENT_ATTR, parent)
    study.set_user_attr("float_map", base.map)

    if not study.user_attrs.get(SEEDED_ATTR):
        # Per-channel weights when allowed: per-tensor int8 weights alone can ruin a detector
        # (depthwise convs), which would hide what the activation precision does.
        gran = "per_channel" if "per_channel" in cfg.space.granularities else cfg.space.granularities[0]
        calibration_first = dict(granularity=gran, method=cfg.space.methods[0])
        for p in (Precision.INT8, Precision.INT16):
            if p in precisions:
                seed_cfg = QuantConfig.uniform(p, calibration=Calibration(**calibration_first))
                study.enqueue_trial(params_of(seed_cfg, names), user_attrs={"seed": f"all-{p.value}"})
        study.set_user_attr(SEEDED_ATTR, True)

    def objective(trial) -> tuple[float, float]:
        config = suggest_config(trial, names, precisions, cfg.space.granularities, cfg.space.methods)
        trial.set_user_attr(CONFIG_ATTR, config.to_dict())
        counts = config.counts(names)
        params = {
            "granularity": config.calibration.granularity,
            "method": config.calibration.method,
            "n_int8": counts["int8"],
            "n_int16": counts["int16"],
            "n_float": counts["float"],
            "seed": trial.user_attrs.get("seed", "sampler"),
        }
        try:
            result = project.evaluate(config)
        except Exception as exc:  # isolate the trial: record why, keep the study going
            reason = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr(FAIL_ATTR, reason)
            trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
            run_id = tracker.log_trial(
                parent_id=parent, number=trial.number, config=config, params=params, result=None, failure=reason
            )
            trial.set_user_attr(RUN_ATTR, run_id)
            raise
        for k, v in result.metrics().items():
            trial.set_user_attr(k, v)
        trial.set_user_attr("seconds", dict(result.seconds))
        run_id = tracker.log_trial(
            parent_id=parent, number=trial.number, config=config, params=params, result=result
        )
        trial.set_user_attr(RUN_ATTR, run_id)
        return result.map_drop, result.latency_ms

    done_before = len(_finished(study))
    remaining = budget - done_before
    if remaining > 0:
        log(f"search: {remaining} trial(s) to run ({done_before} already in study {cfg.search.study_name!r})")
        study.optimize(
            objective,
            n_trials=remaining,
            timeout=timeout,
            catch=(Exception,),
            callbacks=[_Progress(log, budget, done_before, timeout)],
            gc_after_trial=False,
        )
    else:
        log(f"search: study {cfg.search.study_name!r} already has {done_before} trials (budget {budget})")

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        reasons = {t.user_attrs.get(FAIL_ATTR, "unknown") for t in _finished(study)}
        raise SearchError(f"no trial completed; failures: {'; '.join(sorted(reasons))[:500]}")
    rows = pareto_rows(study, names)
    front_runs = {t.user_attrs.get(RUN_ATTR) for t in study.best_trials}
    all_runs = [t.user_attrs[RUN_ATTR] for t in _finished(study) if RUN_ATTR in t.user_attrs]
    tracker.set_pareto(front_runs, all_runs)
    tracker.finish_parent(
        parent,
        metrics={"float_map": base.map, "trials": len(_finished(study)), "pareto_size": len(rows)},
        texts={"pareto.csv": pareto_csv(rows), "pareto.txt": format_pareto(rows) + "\n"},
    )
    return study


def summarize_trial(trial) -> dict[str, Any]:
    """Metrics and config of one trial (for export headers and `autoq pareto`)."""
    return {
        "number": trial.number,
        "map": trial.user_attrs.get("map"),
        "map_drop": trial.values[0] if trial.values else None,
        "latency_ms": trial.values[1] if trial.values else None,
        "config": trial_config(trial),
    }


def get_trial(study, number: int):
    """A finished trial by number, or a clear error listing what exists."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    if not 0 <= number < len(trials) or trials[number].number != number:
        raise SearchError(f"study {study.study_name!r} has no trial {number} (it has {len(trials)} trials)")
    t = trials[number]
    if t.state is not TrialState.COMPLETE:
        raise SearchError(
            f"trial {number} is {t.state.name.lower()}"
            + (f" ({t.user_attrs[FAIL_ATTR]})" if FAIL_ATTR in t.user_attrs else "")
            + "; pick a completed trial (see `autoq pareto`)"
        )
    return t

