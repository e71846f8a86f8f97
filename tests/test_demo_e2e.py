"""End to end: `autoq demo --budget 4` -> 4 trial runs in MLflow -> export -> parse back."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoq.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--budget", "4", "--dir", str(d)]) == 0
    return d


def test_four_trials_in_mlflow_with_objectives(demo_dir):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{demo_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("autoq-demo")
    runs = client.search_runs([exp.experiment_id], "tags.`autoq.trial` != ''")
    assert len(runs) == 4
    for run in runs:
        assert "map_drop_pt" in run.data.metrics and "latency_ms" in run.data.metrics
        assert run.data.tags["autoq.study_run"] and run.data.tags["autoq.study"] == "demo"
    front = client.search_runs([exp.experiment_id], "tags.pareto = 'true'")
    assert 1 <= len(front) <= 4
    # all-int8 (trial 0) must be faster than all-int16 (trial 1) on the generic NPU
    by_trial = {int(r.data.tags["autoq.trial"]): r.data.metrics for r in runs}
    assert by_trial[0]["latency_ms"] < by_trial[1]["latency_ms"]


def test_rerun_continues_the_same_study(demo_dir):
    assert main(["demo", "--budget", "5", "--dir", str(demo_dir)]) == 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{demo_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("autoq-demo")
    runs = client.search_runs([exp.experiment_id], "tags.`autoq.trial` != ''")
    assert sorted(int(r.data.tags["autoq.trial"]) for r in runs) == [0, 1, 2, 3, 4]
    parents = client.search_runs([exp.experiment_id], "tags.`autoq.kind` = 'study'")
    assert len(parents) == 1


def test_export_parses_back_to_the_same_precisions(demo_dir, tmp_path):
    from autoq.config import load_config
    from autoq.export.horizon import read_horizon
    from autoq.pipeline import Project
    from autoq.plan import Precision
    from autoq.results.trials import get_trial
    from autoq.search.study import open_study
    from autoq.trial_record import trial_config

    out = tmp_path / "trial2.yaml"
    assert main(["export", "-c", str(demo_dir / "autoq.yaml"), "--trial", "2", "--format", "horizon", "-o", str(out)]) == 0
    project = Project(load_config(demo_dir / "autoq.yaml"))
    config = trial_config(get_trial(open_study(project, create=False), 2))
    precisions, calibration = read_horizon(out)
    expected = {n: p for n, p in config.assignment(project.quantizable_names).items() if p.value != "int8"}
    assert {n: Precision(p) for n, p in precisions.items()} == expected
    assert calibration["granularity"] == config.calibration.granularity
