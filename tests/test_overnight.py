"""Overnight-proofing: failures isolated, resume after kill -9, exact budget across workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_project import make_tiny_project  # noqa: E402

from autoq.app.search import run_search  # noqa: E402
from autoq.cli import main  # noqa: E402
from autoq.config import load_config  # noqa: E402
from autoq.pipeline import Project  # noqa: E402
from autoq.results.store import redact
from autoq.results.trials import counted_trials
from autoq.search.study import open_study


def _child_runs(root: Path, experiment: str = "tiny"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.`autoq.trial` != ''", max_results=1000)


def test_failing_trials_are_isolated_and_reported_once(tmp_path, monkeypatch):
    from optuna.trial import TrialState

    cfg = make_tiny_project(tmp_path)
    project = Project(load_config(cfg))
    real = Project.evaluate

    def flaky(self, config):
        if config.calibration.granularity == "per_tensor":
            raise RuntimeError("simulated compiler crash")
        return real(self, config)

    monkeypatch.setattr(Project, "evaluate", flaky)
    lines: list[str] = []
    study = run_search(project, budget=6, log=lines.append)
    failed = [t for t in study.trials if t.state is TrialState.FAIL]
    assert failed and all("simulated compiler crash" in t.user_attrs["fail_reason"] for t in failed)
    assert len([t for t in study.trials if t.state is TrialState.COMPLETE]) + len(failed) == 6
    # the full reason is printed once; later identical failures point at the first one
    assert sum("FAILED: RuntimeError: simulated compiler crash" in line for line in lines) == 1
    runs = {r.data.tags["autoq.trial"]: r for r in _child_runs(tmp_path)}
    for t in failed:
        run = runs[str(t.number)]
        assert run.info.status == "FAILED" and "simulated" in run.data.tags["failure_reason"]


def test_kill_9_then_rerun_continues_without_duplicates(tmp_path):
    from optuna.trial import TrialState

    cfg = make_tiny_project(tmp_path, n_eval=150)  # trials of a second or more: the kill lands mid-trial
    cmd = [sys.executable, "-m", "autoq", "search", "-c", str(cfg), "--budget", "8"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    project = Project(load_config(cfg))
    deadline, study, caught = time.time() + 180, None, False
    while time.time() < deadline and proc.poll() is None and not caught:
        time.sleep(0.2)
        if study is None:
            try:
                study = open_study(project, create=False)
            except Exception:
                continue
        trials = study.get_trials(deepcopy=False)
        # mid-trial: a RUNNING trial that has sampled its configuration (killed before that, its retry samples anew)
        caught = (sum(t.state is TrialState.COMPLETE for t in trials) >= 3
                  and any(t.state is TrialState.RUNNING and t.params for t in trials))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert caught, "the search finished before a trial could be killed mid-run"
    time.sleep(3.5)  # > 3 x heartbeat: the RUNNING trial is now stale
    assert subprocess.run(cmd, capture_output=True).returncode == 0

    study = open_study(project, create=False)
    counted = counted_trials(study)
    assert len(counted) == 8 and all(t.state is TrialState.COMPLETE for t in counted)
    stale = [t for t in study.trials if t.state is TrialState.FAIL]
    assert len(stale) == 1  # the killed trial ...
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == stale[0].number]
    assert len(retried) == 1 and retried[0].params == stale[0].params  # ... was retried once
    runs = _child_runs(tmp_path)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert sorted(int(r.data.tags["autoq.trial"]) for r in finished) == sorted(t.number for t in counted)
    assert all(r.info.status != "RUNNING" for r in runs)


def test_two_workers_fill_the_budget_exactly(tmp_path):
    from optuna.trial import TrialState

    cfg = make_tiny_project(tmp_path)
    assert main(["search", "-c", str(cfg), "--budget", "7", "--workers", "2"]) == 0
    study = open_study(Project(load_config(cfg)), create=False)
    counted = counted_trials(study)
    assert len(counted) == 7 and all(t.state is TrialState.COMPLETE for t in counted)
    assert len(_child_runs(tmp_path)) == 7


_POP_ALL = """
import sys, optuna
from autoq.results.store import open_storage
study = optuna.load_study(study_name="q", storage=open_storage(sys.argv[1], 60))
got = []
while (tid := study._pop_waiting_trial_id()) is not None:
    got.append(tid)
