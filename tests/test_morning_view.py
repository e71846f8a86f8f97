"""The morning view: Pareto front in MLflow (tags, metrics, parent artifacts, UI), `autoq report`, `autoq diagnose`."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_project import make_tiny_project  # noqa: E402

from autoq.app.search import run_search  # noqa: E402
from autoq.cli import main  # noqa: E402
from autoq.config import load_config  # noqa: E402
from autoq.pipeline import Project  # noqa: E402
from autoq.results.store import make_tracker


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A tiny project with a finished 6-trial study (shared by the tests of this module)."""
    root = tmp_path_factory.mktemp("morning")
    cfg = make_tiny_project(root, extra="space: {precisions: [int8, int16, float]}\n")
    project = Project(load_config(cfg))
    study = run_search(project, budget=6, log=lambda _m: None)
    return root, cfg, project, study


def _client(root: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    return client, client.get_experiment_by_name("tiny").experiment_id


def test_pareto_tag_metrics_params_and_parent_artifacts(searched):
    root, _cfg, project, study = searched
    client, exp = _client(root)
    front = client.search_runs([exp], "tags.pareto = 'true'", max_results=1000)
    assert sorted(int(r.data.tags["autoq.trial"]) for r in front) == sorted(t.number for t in study.best_trials)
    trials = client.search_runs([exp], "tags.`autoq.trial` != ''", max_results=1000)
    assert len(trials) == 6
    for r in trials:
        m, p = r.data.metrics, r.data.params
        assert {"map_pt", "map50_pt", "map_drop_pt", "latency_ms", "cos/output"} <= set(m)
        assert -1.0 <= m["cos/output"] <= 1.0
        assert {"resolution", "variant", "calibration", "n_int8", "n_int16", "n_float"} <= set(p)
        assert r.data.tags["state"] == "complete"
        assert {a.path for a in client.list_artifacts(r.info.run_id)} >= {"quant_config.yaml", "per_class_ap.csv"}
    parent = study.user_attrs["mlflow_parent_run_id"]
    arts = {a.path for a in client.list_artifacts(parent)}
    assert {"pareto.csv", "pareto.png", "pareto.html", "autoq.yaml", "exports"} <= arts
    exported = {a.path for a in client.list_artifacts(parent, "exports/horizon")}
    assert exported == {f"exports/horizon/trial_{t.number}" for t in study.best_trials}
    tags = client.get_run(parent).data.tags
    assert {"autoq.model_sha256", "autoq.eval_sha256", "autoq.calib_sha256"} <= set(tags)
    page = Path(client.download_artifacts(parent, "pareto.html", str(root / "dl"))).read_text()
    assert "<svg" in page and "src=\"http" not in page and "trial " in page
    png = Path(client.download_artifacts(parent, "pareto.png", str(root / "dl"))).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert client.get_experiment(exp).tags.get("mlflow.experimentKind") == "custom_model_development"


def test_update_pareto_writes_only_changed_runs(searched):
    root, _cfg, project, study = searched
    tracker = make_tracker(project)
    parent = study.user_attrs["mlflow_parent_run_id"]
    front = {t.user_attrs["mlflow_run_id"] for t in study.best_trials}
    other = next(t.user_attrs["mlflow_run_id"] for t in study.trials if t.user_attrs["mlflow_run_id"] not in front)
    assert tracker.update_pareto(parent, front) == 0  # already current
    assert tracker.update_pareto(parent, {other}) == len(front) + 1
    client, exp = _client(root)
    assert [r.info.run_id for r in client.search_runs([exp], "tags.pareto = 'true'")] == [other]
    assert tracker.update_pareto(parent, front) == len(front) + 1


def test_cosine_reference_bounded_and_exact():
    from autoq.objectives.similarity import CosineReference
    from autoq.plan import cosine_metric_name as metric_name

    rng = np.random.default_rng(0)
    batches = [[rng.standard_normal((1, 10, 4)).astype(np.float32)] for _ in range(5)]
    ref = CosineReference.from_outputs(["out:0"], batches, budget_bytes=3 * 160)
    assert ref.images == 3 and ref.total_images == 5
    assert ref.cosines(batches)["out:0"] == pytest.approx(1.0)
    assert ref.cosines([[-b[0]] for b in batches])["out:0"] == pytest.approx(-1.0)
    assert metric_name("out:0") == "cos/out_0"
    # batch by batch (batches of 2, 3, 1 images; two outputs, one of them all zeros) = the stacked formula
    from autoq.objectives.similarity import per_image_cosine, stack_images

    f = [[rng.standard_normal((b, 6, 5)).astype(np.float32), np.zeros((b, 3), np.float32)] for b in (2, 3, 1)]
    q = [[a + 0.3 * rng.standard_normal(a.shape).astype(np.float32), z] for a, z in f]
    ref = CosineReference.from_outputs(["a", "z"], f, keep=5)
    want = [float(per_image_cosine(r, o).mean()) for r, o in zip(stack_images(f, 5), stack_images(q, 5))]
    assert list(ref.cosines(q).values()) == want and 0.5 < want[0] < 0.99 and want[1] == 1.0
    assert np.isnan(ref.cosines([[a[:, :5], z] for a, z in q])["a"])  # another shape: nan, not an error


def test_nv12_roundtrip_is_close_and_keeps_shape():
    from autoq.report.diagnose import nv12_roundtrip

    rng = np.random.default_rng(0)
    smooth = np.clip(rng.normal(120, 3, (33, 47, 3)), 0, 255).astype(np.uint8)  # odd size on purpose
    for color in ("bgr", "rgb"):
        back = nv12_roundtrip(smooth, color)
        assert back.shape == smooth.shape and back.dtype == np.uint8
        assert np.abs(back.astype(int) - smooth.astype(int)).mean() < 4


def test_report_and_diagnose_commands(searched, capsys):
    root, cfg, _project, study = searched
    out = root / "out"
    assert main(["report", "-c", str(cfg), "-o", str(out / "report.html")]) == 0
    page = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    for section in ("Pareto front", "Per-unit precision: what the toolchain builds", "Per-class AP vs float", "Latency breakdown by segment"):
        assert section in page and section in md
    assert "data:image/png;base64," in page and (out / "report.pareto.png").is_file()
    assert "conv1" in page
    best = min(study.best_trials, key=lambda t: (t.values[0], t.values[1], t.number)).number
    assert f"Trial {best}" in page
    assert main(["report", "-c", str(cfg), "--trial", "1", "-o", str(out / "r1.html")]) == 0
    assert "Trial 1" in (out / "r1.html").read_text()

    assert main(["diagnose", "-c", str(cfg), "--images", "4", "--sens-images", "2", "-o", str(out / "diag.html")]) == 0
    page = (out / "diag.html").read_text()
    md = (out / "diag.md").read_text()
    for section in ("Summary", "NV12 input", "Float vs fake-quant vs integer kernels", "Output similarity",
                    "Sensitive node groups", "Calibration vs evaluation statistics", "Calibration matrix"):
        assert section in page and section in md, section
    for word in ("chebyshev", "per_tensor mse", "per_channel percentile", "top 1 groups in int16", "first 2 groups"):
        assert word in page, word
    err = capsys.readouterr().err
    assert "[diagnose 1/" in err and "ETA" in err


def test_bad_trial_is_a_one_line_error(searched, capsys):
    _root, cfg, _project, _study = searched
    assert main(["report", "-c", str(cfg), "--trial", "99", "-o", "/tmp/never.html"]) == 2
    assert "no trial 99" in capsys.readouterr().err


@pytest.mark.slow
def test_mlflow_ui_screenshot_shows_the_runs(searched, tmp_path):
    from autoq.report.ui_shot import (
        chromium_binary,
        chromium_screenshot,
        serve_mlflow_ui,
    )

    if chromium_binary() is None:
        pytest.skip("chromium not installed (Debian: apt-get install -y chromium chromium-driver; see .ci/run)")
    root, _cfg, _project, _study = searched
    _client_, exp = _client(root)
    shot = tmp_path / "ui.png"
    with serve_mlflow_ui(f"sqlite:///{root / 'mlflow.db'}", log_file=tmp_path / "ui.log") as base:
        chromium_screenshot(f"{base}/#/experiments/{exp}/runs", shot, budget_ms=10000, timeout=90)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a blank page is a few KB
