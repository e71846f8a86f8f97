"""The Optuna study: minimize (map_drop, latency_ms), resumable, shared by workers, mirrored to MLflow.

Overnight rules:
- Optuna storage is the source of truth. A trial's MLflow run is opened when the trial starts and
  its id stored on the trial at once, so a crash never leaves a completed trial unlogged or
  logged twice.
- A heartbeat marks a trial whose worker died (kill -9, lost machine) as failed once it is
  ``3 x heartbeat`` seconds old; its configuration is retried once.
- The budget is exact across workers: trial numbers are handed out atomically by the storage, and
  a trial whose number comes after ``budget`` counted trials is dropped before it runs.

Smart search (``search.sensitivity: true``, the default; see README "Search"):
- a cached sensitivity sweep (`autoq.search.sensitivity`) ranks node units; the space gives the top
  ``space.per_node_top_k`` units their own parameter and the rest one parameter per sensitivity band
  (`autoq.search.space.SpaceLayout`, stored on the study so a resumed study keeps its space);
- seeds: all-int8, all-int16, ``search.seeds`` YAMLs, knapsack candidates over the additive drop
  predictor and the cost model (`autoq.search.surrogate`), each with its exact config attached;
- pre-screen: a sampler proposal that the ridge-refit drop predictor + the cost model call dominated
  (or infeasible) is not evaluated: the trial is PRUNED with user attr ``screened`` (not counted in the
  budget) and the knapsack's next candidate is enqueued in its place;
- early stop: with ``search.max_map_drop`` set, a trial first runs on ``early_stop_images`` images and is
  PRUNED (MLflow tag ``partial=true``) when its drop there exceeds the bound by ``early_stop_margin``;
- constraints ``max_map_drop`` / ``max_latency_ms``: user attr ``constraint`` (<= 0 feasible) read by the
  sampler's ``constraints_func``; the reported front is the feasible one, or the unconstrained one with a
  warning when nothing is feasible.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoq.errors import SearchError
from autoq.pipeline import Project
from autoq.plan import Calibration, Precision, QuantConfig
from autoq.search.space import SpaceLayout, layout_params_of, suggest_layout_config
from autoq.tracking.mlflow import FAIL_ATTR, PARENT_ATTR, RUN_ATTR, Tracker

Log = Callable[[str], None]
CONFIG_ATTR = "quant_config"
SEEDED_ATTR = "autoq_seeded"
OVER_BUDGET_ATTR = "over_budget"
SCREENED_ATTR = "screened"  # a proposal the surrogate rejected without evaluating it (not counted)
SEED_CONFIG_ATTR = "seed_config"  # an enqueued trial's exact QuantConfig (dict)
CONSTRAINT_ATTR = "constraint"  # [map_drop - max, latency - max], <= 0 = feasible
PARTIAL_ATTR = "partial"  # early-stopped on the image subset
STARTED_ATTR = "autoq_started"  # the trial's number, set first thing in the objective (it got past ask())
ORPHAN_SECONDS = 120.0  # a RUNNING trial that never reached the objective after this long: its worker died
SPACE_ATTR = "autoq_space"  # the study's SpaceLayout (JSON)
SPACE_KNOBS_ATTR = "autoq_space_knobs"
SAMPLERS = ("auto", "tpe", "nsga2", "random", "gp")
#: what ``search.sampler: auto`` means (chosen by measurement, see README "Search")
AUTO_SAMPLER = "tpe"


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
            storage = RDBStorage(
                url,
                heartbeat_interval=heartbeat,
                grace_period=3 * heartbeat,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
                **kwargs,
            )
        except Exception as exc:  # unreachable server, bad credentials, missing driver
            raise SearchError(f"cannot open study storage {redact(url)}: {type(exc).__name__}: {exc}") from None
        if url.startswith("sqlite:"):
            _serialize_sqlite(storage.engine)
        return storage
    return optuna.storages.get_storage(url)


def _serialize_sqlite(engine) -> None:
    """Makes every SQLite transaction take the write lock at BEGIN (``BEGIN IMMEDIATE``).

    pysqlite only locks at the first write, so two workers can both read a queued trial as
    WAITING and both run it (optuna#4002; `tests/test_overnight.py` reproduces it). Taking
    the lock up front makes Optuna's read-check-update of a trial's state atomic.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # let the "begin" hook below issue BEGIN

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while creating the tables predate the hooks


def _constraints_func(trial) -> list[float]:
    c = trial.user_attrs.get(CONSTRAINT_ATTR)
    return [float(x) for x in c] if c else [0.0]


def make_sampler(cfg, seed: int, name: str | None = None):
    """The Optuna sampler of ``search.sampler`` (``auto`` = `AUTO_SAMPLER`), constraint-aware when
    ``max_map_drop`` / ``max_latency_ms`` are set."""
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    name = name or cfg.search.sampler
    if name == "auto":
        name = AUTO_SAMPLER
    constrained = cfg.search.max_map_drop is not None or cfg.search.max_latency_ms is not None
    cf = _constraints_func if constrained else None
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=False, constant_liar=True,
                                          constraints_func=cf, n_startup_trials=min(10, max(4, cfg.search.budget // 8)))
    if name == "nsga2":
        pop = max(8, min(50, cfg.search.budget // 5))
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=pop, constraints_func=cf)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, constraints_func=cf, n_startup_trials=min(10, max(4, cfg.search.budget // 8)))
    raise SearchError(f"search.sampler {name!r} is not one of {', '.join(SAMPLERS)}")


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
    sampler = make_sampler(cfg, seed + worker)
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
    return [t for t in trials if not t.user_attrs.get(OVER_BUDGET_ATTR) and not t.user_attrs.get(SCREENED_ATTR)
            and t.number not in retried]


def _finished(study) -> list:
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [t for t in counted_trials(study) if t.state in done]


def _in_flight(study) -> list:
    """Counted trials that are running (here or on another worker); queued ones are not in flight."""
    from optuna.trial import TrialState

    return [t for t in counted_trials(study) if t.state is TrialState.RUNNING]


def optuna_fail_stale(study) -> None:
    """Fails (and re-queues once) trials whose heartbeat stopped; a no-op without heartbeats.

    Also trials whose worker died inside ``study.ask()`` (the sampler runs there, before Optuna's
    heartbeat thread starts): RUNNING without a heartbeat, Optuna never calls them stale, and the
    exact-budget wait would wait for them forever. A trial that never reached the objective
    (no `STARTED_ATTR`) ``ORPHAN_SECONDS`` after it started is failed and re-queued the same way.
    """
    import copy
    from datetime import datetime

    import optuna
    from optuna.trial import TrialState

    optuna.storages.fail_stale_trials(study)
    storage = study._storage
    interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
    if not interval:
        return
    callback = storage.get_heartbeat_stale_trial_callback()
    now = datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        age = (now - t.datetime_start).total_seconds() if t.datetime_start else 0.0
        if t.user_attrs.get(STARTED_ATTR) == t.number or age < max(6 * interval, ORPHAN_SECONDS):
            continue
        try:
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        if callback is not None:
            callback(study, copy.deepcopy(storage.get_trial(t._trial_id)))


def trial_config(trial) -> QuantConfig:
    """The QuantConfig a trial evaluated."""
    data = trial.user_attrs.get(CONFIG_ATTR)
    if data is None:
        raise SearchError(f"trial {trial.number} has no recorded configuration (state {trial.state.name})")
    return QuantConfig.from_dict(data)


def _limits(project: Project | None) -> tuple[float | None, float | None]:
    s = getattr(getattr(project, "config", None), "search", None)
    if s is None:  # no project (or a stand-in without a config): the stored constraint attrs decide
        return None, None
    return (None if s.max_map_drop is None else s.max_map_drop / 100.0), s.max_latency_ms


def is_feasible(t, limits: tuple[float | None, float | None] = (None, None)) -> bool:
    """Within ``limits`` (max drop on the 0..1 scale, max latency) or, without limits, the stored constraint."""
    drop_max, lat_max = limits
    if drop_max is None and lat_max is None:
        return all(c <= 0 for c in t.user_attrs.get(CONSTRAINT_ATTR) or ())
    return (drop_max is None or t.values[0] <= drop_max + 1e-12) and (lat_max is None or t.values[1] <= lat_max + 1e-12)


def _pareto(trials: list) -> list:
    out = []
    for t in trials:
        d, l = t.values
        if not any((u.values[0] <= d and u.values[1] <= l) and (u.values[0] < d or u.values[1] < l) for u in trials):
            out.append(t)
    return out


def front_trials(study, project: Project | None = None) -> list:
    """The reported front: non-dominated completed trials among the feasible ones (``search.max_map_drop`` /
    ``max_latency_ms`` of ``project``, else the stored ``constraint`` attrs); when none is feasible, the
    unconstrained front (see `front_is_feasible`)."""
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values and len(t.values) == 2]
    feasible = [t for t in complete if is_feasible(t, _limits(project))]
    return _pareto(feasible or complete)


def front_is_feasible(study, project: Project | None = None) -> bool:
    return all(is_feasible(t, _limits(project)) for t in front_trials(study, project))


def pareto_rows(study, node_names: tuple[str, ...], project: Project | None = None) -> list[ParetoRow]:
    """The front (`front_trials`), sorted by latency."""
    rows = []
    for t in front_trials(study, project):
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

        if trial.user_attrs.get(OVER_BUDGET_ATTR) or trial.user_attrs.get(SCREENED_ATTR):
            return
        done = len(_finished(study))
        ran = max(done - self.done_before, 1)
        elapsed = time.perf_counter() - self.start
        left = max(self.budget - done, 0) * elapsed / ran
        if self.timeout is not None:
            left = min(left, max(self.timeout - elapsed, 0.0))
        if trial.state is TrialState.COMPLETE:
            now = f"drop {100 * trial.values[0]:.2f} pt, {trial.values[1]:.3f} ms"
        elif trial.state is TrialState.PRUNED:
            now = (f"stopped early: drop {100 * trial.user_attrs.get('map_drop', float('nan')):.2f} pt on "
                   f"{trial.user_attrs.get('images', '?')} images")
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

    def __init__(self, tracker: Tracker, parent: str, log: Log, project: Project | None = None) -> None:
        self.tracker, self.parent, self.log, self.warned = tracker, parent, log, False
        self.project = project

    def __call__(self, study, trial) -> None:
        from optuna.trial import TrialState

        if trial.state is not TrialState.COMPLETE:
            return  # only a completed trial can change the front
        try:
            front = {t.user_attrs.get(RUN_ATTR) for t in front_trials(study, self.project)}
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


@dataclass
class SearchContext:
    """What prepare_study decides for the trials of this process: the space, the drop model, knapsack items."""

    layout: SpaceLayout
    sensitivity: Any = None  # autoq.search.sensitivity.Sensitivity | None
    model: Any = None  # autoq.search.surrogate.DropModel | None
    items: list = field(default_factory=list)
    calibration: Calibration | None = None
    screened: int = 0
    consecutive_screened: int = 0


def _seed_calibration(project: Project) -> Calibration:
    from autoq.search.sensitivity import default_calibration

    return default_calibration(project)


def load_seed_configs(project: Project) -> list[tuple[str, QuantConfig]]:
    """``search.seeds``: QuantConfig YAML files -> configs; an unknown node or bad precision names node and file."""
    import yaml

    names = set(project.quantizable_names)
    allowed = {p.value for p in project.allowed_precisions()}
    out = []
    for path in project.config.search.seeds:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a mapping")
            config = QuantConfig.from_dict(data)
        except Exception as exc:
            raise SearchError(f"search.seeds: {path}: not a QuantConfig YAML (as logged in MLflow): {exc}") from None
        for node, p in [("(default)", config.default), *config.nodes.items()]:
            if node != "(default)" and node not in names:
                sample = ", ".join(sorted(names)[:3])
                raise SearchError(f"search.seeds: {path}: node {node!r} is not a quantizable node of "
                                  f"{project.config.model.path.name} (nodes are named like {sample}, ...)")
            if p.value not in allowed:
                raise SearchError(f"search.seeds: {path}: precision {p.value} for node {node!r} is not allowed "
                                  f"(target {project.target.name}, space.precisions: {sorted(allowed)})")
        out.append((path.name, config))
    return out


def _layout_for(project: Project, study, sens, log: Log) -> SpaceLayout:
    """The study's SpaceLayout: stored on the study; a new study stores the one the config asks for."""
    import json

    cfg = project.config
    names = project.quantizable_names
    knobs = json.dumps({"per_node_top_k": cfg.space.per_node_top_k if sens is not None else 0,
                        "bands": cfg.space.bands if sens is not None else 0})
    stored = study.user_attrs.get(SPACE_ATTR)
    if stored is not None:
        stored_knobs = study.user_attrs.get(SPACE_KNOBS_ATTR)
        if stored_knobs not in (knobs, "legacy"):
            raise SearchError(
                f"study {cfg.search.study_name!r} was created with a different search space ({stored_knobs}; "
                f"the config now asks for {knobs}): set a new search.study_name (or --study-name NEW) to search "
                "the new space, or restore the old values to continue this study"
            )
        return SpaceLayout.from_json(stored)
    if study.get_trials(deepcopy=False):
        # a study created before grouped spaces: it keeps its per-node parameters
        layout = SpaceLayout.per_node(names)
        log(f"search: study {cfg.search.study_name!r} was created with one parameter per node; it keeps that space "
            "(use a new search.study_name for the sensitivity-grouped space)")
        study.set_user_attr(SPACE_KNOBS_ATTR, "legacy")
    elif sens is None or cfg.space.per_node_top_k == 0:
        layout = SpaceLayout.per_node(names)
        study.set_user_attr(SPACE_KNOBS_ATTR, knobs)
    else:
        ranked = [(u.unit, u.nodes) for u in sens.ranked()]
        layout = SpaceLayout.grouped(ranked, cfg.space.per_node_top_k, cfg.space.bands)
        study.set_user_attr(SPACE_KNOBS_ATTR, knobs)
    study.set_user_attr(SPACE_ATTR, layout.to_json())
    return layout


def _calibration_choices(project: Project) -> dict[str, list]:
    from autoq.search.space import GRANULARITY, METHOD

    s = project.config.space
    return {GRANULARITY: list(s.granularities), METHOD: list(s.methods)}


def _knapsack_bounds(project: Project, model, n: int) -> list[float]:
    """Predicted-drop bounds of the knapsack seeds: fractions of max_map_drop, else of the predicted all-int8 drop."""
    import numpy as np

    if n <= 0:
        return []
    s = project.config.search
    if s.max_map_drop is not None:
        top = s.max_map_drop / 100.0
        return [float(x) for x in np.linspace(top / n, top, n)]
    int8 = sum(max(v, 0.0) for (_, p), v in model.coef.items() if p == "int8")
    return [float(x) * int8 for x in np.geomspace(0.05, 0.6, n)]


def knapsack_configs(project: Project, ctx: SearchContext, bounds: list[float]) -> list[tuple[float, float, QuantConfig]]:
    """[(bound, predicted drop, config)] for each bound that has a solution (duplicates dropped)."""
    from autoq.search.surrogate import knapsack

    out, seen = [], set()
    for b in bounds:
        sol = knapsack(ctx.items, b)
        if sol is None:
            continue
        choice, pred, _ = sol
        nodes = ctx.layout.config_nodes(choice)
        c = QuantConfig(default=Precision.INT8, calibration=ctx.calibration, nodes=nodes)
        if c in seen:
            continue
        seen.add(c)
        out.append((b, pred, c))
    return out


def search_context(project: Project, study=None, *, log: Log = print) -> SearchContext:
    """The SearchContext of ``project`` (built by prepare_study; kept on the project)."""
    ctx = project.__dict__.get("_search_ctx")
    if ctx is None:
        if study is None:
            raise SearchError("prepare_study first")
        ctx = _build_context(project, study, log)
        project.__dict__["_search_ctx"] = ctx
    return ctx


def _build_context(project: Project, study, log: Log) -> SearchContext:
    cfg = project.config
    sens = None
    if cfg.search.sensitivity:
        from autoq.search.sensitivity import remember, run_sensitivity

        sens = run_sensitivity(project, log=log)
        remember(project, sens)
    layout = _layout_for(project, study, sens, log)
    ctx = SearchContext(layout=layout, sensitivity=sens, calibration=_seed_calibration(project))
    if sens is not None:
        from autoq.search.surrogate import DropModel, knapsack_items

        precisions = project.allowed_precisions()
        ctx.model = DropModel.from_sensitivity(layout, sens, precisions, calibration_choices=_calibration_choices(project))
        ctx.items, _ = knapsack_items(ctx.model, project.model.nodes, project.target, precisions, ctx.calibration)
    return ctx


def prepare_study(project: Project, *, seed: int | None = None, worker: int = 0, log: Log = print):
    """Everything before the first trial: baseline, statistics, sensitivity, study, parent run, seed trials."""
    cfg = project.config
    cfg.ensure_work_dir()
    names = project.quantizable_names
    precisions = project.allowed_precisions()
    base = project.baseline
    _ = project.stats  # calibration statistics once, before any trial
    user_seeds = load_seed_configs(project)  # fail early on a bad seed file
    study = open_study(project, seed=seed, worker=worker)
    ctx = search_context(project, study, log=log)
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
            "sampler": cfg.search.sampler,
            "space": f"{ctx.layout.kind}: {len(ctx.layout.params)} precision parameters",
        },
    )
    if study.user_attrs.get(PARENT_ATTR) != parent:
        study.set_user_attr(PARENT_ATTR, parent)
        study.set_user_attr("float_map", base.map)
    if not study.user_attrs.get(SEEDED_ATTR):
        study.set_user_attr(SEEDED_ATTR, True)
        # Per-channel weights when allowed: per-tensor int8 weights alone can ruin a detector
        # (depthwise convs), which would hide what the activation precision does.
        calibration = ctx.calibration
        # Seeds run the original model, at its own resolution when that is among the choices.
        resolutions, variants = project.resolution_choices(), project.variant_choices()
        resolution = None
        if resolutions:
            from autoq.model.resolution import format_resolution, parse_resolution

            own = format_resolution(project.input_size)
            resolution = parse_resolution(own if own in resolutions else resolutions[0])
        seeds: list[tuple[str, QuantConfig]] = []
        for p in (Precision.INT8, Precision.INT16):
            if p in precisions:
                seeds.append((f"all-{p.value}", QuantConfig.uniform(p, calibration=calibration, resolution=resolution, variant="")))
        seeds += [(f"user:{name}", c) for name, c in user_seeds]
        if ctx.model is not None:
            import dataclasses

            bounds = _knapsack_bounds(project, ctx.model, cfg.search.knapsack_seeds)
            for b, pred, c in knapsack_configs(project, ctx, bounds):
                seeds.append((f"knapsack<={100 * b:.2f}pt (predicted {100 * pred:.2f})", dataclasses.replace(c, resolution=resolution)))
        for label, c in seeds:
            params = layout_params_of(c, ctx.layout, resolutions=resolutions, variants=variants)
            study.enqueue_trial(params, user_attrs={"seed": label, SEED_CONFIG_ATTR: c.to_dict()})
        log(f"search: space {ctx.layout.kind} with {len(ctx.layout.params)} precision parameters; "
            f"{len(seeds)} seed trials enqueued ({', '.join(label for label, _ in seeds)})")
    return study, tracker, parent


def _early_stop_images(project: Project) -> int:
    s = project.config.search
    n = len(project.eval_set.metas)
    if s.max_map_drop is None or s.early_stop_images == 0:
        return 0
    k = s.early_stop_images if s.early_stop_images > 0 else (max(16, n // 4) if n >= 32 else 0)
    return k if 0 < k < n else 0


def _constraint(project: Project, drop: float, latency: float) -> list[float] | None:
    s = project.config.search
    out = []
    if s.max_map_drop is not None:
        out.append(float(drop - s.max_map_drop / 100.0))
    if s.max_latency_ms is not None:
        out.append(float(latency - s.max_latency_ms))
    return out or None


SCREEN_MIN_TRIALS = 6  # completed trials before the surrogate may reject a proposal
SCREEN_MAX_CONSECUTIVE = 4  # after this many rejections in a row the next proposal is evaluated anyway


def _screen(project: Project, study, ctx: SearchContext, trial, config: QuantConfig, budget: int) -> str | None:
    """Why a sampler proposal is not worth evaluating (None = evaluate it). Refits the drop model first."""
    from optuna.trial import TrialState

    if ctx.model is None or not project.config.search.screen:
        return None
    if ctx.consecutive_screened >= SCREEN_MAX_CONSECUTIVE or ctx.screened >= budget:
        return None
    if config.resolution not in (None, tuple(project.input_size)) or config.variant:
        return None
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
            if not t.user_attrs.get(SCREENED_ATTR) and "map_drop" in t.user_attrs]
    complete = [t for t in done if t.state is TrialState.COMPLETE]
    if len(complete) < SCREEN_MIN_TRIALS:
        return None
    rows = [(ctx.model.params_of(trial_config(t)), float(t.user_attrs["map_drop"])) for t in done]
    ctx.model.refit(rows)
    pred = ctx.model.predict(config)
    margin = max(2 * ctx.model.rmse, 0.005)
    s = project.config.search
    estimate_mode = (project.config.target.mode or project.target.mode) != "measured"
    lat = project.latency(config).total_ms if estimate_mode else None
    trial.set_user_attr("predicted_drop", pred)
    if lat is not None and s.max_latency_ms is not None and lat > s.max_latency_ms:
        return f"latency {lat:.3f} ms > max_latency_ms"
    if s.max_map_drop is not None and pred - margin > s.max_map_drop / 100.0:
        return f"predicted drop {100 * pred:.2f} pt > max_map_drop + margin"
    if lat is not None:
        for t in complete:
            if t.values[1] <= lat and t.values[0] <= pred - margin:
                return f"dominated by trial {t.number} (predicted drop {100 * pred:.2f} pt, {lat:.3f} ms)"
    return None


def _enqueue_next_candidate(project: Project, study, ctx: SearchContext) -> None:
    """The knapsack's next untried candidate under the refit drop model (bounds across the observed drops)."""
    import numpy as np
    from optuna.trial import TrialState

    from autoq.search.surrogate import knapsack_items

    ctx.items, _ = knapsack_items(ctx.model, project.model.nodes, project.target, project.allowed_precisions(),
                                  ctx.calibration)
    tried = set()
    for t in study.get_trials(deepcopy=False):
        if CONFIG_ATTR in t.user_attrs:
            tried.add(trial_config(t))
        elif SEED_CONFIG_ATTR in t.user_attrs and t.state is TrialState.WAITING:
            tried.add(QuantConfig.from_dict(t.user_attrs[SEED_CONFIG_ATTR]))
    s = project.config.search
    top = s.max_map_drop / 100.0 if s.max_map_drop is not None else max(
        [t.values[0] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))] + [0.01])
    rng = np.random.default_rng(len(tried))
    bounds = sorted(rng.uniform(0.02, 1.0, 8) * top)
    resolutions, variants = project.resolution_choices(), project.variant_choices()
    for b, pred, c in knapsack_configs(project, ctx, bounds):
        if c in tried:
            continue
        params = layout_params_of(c, ctx.layout, resolutions=resolutions, variants=variants)
        params = {k: v for k, v in params.items() if k not in ("resolution", "variant")}
        study.enqueue_trial(params, user_attrs={"seed": f"knapsack<={100 * b:.2f}pt (after screen)", SEED_CONFIG_ATTR: c.to_dict()})
        return


def _objective(project: Project, study, tracker: Tracker, parent: str, budget: int):
    from optuna import TrialPruned

    cfg = project.config
    precisions = project.allowed_precisions()
    ctx = search_context(project, study)
    early = _early_stop_images(project)

    def objective(trial) -> tuple[float, float]:
        trial.set_user_attr(STARTED_ATTR, trial.number)  # a retried copy inherits the attrs: keep the number
        earlier = [t for t in counted_trials(study) if t.number < trial.number]
        if len(earlier) >= budget:  # another worker filled the budget first
            trial.set_user_attr(OVER_BUDGET_ATTR, True)
            study.stop()
            raise TrialPruned("over budget")
        frozen = study.get_trials(deepcopy=False)[trial.number]
        stale = frozen.system_attrs.get("failed_trial")  # set by RetryHeartbeatStaleTrialCallback
        if stale is not None and trial.user_attrs.get(RUN_ATTR):
            tracker.close_stale(trial.user_attrs[RUN_ATTR], f"worker stopped during trial {stale}; retried as trial {trial.number}",
                                retried=True)
        config = suggest_layout_config(trial, ctx.layout, precisions, cfg.space.granularities, cfg.space.methods,
                                       cfg.space.percentiles, resolutions=project.resolution_choices(),
                                       variants=project.variant_choices())
        seeded = SEED_CONFIG_ATTR in trial.user_attrs
        if seeded:  # an enqueued seed: its exact config (the params are its projection onto the space)
            config = QuantConfig.from_dict(trial.user_attrs[SEED_CONFIG_ATTR])
        elif stale is None:
            why = _screen(project, study, ctx, trial, config, budget)
            if why is not None:
                ctx.screened += 1
                ctx.consecutive_screened += 1
                trial.set_user_attr(SCREENED_ATTR, why)
                trial.set_user_attr(CONFIG_ATTR, config.to_dict())
                c = _constraint(project, trial.user_attrs.get("predicted_drop", 1.0), project.latency(config).total_ms)
                if c is not None:
                    trial.set_user_attr(CONSTRAINT_ATTR, c)
                _enqueue_next_candidate(project, study, ctx)
                raise TrialPruned(f"screened: {why}")
        ctx.consecutive_screened = 0
        trial.set_user_attr(CONFIG_ATTR, config.to_dict())
        counts = config.counts(project.quantizable_names)
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
        original = config.resolution in (None, tuple(project.input_size)) and not config.variant
        try:
            if early and original:
                part = project.evaluate(config, images=early)
                if part.map_drop > cfg.search.max_map_drop / 100.0 + cfg.search.early_stop_margin / 100.0:
                    for k, v in part.metrics().items():
                        trial.set_user_attr(k, v)
                    trial.set_user_attr(PARTIAL_ATTR, True)
                    c = _constraint(project, part.map_drop, part.latency_ms)
                    if c is not None:
                        trial.set_user_attr(CONSTRAINT_ATTR, c)
                    tracker.finish_trial(run_id, config=config, result=part)
                    raise TrialPruned(f"drop {100 * part.map_drop:.2f} pt on {part.images} images")
            result = project.evaluate(config)
        except TrialPruned:
            raise
        except Exception as exc:  # isolate the trial: record why, keep the study going
            reason = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr(FAIL_ATTR, reason[:2000])
            trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
            tracker.finish_trial(run_id, config=config, result=None, failure=reason)
            raise
        for k, v in result.metrics().items():
            trial.set_user_attr(k, v)
        trial.set_user_attr("seconds", dict(result.seconds))
        c = _constraint(project, result.map_drop, result.latency_ms)
        if c is not None:
            trial.set_user_attr(CONSTRAINT_ATTR, c)
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
    pareto_tags = _ParetoTags(tracker, parent, log, project)
    start = time.monotonic()
    stalled = False  # the last optimize() finished nothing (other workers took the budget)
    while True:
        left = None if timeout is None else timeout - (time.monotonic() - start)
        if left is not None and left <= 0:
            break
        remaining = budget - len(_finished(study)) - len(_in_flight(study))
        if remaining > 0 and not stalled:
            before = len(_finished(study))
            screened_before = _screened_count(study)
            study.optimize(objective, n_trials=remaining, timeout=left, catch=(Exception,),
                           callbacks=[progress, pareto_tags], gc_after_trial=False)
            stalled = len(_finished(study)) == before and _screened_count(study) == screened_before
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


def _screened_count(study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get(SCREENED_ATTR))


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
    rows = pareto_rows(study, project.quantizable_names, project)
    front = front_trials(study, project)
    if not front_is_feasible(study, project):
        s = project.config.search
        drop_max, lat_max = _limits(project)
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

        def violation(t) -> float:
            v = 0.0
            if drop_max is not None:
                v += max(t.values[0] - drop_max, 0.0) / max(drop_max, 1e-9)
            if lat_max is not None:
                v += max(t.values[1] - lat_max, 0.0) / lat_max
            return v

        best = min(complete, key=violation)
        log(f"warning: no trial meets max_map_drop={s.max_map_drop} pt / max_latency_ms={s.max_latency_ms}; the front "
            f"below is unconstrained. Closest: trial {best.number} (drop {100 * best.values[0]:.2f} pt, "
            f"{best.values[1]:.3f} ms); export it with `autoq export --trial {best.number}`")
    screened = _screened_count(study)
    pruned = sum(1 for t in finished if t.state is TrialState.PRUNED and t.user_attrs.get(PARTIAL_ATTR))
    if screened or pruned:
        log(f"search: {pruned} trial(s) stopped early on the image subset, {screened} proposal(s) screened out by the surrogate")
    front_runs = {t.user_attrs.get(RUN_ATTR) for t in front}
    tracker.update_pareto(parent, front_runs - {None})
    from autoq.report.mlflow_views import log_study_views

    log_study_views(project, study, tracker, parent, rows, log=log)
    tracker.finish_parent(
        parent,
        metrics={"float_map": project.baseline.map, "trials": len(finished), "pareto_size": len(rows),
                 "screened": screened, "early_stopped": pruned},
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
