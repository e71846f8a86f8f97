"""Opening the stores a study lives in: the Optuna storage (SQLite serialized, credentials never
printed) and the MLflow tracker."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from autoq.errors import SearchError
from autoq.tracking.mlflow import Tracker

__all__ = ["load_study", "make_tracker", "open_storage", "race_safe", "redact"]

T = TypeVar("T")


_USERINFO = re.compile(r"(\b[A-Za-z][\w+.-]*://[^:/@\s]*):[^@\s]*@")  # scheme://user:password@ (password may hold /)
_QUERY_SECRET = re.compile(r"([?&](?:password|passwd|pwd|secret|token)=)[^&\s'\"]*", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` (a storage URL, or a config file holding URLs) with every password masked: the
    ``user:password@`` part of any URL and ``?password=`` query values (never print or log credentials)."""
    return _QUERY_SECRET.sub(r"\1***", _USERINFO.sub(r"\1:***@", text))


def open_storage(url: str, heartbeat: int):
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


def load_study(project: Any, *, sampler: Any = None, create: bool = False):
    """The project's study in its Optuna storage (``create``: made when missing, with both objectives
    minimized); ``sampler`` only matters to a process that runs trials."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = project.config
    url = cfg.storage_url()
    if create and url.startswith("sqlite:///"):  # reading (pareto, export) works in a read-only project
        cfg.ensure_work_dir()
    elif url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        raise SearchError(f"no study {cfg.search.study_name!r}: {url[len('sqlite:///'):]} does not exist; "
                          "run `autoq search` first")
    name = cfg.search.study_name
    if not create:
        storage = race_safe(cfg, lambda: open_storage(url, cfg.search.heartbeat_seconds))
        try:
            return optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        except KeyError:
            raise SearchError(f"no study {name!r} in {redact(url)}; run `autoq search` first") from None

    def create_study():
        storage = open_storage(url, cfg.search.heartbeat_seconds)
        try:
            return optuna.create_study(
                study_name=name, storage=storage, sampler=sampler, directions=["minimize", "minimize"], load_if_exists=True
            )
        except Exception as exc:  # e.g. read-only database file
            raise SearchError(f"cannot write study {name!r} to {redact(url)}: {exc}") from None

    return race_safe(cfg, create_study)


def make_tracker(project: Any) -> Tracker:
    """The MLflow tracker of the project's ``tracking`` settings."""
    cfg = project.config

    def tracker() -> Tracker:
        try:
            return Tracker(uri=cfg.tracking_uri(), experiment=cfg.experiment_name(), artifact_root=cfg.root / "mlartifacts")
        except Exception as exc:
            raise SearchError(f"cannot open MLflow tracking {redact(cfg.tracking_uri())}: {exc}") from None

    return race_safe(cfg, tracker)


# What Optuna's and MLflow's schema creation raise when another process creates the same tables at once.
_CREATION_RACE = re.compile(r"duplicate column|already exists|alembic_version|UNIQUE constraint failed|"
                            r"duplicate key value|database is locked", re.IGNORECASE)


def race_safe(cfg: Any, make: Callable[[], T], *, attempts: int = 5) -> T:
    """``make()`` (open or create a store) under the project's lock file, retried when it lost a schema
    creation race: two first runs started at once must both start (local processes are serialized
    by the lock; workers on other machines sharing a server store by the retry)."""
    for attempt in range(attempts):
        try:
            with _project_lock(cfg.work_dir / "stores.lock"):
                return make()
        except SearchError as exc:
            if attempt + 1 == attempts or not _CREATION_RACE.search(str(exc)):
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _project_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` among processes (POSIX ``flock``); none where it cannot be had
    (read-only project, no fcntl): then only the retry protects the first creation."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
