"""Issue 19 part 3: a trial whose drop on the first images cannot reach the front at its latency is
stopped there (dominance early stop, on by default); otherwise the same session runs the rest."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_search_smart import fragile_detector  # noqa: E402
from tiny_project import make_tiny_project  # noqa: E402

from autoq.config import load_config  # noqa: E402
from autoq.pipeline import Project  # noqa: E402
from autoq.plan import QuantConfig, TrialResult  # noqa: E402
from autoq.search.dominance import (  # noqa: E402
    best_drop_at,
    completed_points,
    dominated_by,
    early_stop_images,
    stop_reason,
)


def _project(root: Path, search: str = "", n_eval: int = 40) -> Project:
    """The fragile detector (convF in int8 ruins it) in label-free mode: the float model's own
    detections are the ground truth, so drops are real and each has a bootstrap interval."""
    cfg = make_tiny_project(root, n_eval=n_eval)
    text = cfg.read_text().replace("data: {eval_images: eval, eval_annotations: ann.json,", "data: {eval_images: eval,")
    text = text.replace("search: {budget: 4, seed: 0, study_name: tiny, heartbeat_seconds: 1}",
                        "search: {heartbeat_seconds: 1, study_name: tiny, seed: 0, " + (search or "budget: 4") + "}")
    # its float scores are ~0.27-0.30: the top ones are the pseudo ground truth
    text = text.replace("objective: {min_baseline: 0}", "objective: {min_baseline: 0, options: {pseudo_gt_score: 0.275}}")
    cfg.write_text(text)
    fragile_detector(root / "model.onnx")
    return Project(load_config(cfg))


def _result(drop: float, latency: float, boot=(), images: int = 16) -> TrialResult:
    return TrialResult(map=0.5, map50=0.5, map_small=0.0, map_medium=0.0, map_large=0.0, per_class_ap={}, map_drop=drop,
                       latency_ms=latency, latency_breakdown={}, images=images, partial=True, drop_boot=tuple(boot))


def _study(points):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["minimize", "minimize"])
    for drop, lat, attrs in points:
        study.add_trial(optuna.trial.create_trial(values=[drop, lat], user_attrs=attrs))
    return study


def test_dominated_only_by_a_better_trial_at_no_more_latency():
    study = _study([(0.02, 1.0, {}), (0.001, 2.0, {}), (0.0, 0.5, {"infeasible": ["too big"]})])
    assert best_drop_at(completed_points(study), 1.5) == (0.02, 0)
    assert best_drop_at(completed_points(study), 2.0) == (0.001, 1)
    assert best_drop_at(completed_points(study), 0.9) is None  # the only faster one does not compile: it dominates nothing
    boot = np.linspace(0.03, 0.09, 200)  # optimistic end ~0.0315
    assert "trial 0" in dominated_by(completed_points(study), _result(0.06, 1.2, boot))
    assert dominated_by(completed_points(study), _result(0.06, 0.9, boot)) is None  # nothing completed at its latency or less
    wide = np.linspace(0.0, 0.09, 200)  # the interval reaches below 2 pt: it might still be on the front
    assert dominated_by(completed_points(study), _result(0.06, 1.2, wide)) is None
    assert dominated_by(completed_points(study), _result(0.06, 1.2, ())) is None  # no interval (a metric without per-image results)


def test_subset_size_is_on_by_default_and_off_with_the_knob(tmp_path):
    project = _project(tmp_path / "a")
    assert project.config.search.dominance_stop is True
    assert early_stop_images(project) == 16  # 40 images: a quarter, at least 16
    off = _project(tmp_path / "b", "budget: 4, dominance_stop: false")
    assert early_stop_images(off) == 0
    assert stop_reason(off, completed_points(_study([(0.0, 0.1, {})])), _result(0.5, 1.0, np.full(200, 0.5))) is None
    small = _project(tmp_path / "c", n_eval=12)
    assert early_stop_images(small) == 0  # too few images to split


def test_staged_evaluation_runs_each_image_once_and_equals_the_one_pass(tmp_path, monkeypatch):
    """16 images, then the other 24 in the same session: the first result is the 16-image subset's, the
    second the one-pass result, bit for bit."""
    import autoq.pipeline as pipeline

    project = _project(tmp_path)
    config = QuantConfig.uniform("int16")
    whole = project.evaluate(config)
    ran: list[int] = []
    real = pipeline.stream_model

    def counting(session, images, *a, **kw):
        ran.append(len(images))
        return real(session, images, *a, **kw)

    monkeypatch.setattr(pipeline, "stream_model", counting)
    seen: list[TrialResult] = []
    staged = project.evaluate(config, images=16, go_on=lambda part: seen.append(part) or True)
    assert ran == [16, 24]  # the subset, then only the remaining images
    assert [p.images for p in seen] == [16] and seen[0].partial and len(seen[0].drop_boot) == 200
    assert seen[0].map == project.evaluate(config, images=16).map  # the stage is the plain subset evaluation
    assert not staged.partial and staged.images == 40
    assert staged.map == whole.map and staged.map_drop == whole.map_drop and staged.drop_boot == whole.drop_boot
    ran.clear()
    stopped = project.evaluate(config, images=16, go_on=lambda part: False)
    assert ran == [16] and stopped.partial and stopped.images == 16 and stopped.map_drop == seen[0].map_drop
    # the whole set's per-image results cut to the first 16 images are the subset's own
    from autoq.objectives.bootstrap import map_samples

    assert map_samples(whole.image_stats.head(16), np.ones((1, 16)))[0] == pytest.approx(stopped.map, abs=1e-12)


def test_staged_evaluation_scores_each_image_once(tmp_path):
    """With ground truth, the second stage decodes and matches only the images after the subset (the
    subset's per-image COCO results are carried over), and the result is the one-pass result."""
    import json

    from autoq.objectives.accuracy import pseudo_ground_truth
    from autoq.objectives.metrics import MetricContext

    labelfree = _project(tmp_path)  # ground truth: the float model's confident detections, written as annotations
    es = labelfree.eval_set
    float_detections = MetricContext(es, adapter=labelfree.adapter).detect(labelfree.float_outputs)
    gt = pseudo_ground_truth(es, float_detections, score_threshold=0.275)
    names = {m.image_id: f for m, f in zip(es.metas, es.files)}
    dataset = dict(gt.coco.dataset, images=[dict(i, file_name=names[i["id"]]) for i in gt.coco.dataset["images"]])
    (tmp_path / "gt.json").write_text(json.dumps(dataset))
    cfg = tmp_path / "autoq.yaml"
    cfg.write_text(cfg.read_text().replace("data: {eval_images: eval,", "data: {eval_images: eval, eval_annotations: gt.json,"))
    project = Project(load_config(cfg))
    config = QuantConfig.uniform("int16")
    whole = project.evaluate(config)
    project.subset(16).baseline  # noqa: B018  (the subset's float baseline, computed before counting)
    adapter, detected = project.adapter, []

    def decode(outputs, metas):
        detected.extend(m.image_id for m in metas)
        return adapter(outputs, metas)

    project.__dict__["adapter"] = project.subset(16).__dict__["adapter"] = decode
    staged = project.evaluate(config, images=16, go_on=lambda part: True)
    assert sorted(detected) == sorted(m.image_id for m in project.eval_set.metas)  # each once, not the first 16 twice
    assert (staged.map, staged.map50, staged.map_small, staged.per_class_ap, staged.drop_boot) == (
        whole.map, whole.map50, whole.map_small, whole.per_class_ap, whole.drop_boot)
    assert whole.map > 0.05


def test_paired_comparison_with_the_dominating_trial(tmp_path):
    project = _project(tmp_path)
    good = project.evaluate(QuantConfig.uniform("int16"))  # the completed trial
    bad = project.evaluate(QuantConfig.uniform("int8"), images=16, go_on=lambda part: False)  # ruined (convF)
    study = _study([(good.map_drop, bad.latency_ms, {})])  # at the same latency
    why = dominated_by(completed_points(study), bad, {0: good.image_stats})
    assert why is not None and "paired" in why and "trial 0" in why
    assert dominated_by(completed_points(_study([(good.map_drop, bad.latency_ms + 1, {})])), bad, {0: good.image_stats}) is None
    # a trial no worse than the completed one is not stopped, paired or not
    same = project.evaluate(QuantConfig.uniform("int16"), images=16, go_on=lambda part: False)
    assert dominated_by(completed_points(_study([(good.map_drop, same.latency_ms, {})])), same, {0: good.image_stats}) is None


@pytest.mark.slow
def test_search_stops_a_dominated_seed_and_reports_images(tmp_path):
    import yaml
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    from autoq.app.search import run_search
    from autoq.trial_record import PARTIAL_ATTR, STOPPED_ATTR

    root = tmp_path / "p"
    project = _project(root, "budget: 3, sensitivity: false")
    # slower than all-int16 (float nodes) and ruined (convF int8): dominated by all-int16 on the subset
    bad = QuantConfig.from_dict({"default": "float", "nodes": {"convF": "int8"}})
    (root / "bad.yaml").write_text(yaml.safe_dump(bad.to_dict()))
    text = (root / "autoq.yaml").read_text().replace("budget: 3,", "budget: 3, seeds: [bad.yaml],")
    (root / "autoq.yaml").write_text(text)
    project = Project(load_config(root / "autoq.yaml"))
    lines: list[str] = []
    study = run_search(project, log=lines.append)
    trials = sorted((t for t in study.trials if "seed" in t.user_attrs), key=lambda t: t.number)
    by_seed = {t.user_attrs["seed"]: t for t in trials}
    int16, user = by_seed["all-int16"], by_seed["user:bad.yaml"]
    assert int16.state is TrialState.COMPLETE and int16.user_attrs["images"] == 40
    assert user.values is None and user.state is TrialState.PRUNED and user.user_attrs[PARTIAL_ATTR]
    assert user.user_attrs["images"] == 16 and "dominated" in user.user_attrs[STOPPED_ATTR]
    assert f"trial {int16.number} (" in user.user_attrs[STOPPED_ATTR] and "paired" in user.user_attrs[STOPPED_ATTR]
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    run = client.get_run(user.user_attrs["mlflow_run_id"])
    assert run.data.metrics["images"] == 16 and run.data.tags["state"] == "pruned"
    assert any("images evaluated per trial" in line for line in lines)
    assert any(f"trial {user.number}: stopped early: dominated" in line for line in lines)


def test_a_tie_in_rounding_is_not_dominated():
    study = _study([(-6e-8, 1.0, {})])  # e.g. every drop ~0 (a float mAP of ~0)
    assert dominated_by(completed_points(study), _result(0.0, 2.0, np.zeros(200))) is None
    assert dominated_by(completed_points(study), _result(0.0, 2.0, np.full(200, 5e-5))) is None  # 0.005 pt: a tie at the 0.01 pt shown
    assert dominated_by(completed_points(study), _result(0.0, 2.0, np.full(200, 2e-4))) is not None