print(" ".join(map(str, got)))
"""


def test_sqlite_queue_hands_each_waiting_trial_to_one_worker(tmp_path):
    """Without BEGIN IMMEDIATE, pysqlite lets two processes pop the same queued trial (optuna#4002)."""
    import optuna

    from autoq.results.store import open_storage

    url = f"sqlite:///{tmp_path / 'q.db'}"
    study = optuna.create_study(study_name="q", storage=open_storage(url, 60))
    for i in range(150):
        study.enqueue_trial({"x": i})
    procs = [subprocess.Popen([sys.executable, "-c", _POP_ALL, url], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    popped = [int(x) for p in procs for x in p.communicate(timeout=300)[0].split()]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(popped) == sorted(t._trial_id for t in study.get_trials())


def test_worker_dead_inside_ask_does_not_hang_the_budget(tmp_path, monkeypatch):
    """A worker killed inside study.ask() (sampling, before Optuna's heartbeat starts) leaves a RUNNING
    trial without heartbeat that Optuna never calls stale; the exact-budget wait must still end."""
    from optuna.trial import TrialState

    import autoq.search.recovery as recovery

    project = Project(load_config(make_tiny_project(tmp_path)))
    orphan = open_study(project).ask()  # RUNNING, no heartbeat, never reaches the objective
    monkeypatch.setattr(recovery, "ORPHAN_SECONDS", 0.0)  # then 6 x heartbeat_seconds (1 s here)
    study = run_search(project, budget=3, timeout=90, log=lambda _m: None)
    done = [t for t in counted_trials(study) if t.state is not TrialState.WAITING]  # queued leftovers wait for a rerun
    assert len(done) == 3 and all(t.state is TrialState.COMPLETE for t in done)
    assert study.trials[orphan.number].state is TrialState.FAIL


def test_same_seed_same_first_trials(tmp_path):
    def configs(d: Path) -> list:
        study = run_search(Project(load_config(make_tiny_project(d))), budget=10, log=lambda _m: None)
        return [t.params for t in sorted(study.trials, key=lambda t: t.number)[:10]]

    assert configs(tmp_path / "a") == configs(tmp_path / "b")


def test_credentials_never_printed():
    assert redact("postgresql://autoq:s3cret@db:5432/studies") == "postgresql://autoq:***@db:5432/studies"
    assert redact("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoq", *args], capture_output=True, text=True)


def _assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and len([x for x in lines if x.startswith("autoq: error")]) == 1
    for w in words:
        assert w in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "breakage, words",
    [
        (lambda d: (d / "model.onnx").write_bytes(b"not an onnx file"), ["model.onnx"]),
        (lambda d: (d / "ann.json").write_text("{broken"), ["ann.json"]),
        (lambda d: [p.unlink() for p in (d / "calib").iterdir()], ["calib"]),
        (lambda d: [p.write_bytes(b"garbage") for p in (d / "eval").iterdir()], ["eval"]),
        (lambda d: (d / "autoq.yaml").write_text((d / "autoq.yaml").read_text() + "target: {name: nosuch-npu}\n"),
         ["nosuch-npu", "generic-npu"]),
        (lambda d: (d / "autoq.yaml").write_text(
            (d / "autoq.yaml").read_text().replace("num_classes: 2", "num_classes: 80")), ["num_classes"]),
    ],
    ids=["corrupt-onnx", "bad-annotations", "no-calibration-images", "undecodable-images", "unknown-target",
         "adapter-output-mismatch"],
)
def test_bad_input_is_one_line_exit_2(tmp_path, breakage, words):
    cfg = make_tiny_project(tmp_path)
    breakage(tmp_path)
    _assert_one_line_error(_run_cli("search", "-c", str(cfg), "--budget", "1"), *words)


def test_read_only_project_dir_is_a_clear_error(tmp_path):
    if os.geteuid() == 0:
        # root ignores permissions; use a path that cannot be created instead
        cfg = make_tiny_project(tmp_path)
        (tmp_path / ".autoq").write_text("a file where the work folder should be")
    else:
        cfg = make_tiny_project(tmp_path)
        tmp_path.chmod(0o555)
    _assert_one_line_error(_run_cli("search", "-c", str(cfg), "--budget", "1"), ".autoq")


def test_retried_trial_closes_the_run_its_dead_worker_had_finished(tmp_path):
    """A worker killed between logging a finished trial and the study recording it: the retry replaces
    the trial, so its FINISHED run is closed as KILLED (FINISHED runs stay one to one with counted trials)."""
    from autoq.plan import QuantConfig
    from autoq.tracking.mlflow import Tracker

    tracker = Tracker(uri=f"sqlite:///{tmp_path / 'm.db'}", experiment="e", artifact_root=tmp_path / "art")
    parent = tracker.parent_run("s", None, {})
    runs = []
    for n in range(2):
        run = tracker.start_trial(parent_id=parent, number=n, params={})
        tracker.finish_trial(run, config=QuantConfig.uniform("int8"), result=None)
        runs.append(run)
    tracker.close_stale(runs[0], "worker stopped during trial 0")  # not retried: a finished run stays
    tracker.close_stale(runs[1], "worker stopped during trial 1; retried as trial 5", retried=True)
    got = [tracker.client.get_run(r) for r in runs]
    assert [r.info.status for r in got] == ["FINISHED", "KILLED"]
    assert got[1].data.tags["failure_reason"].endswith("retried as trial 5")
