"""Several workers on one PostgreSQL study: a throwaway cluster on a loopback port.

Needs the Debian `postgresql` package (installed by .ci/run) and psycopg2 (the `dev` extra);
skips with the reason when either is absent.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_project import make_tiny_project  # noqa: E402

pytestmark = pytest.mark.slow


def _pg_bin() -> Path | None:
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(d, "initdb").is_file():
            return Path(d)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """Yields a function db_url(name) creating databases on a fresh cluster."""
    pg = _pg_bin()
    if pg is None:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="psycopg not installed (pip install -e '.[dev]')")
    as_root = os.geteuid() == 0
    base = Path(tempfile.mkdtemp(prefix="autoq-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    prefix: list[str] = []
    if as_root:  # initdb refuses to run as root
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run([*prefix, str(pg / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run(
        [*prefix, str(pg / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "start",
         "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {sock}"],
        check=True, capture_output=True,
    )

    def db_url(name: str) -> str:
        subprocess.run([str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", name],
                       check=True, capture_output=True)
        return f"postgresql://postgres@127.0.0.1:{port}/{name}"

    try:
        yield db_url
    finally:
        subprocess.run([*prefix, str(pg / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def _setup(tmp_path: Path, postgres, name: str, n_eval: int = 6):
    storage, tracking = postgres(f"{name}_optuna"), postgres(f"{name}_mlflow")
    cfg = make_tiny_project(tmp_path, n_eval=n_eval)
    text = cfg.read_text().replace("tracking: {experiment: tiny}", f"tracking: {{experiment: tiny, uri: '{tracking}'}}")
    cfg.write_text(text.replace("study_name: tiny,", f"study_name: tiny, storage: '{storage}',"))
    from autoq.config import load_config
    from autoq.pipeline import Project

    return cfg, Project(load_config(cfg)), tracking


def _child_runs(tracking: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking)
    exp = client.get_experiment_by_name("tiny")
    return client.search_runs([exp.experiment_id], "tags.`autoq.trial` != ''", max_results=1000)


def test_two_workers_exact_budget_on_postgres(tmp_path, postgres):
    from optuna.trial import TrialState

    from autoq.cli import main
    from autoq.results.trials import counted_trials
    from autoq.search.study import open_study

    cfg, project, tracking = _setup(tmp_path, postgres, "exact")
    assert main(["search", "-c", str(cfg), "--budget", "8", "--workers", "2"]) == 0
    counted = counted_trials(open_study(project, create=False))
    assert len(counted) == 8 and all(t.state is TrialState.COMPLETE for t in counted)
    runs = _child_runs(tracking)
    assert len(runs) == 8 and len({r.data.tags["autoq.trial"] for r in runs}) == 8


def test_killed_worker_the_other_completes_the_budget(tmp_path, postgres):
    from optuna.trial import TrialState

    from autoq.results.trials import counted_trials
    from autoq.search.loop import prepare_study
    from autoq.search.study import open_study

    cfg, project, tracking = _setup(tmp_path, postgres, "kill", n_eval=40)
    prepare_study(project, log=lambda _m: None)
    cmd = [sys.executable, "-m", "autoq", "worker", "-c", str(cfg), "--budget", "10"]
    log_b = tmp_path / "worker2.log"
    a = subprocess.Popen([*cmd, "--worker-index", "1"], stderr=subprocess.DEVNULL, start_new_session=True)
    b = subprocess.Popen([*cmd, "--worker-index", "2"], stderr=log_b.open("w"), stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    study = open_study(project, create=False)
    while time.time() < deadline:
        time.sleep(0.3)
        if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) >= 2:
            break
    os.killpg(a.pid, signal.SIGKILL)
    a.wait()
    try:
        code = b.wait(timeout=300)
    except subprocess.TimeoutExpired:
        b.kill()
        code = "timeout"
    assert code == 0, f"surviving worker: {code}; its log ends:\n" + "\n".join(log_b.read_text().splitlines()[-30:])
    counted = counted_trials(open_study(project, create=False))
    assert len(counted) == 10
    assert all(t.state is TrialState.COMPLETE for t in counted)
    finished = [r for r in _child_runs(tracking) if r.info.status == "FINISHED"]
    assert sorted(int(r.data.tags["autoq.trial"]) for r in finished) == sorted(t.number for t in counted)
