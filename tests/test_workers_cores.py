"""`autoq search --workers K` gives each worker its own cores (autoq.runtime.cores) and a session with as
many intra-op threads as it has cores."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_project import make_tiny_project  # noqa: E402

from autoq import cli  # noqa: E402
from autoq.config import load_config  # noqa: E402
from autoq.pipeline import Project  # noqa: E402
from autoq.runtime.cores import affinity, format_cores, parse_cores, pinned, split_cores  # noqa: E402
from autoq.runtime.session import SessionSettings, usable_cores  # noqa: E402
from autoq.runtime.tune import candidates  # noqa: E402
from autoq.search.study import open_study  # noqa: E402
from autoq.trial_record import SESSION_ATTR  # noqa: E402

linux_affinity = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux-only")


def test_split_cores_disjoint_contiguous_groups():
    assert split_cores(2, [0, 1]) == [(0,), (1,)]
    assert split_cores(2, [3, 1, 0, 2]) == [(0, 1), (2, 3)]
    assert split_cores(2, [0, 1, 2]) == [(0, 1), (2,)]  # the first group takes the extra core
    assert split_cores(1, [0, 1]) == [(0, 1)]
    assert split_cores(3, [0, 1]) is None  # fewer cores than workers: they share, as before
    assert split_cores(2, []) is None


def test_parse_and_format_cores():
    assert parse_cores("0") == (0,)
    assert parse_cores("2-3,0") == (0, 2, 3)
    assert parse_cores(format_cores((1, 4))) == (1, 4)
    for bad in ("", "a", "1-", "-1", "1,,2"):
        with pytest.raises(ValueError):
            parse_cores(bad)


def test_bad_cores_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(["worker", "--cores", "x"])
    assert exc.value.code == 2
    assert "--cores" in capsys.readouterr().err


@linux_affinity
def test_pinned_restores_affinity_and_tune_measures_only_the_pinned_cores():
    before = affinity()
    with pinned(before[:1]) as ok:
        assert ok and affinity() == before[:1] and usable_cores() == 1
        assert {c.intra_op_threads for c in candidates(False, 8)} == {1}  # no 2-thread session on one core
    assert affinity() == before


@linux_affinity
def test_recorded_settings_with_more_threads_than_cores_are_capped(tmp_path):
    project = Project(load_config(make_tiny_project(tmp_path)), log=lambda _m: None)
    cores = affinity()
    with pinned(cores[:1]):
        project.pin_session_settings(SessionSettings(intra_op_threads=2, graph_optimization="basic"))
        assert project.session_settings == SessionSettings(intra_op_threads=1, graph_optimization="basic")


@linux_affinity
def test_worker_pins_itself_before_running(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(cli, "run_search", lambda project, **kw: seen.setdefault("cores", affinity()))
    before = affinity()
    try:
        assert cli.main(["worker", "-c", str(make_tiny_project(tmp_path)), "--budget", "1", "--cores",
                         str(before[-1])]) == 0
    finally:
        os.sched_setaffinity(0, before)
    assert seen["cores"] == (before[-1],)


@linux_affinity
@pytest.mark.skipif(len(affinity() or ()) < 2, reason="needs 2 cores")
def test_two_workers_get_a_core_each_and_a_matching_session(tmp_path, capfd):
    cfg = make_tiny_project(tmp_path)
    cores = affinity()
    assert cli.main(["search", "-c", str(cfg), "--budget", "2", "--workers", "2"]) == 0
    err = capfd.readouterr().err
    groups = split_cores(2, cores)
    assert f"starting 2 workers on cores {format_cores(groups[0])} | {format_cores(groups[1])}" in err
    assert affinity() == cores  # the search process itself is unpinned again
    study = open_study(Project(load_config(cfg)), create=False)
    recorded = SessionSettings(**study.user_attrs[SESSION_ATTR])
    assert 1 <= recorded.intra_op_threads <= len(groups[0])  # measured on one worker's cores
    assert sum(1 for t in study.trials if t.state.name == "COMPLETE") == 2


@linux_affinity
def test_pinning_reaches_threads_started_before_it():
    import threading

    before = affinity()
    ready, stop, seen = threading.Event(), threading.Event(), {}

    def idle():
        seen["tid"] = threading.get_native_id()
        ready.set()
        stop.wait(5)

    th = threading.Thread(target=idle)
    th.start()
    ready.wait(5)
    try:
        with pinned(before[:1]):
            assert tuple(sorted(os.sched_getaffinity(seen["tid"]))) == before[:1]  # e.g. a BLAS pool thread
        assert tuple(sorted(os.sched_getaffinity(seen["tid"]))) == before
    finally:
        stop.set()
        th.join()
