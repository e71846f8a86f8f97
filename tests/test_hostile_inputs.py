"""Issue 18: never silently wrong. Bad data stops the run, caches follow content, Ctrl-C costs nothing,
secrets stay out. One section per finding; each test failed before its fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).parent))
from tiny_project import make_tiny_project, tiny_detector  # noqa: E402

from autoq import cli  # noqa: E402
from autoq.app.search import run_search  # noqa: E402
from autoq.config import load_config  # noqa: E402
from autoq.errors import DataError, ModelError, SearchError  # noqa: E402
from autoq.pipeline import Project  # noqa: E402
from autoq.plan import QuantConfig  # noqa: E402
from autoq.results.store import load_study, redact  # noqa: E402
from autoq.results.trials import counted_trials, finished_trials  # noqa: E402
from autoq.search.seeds import load_seed_configs  # noqa: E402
from autoq.trial_record import CONFIG_ATTR, INTERRUPTED_ATTR, SESSION_ATTR  # noqa: E402


def _strict(cfg: Path) -> Path:
    """The tiny project with the meaningless-baseline stop on (the fixture turns it off)."""
    cfg.write_text(cfg.read_text().replace("objective: {min_baseline: 0}\n", ""))
    return cfg


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoq", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def _one_line(proc: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert proc.returncode == code, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for w in words:
        assert w in proc.stderr, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    """A tiny project with a finished 2-trial study (shared by the read-side tests)."""
    root = tmp_path_factory.mktemp("searched")
    cfg = make_tiny_project(root, extra="# old storage: postgresql://autoq:hunter2@db.example:5432/studies\n")
    run_search(Project(load_config(cfg)), budget=2, log=lambda _m: None)
    return cfg


# --- 1. a meaningless float baseline stops the run before any trial ---------------------------------


def test_annotations_matching_no_image_stop_the_run(tmp_path):
    cfg = _strict(make_tiny_project(tmp_path))
    ann = json.loads((tmp_path / "ann.json").read_text())
    for a in ann["annotations"]:
        a["image_id"] += 100
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    with pytest.raises(DataError, match="image_id"):
        Project(load_config(cfg)).baseline
    # the CLI: one line, exit 2, no study created trials
    _one_line(_cli("search", "-c", str(cfg), "--budget", "1"), 2, "autoq: error:", "ann.json", "image_id")


def test_speck_images_stop_the_run(tmp_path):
    cfg = _strict(make_tiny_project(tmp_path))
    for f in (tmp_path / "eval").iterdir():
        cv2.imwrite(str(f), np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(DataError, match="smaller than"):
        Project(load_config(cfg)).baseline


def test_nan_model_stops_the_run(tmp_path):
    cfg = _strict(make_tiny_project(tmp_path))
    model = onnx.load(str(tmp_path / "model.onnx"))
    b2 = next(t for t in model.graph.initializer if t.name == "b2")
    b2.CopyFrom(numpy_helper.from_array(np.full(7, np.nan, np.float32), "b2"))
    onnx.save(model, str(tmp_path / "model.onnx"))
    with pytest.raises(ModelError, match="NaN"):
        Project(load_config(cfg)).baseline


def test_no_detections_and_zero_map_stop_the_run(tmp_path):
    cfg = _strict(make_tiny_project(tmp_path))
    text = cfg.read_text()
    cfg.write_text(text.replace("strides: [8]", "strides: [8], score_threshold: 0.99999"))
    with pytest.raises(DataError, match="detects nothing"):
        Project(load_config(cfg)).baseline
    cfg.write_text(text)  # detections exist but none matches a box: mAP 0
    with pytest.raises(DataError, match="min_baseline"):
        Project(load_config(cfg)).baseline


# --- 2. the float baseline cache follows content; broken caches are recomputed with a note -------------


def _baseline_runs(cfg: Path) -> list[str]:
    lines: list[str] = []
    Project(load_config(cfg), log=lines.append).baseline
    return [x for x in lines if x.startswith(("float baseline", "note:"))]


def test_baseline_cache_follows_annotation_and_image_content(tmp_path):
    cfg = make_tiny_project(tmp_path)
    assert _baseline_runs(cfg) and not _baseline_runs(cfg)  # computed, then cached
    ann = json.loads((tmp_path / "ann.json").read_text())
    ann["annotations"][0]["bbox"] = [1, 1, 30, 30]  # edited in place: same path, same image names
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    assert _baseline_runs(cfg)
    cv2.imwrite(str(tmp_path / "eval" / "0001.png"), np.full((48, 64, 3), 7, np.uint8))  # replaced, same name
    assert _baseline_runs(cfg)
    assert not _baseline_runs(cfg)


def test_truncated_caches_are_recomputed_with_a_note(tmp_path, searched):
    from autoq.search.sensitivity import run_sensitivity

    cfg = make_tiny_project(tmp_path)
    _baseline_runs(cfg)
    cache = tmp_path / ".autoq" / "cache"
    for f in cache.glob("baseline-*.json"):
        f.write_text(f.read_text()[:10])
    runs = _baseline_runs(cfg)
    assert any("unreadable" in x for x in runs) and any(x.startswith("float baseline") for x in runs)

    run_sensitivity(Project(load_config(cfg)), images=2, log=lambda _m: None)
    for f in cache.glob("sensitivity-*.json"):
        f.write_text("{")
    lines: list[str] = []
    run_sensitivity(Project(load_config(cfg)), images=2, log=lines.append)
    assert any("sensitivity cache" in x and "unreadable" in x for x in lines)

    # the read-side commands on a truncated cache: no JSONDecodeError traceback
    for f in (searched.parent / ".autoq" / "cache").glob("baseline-*.json"):
        f.write_text('{"map": 0.')
    proc = _cli("search", "-c", str(searched), "--budget", "2")  # resumes the finished study: reads the baseline
    _one_line(proc, 0, "unreadable")
    assert "JSONDecodeError" not in proc.stderr


# --- 3. symbolic H/W + model.input_size: the same latency as the static model -------------------------


def test_dynamic_hw_model_latency_equals_static(tmp_path):
    static_cfg = make_tiny_project(tmp_path / "static")
    dyn_cfg = make_tiny_project(tmp_path / "dynamic", extra="")
    model = onnx.load(str(tiny_detector(tmp_path / "dynamic" / "model.onnx")))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].Clear()
    dims[2].dim_param = "height"
    dims[3].Clear()
    dims[3].dim_param = "width"
    onnx.save(model, str(tmp_path / "dynamic" / "model.onnx"))
    dyn_cfg.write_text(dyn_cfg.read_text().replace("  adapter: yolox\n", "  adapter: yolox\n  input_size: [64, 64]\n"))
    config = QuantConfig.uniform("int8")
    static = Project(load_config(static_cfg))
    dynamic = Project(load_config(dyn_cfg))
    assert dynamic.model.input_shape[2:] == ("height", "width")
    assert dynamic.latency(config).total_ms == pytest.approx(static.latency(config).total_ms, rel=1e-9)
    assert [n.macs for n in dynamic.model.nodes] == [n.macs for n in static.model.nodes]


# --- 4. Ctrl-C: the running trial is abandoned (not counted, queued again), exit 130 in one line -------


def test_ctrl_c_costs_no_budget_slot(tmp_path, monkeypatch, capsys):
    from optuna.trial import TrialState

    cfg = make_tiny_project(tmp_path)
    real = Project.evaluate
    calls = []

    def interrupted_second(self, config, **kw):
        calls.append(config)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, config, **kw)

    monkeypatch.setattr(Project, "evaluate", interrupted_second)
    code = cli.main(["search", "-c", str(cfg), "--budget", "3"])
    err = capsys.readouterr().err
    assert code == 130 and "Traceback" not in err and "autoq: interrupted" in err
    study = load_study(Project(load_config(cfg)))
    stopped = [t for t in study.trials if t.user_attrs.get(INTERRUPTED_ATTR)]
    assert len(stopped) == 1 and stopped[0] not in counted_trials(study)
    assert [t.state for t in finished_trials(study)] == [TrialState.COMPLETE]
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert any(t.user_attrs.get("seed_config") == stopped[0].user_attrs[CONFIG_ATTR] for t in waiting)

    monkeypatch.setattr(Project, "evaluate", real)
    study = run_search(Project(load_config(cfg)), budget=3, log=lambda _m: None)
    counted = finished_trials(study)
    assert len(counted) == 3 and all(t.state is TrialState.COMPLETE for t in counted)
    assert stopped[0].user_attrs[CONFIG_ATTR] in [t.user_attrs[CONFIG_ATTR] for t in counted]  # retried


# --- 5. two first runs at once: both open the stores -----------------------------------------------


_OPEN_STORES = """
import sys
from autoq.config import load_config
from autoq.pipeline import Project
from autoq.results.store import load_study, make_tracker
p = Project(load_config(sys.argv[1]))
load_study(p, create=True)
make_tracker(p).parent_run("tiny", None, {})
print("ok")
"""


def test_concurrent_first_runs_create_the_stores_once(tmp_path):
    for k in range(2):
        cfg = make_tiny_project(tmp_path / str(k))
        procs = [subprocess.Popen([sys.executable, "-c", _OPEN_STORES, str(cfg)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(3)]
        results = [(p.wait(), *p.communicate()) for p in procs]
        assert all(code == 0 and out.strip() == "ok" for code, out, _ in results), [e[-800:] for _, _, e in results]


# --- 6. one line instead of a traceback --------------------------------------------------------------


def test_export_to_unwritable_place_is_one_line(searched, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    _one_line(_cli("export", "-c", str(searched), "--trial", "0", "-o", str(blocker / "sub")), 2,
              "autoq: error:", "a_file")
    _one_line(_cli("export", "-c", str(searched), "--trial", "0", "-f", "rknn", "-o", str(blocker / "sub")), 2,
              "autoq: error:", "a_file")


def test_seed_with_unknown_calibration_method_fails_at_load(tmp_path):
    (tmp_path / "seed.yaml").write_text(
        "default: int8\nnodes: {}\ncalibration: {granularity: per_tensor, method: minmaxx}\n")
    cfg = make_tiny_project(tmp_path, extra="")
    cfg.write_text(cfg.read_text().replace("heartbeat_seconds: 1}", "heartbeat_seconds: 1, seeds: [seed.yaml]}"))
    with pytest.raises(SearchError, match="minmaxx"):
        load_seed_configs(Project(load_config(cfg)))


# --- 7. credentials stay out of logs, artifacts and `ps` ---------------------------------------------


@pytest.mark.parametrize("url, hidden", [
    ("postgresql://autoq:s3cret@db:5432/studies", "s3cret"),
    ("postgresql://autoq:p%2Fss@db/studies", "p%2Fss"),
    ("postgresql://autoq:pa/ss@db/studies", "pa/ss"),
    ("postgresql://autoq@db/studies?password=s3cret&sslmode=require", "s3cret"),
    ("postgresql+psycopg2://autoq:s3cret@db:5432/studies", "s3cret"),
    ("mysql+pymysql://autoq:s3cret@db/studies", "s3cret"),
])
def test_redact_hides_every_password_form(url, hidden):
    out = redact(url)
    assert hidden not in out and "***" in out and out.split("://")[0] == url.split("://")[0]
    assert "db" in out and "studies" in out


def test_redact_leaves_sqlite_paths():
    for url in ("sqlite:////tmp/x.db", "sqlite:///rel/a:b.db", "sqlite:///C:/work/study.db"):
        assert redact(url) == url


def test_config_artifact_is_redacted(searched):
    from mlflow.tracking import MlflowClient

    project = Project(load_config(searched))
    client = MlflowClient(tracking_uri=project.config.tracking_uri())
    parent = load_study(project).user_attrs["mlflow_parent_run_id"]
    text = Path(client.download_artifacts(parent, "autoq.yaml", str(searched.parent / "dl"))).read_text()
    assert "hunter2" not in text and "postgresql://autoq:***@db.example" in text


def test_workers_get_the_storage_url_by_environment(tmp_path, monkeypatch):
    secret = "postgresql://autoq:s3cret@db/studies"
    seen = []

    class FakePopen:
        def __init__(self, cmd, env=None, **_kw):
            seen.append((cmd, env))

        def wait(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    monkeypatch.setattr(cli, "prepare_study", lambda *a, **k: type("P", (), {"study": None})())
    monkeypatch.setattr(cli, "finish_study", lambda *a, **k: None)
    cfg = make_tiny_project(tmp_path)
    args = cli.build_parser().parse_args(["search", "-c", str(cfg), "--workers", "2", "--storage", secret])
    cli._run_workers(cli._project(args), args)
    assert len(seen) == 2 and all(secret not in " ".join(cmd) for cmd, _ in seen)
    assert all(env[cli.STORAGE_ENV] == secret for _, env in seen)
    # the worker side reads it back
    got = []
    monkeypatch.setattr(cli, "run_search", lambda project, **kw: got.append(project.config.search.storage))
    monkeypatch.setenv(cli.STORAGE_ENV, secret)
    cli.main(["worker", "-c", str(cfg), "--worker-index", "1"])
    assert got == [secret]


# --- 8. one study, one set of session settings --------------------------------------------------------


def test_session_settings_are_recorded_with_the_study_and_reused(tmp_path):
    from autoq.runtime.session import SessionSettings
    from autoq.search.loop import prepare_study

    cfg = make_tiny_project(tmp_path)
    first = Project(load_config(cfg))
    prepared = prepare_study(first, log=lambda _m: None)
    recorded = prepared.study.user_attrs[SESSION_ATTR]
    assert SessionSettings(**recorded) == first.session_settings
    # a later run (or worker) whose own measurement would differ uses the study's settings
    other = {**recorded, "intra_op_threads": 2 if recorded["intra_op_threads"] == 1 else 1}
    prepared.study.set_user_attr(SESSION_ATTR, other)
    again = Project(load_config(cfg))
    prepare_study(again, log=lambda _m: None)
    assert again.session_settings == SessionSettings(**other)


# --- 9. autoq's own warning line; read-only projects can be read --------------------------------------


def test_undecodable_image_is_one_warning_line(tmp_path):
    cfg = make_tiny_project(tmp_path)
    (tmp_path / "eval" / "0002.png").write_bytes(b"not a png")
    proc = _cli("sensitivity", "-c", str(cfg), "--images", "2", "-o", str(tmp_path / "s.csv"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "autoq: warning: skipped 1 undecodable image(s)" in proc.stderr
    assert "UserWarning" not in proc.stderr and "warnings.warn" not in proc.stderr


def test_pareto_and_export_run_on_a_read_only_project(searched, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root ignores permissions: a read-only bind mount of the project
        if subprocess.run(["mount", "--bind", str(searched.parent), str(ro)], capture_output=True).returncode:
            pytest.skip("cannot bind-mount here")
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        cfg = ro / searched.name
    else:
        cfg, ro = searched, None
        for p in [searched.parent, *searched.parent.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
    try:
        proc = _cli("pareto", "-c", str(cfg))
        _one_line(proc, 0)
        assert "Pareto front" in proc.stdout
        proc = _cli("export", "-c", str(cfg), "--trial", "0", "-o", str(tmp_path / "bundle"))
        _one_line(proc, 0)
        assert list((tmp_path / "bundle").glob("*_qdq.onnx"))
    finally:
        if ro is not None:
            subprocess.run(["umount", str(ro)], check=False)
        else:
            for p in [searched.parent, *searched.parent.rglob("*")]:
                p.chmod(p.stat().st_mode | 0o200)
