"""Issue 17, the morning view: one unit (mAP points) where people read, paired bootstrap intervals of
the drop, the front readable in MLflow (run names, descriptions, front chart), plots, optuna-dashboard
names, and the MLflow UI pages naming the front members (headless Chromium)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_project import make_tiny_project  # noqa: E402

from autoq.adapters.base import Detections  # noqa: E402
from autoq.data import Preprocess, load_eval_set  # noqa: E402
from autoq.objectives.accuracy import CocoEvaluation  # noqa: E402
from autoq.objectives.bootstrap import (  # noqa: E402
    ImageStats,
    drop_samples,
    map_samples,
    paired_interval,
    resample_weights,
)
from autoq.report.report import FEW_INSTANCES, class_instances  # noqa: E402


def _synthetic(tmp_path: Path, n: int = 24, *, duplicate: dict[int, int] | None = None, seed: int = 3):
    """A COCO set of ``n`` images with noisy detections (crowd boxes, a class without ground truth,
    empty images); ``duplicate`` {image id: copies}: the same images repeated under new ids."""
    rng = np.random.default_rng(seed)
    base_imgs, base_anns, dets = [], [], {}
    for image_id in range(1, n + 1):
        gts = []
        for _ in range(int(rng.integers(0, 6))):
            w, h = (float(v) for v in rng.choice([8, 40, 200], 2) * rng.uniform(0.7, 1.3, 2))
            x, y = float(rng.uniform(0, 600 - w)), float(rng.uniform(0, 400 - h))
            gts.append((x, y, w, h, int(rng.choice([7, 9])), int(rng.random() < 0.1)))
        boxes, labels = [], []
        for x, y, w, h, c, _crowd in gts:
            if rng.random() < 0.8:
                dx, dy = rng.normal(0, 0.1 * w), rng.normal(0, 0.1 * h)
                boxes.append([x + dx, y + dy, x + dx + w, y + dy + h])
                labels.append({7: 0, 9: 1}[c] if rng.random() < 0.9 else 2)
        for _ in range(int(rng.integers(0, 4))):
            x, y = rng.uniform(0, 500), rng.uniform(0, 300)
            boxes.append([x, y, x + rng.uniform(5, 100), y + rng.uniform(5, 100)])
            labels.append(int(rng.integers(0, 3)))
        scores = rng.uniform(0.01, 1, len(boxes)).round(4)
        base_imgs.append(image_id)
        base_anns.append(gts)
        dets[image_id] = Detections(np.asarray(boxes, np.float32).reshape(-1, 4), scores.astype(np.float32),
                                    np.asarray(labels, np.int64))
    copies = [(i, i) for i in base_imgs]
    next_id = n + 1
    for i, k in (duplicate or {}).items():
        for _ in range(k - 1):
            copies.append((next_id, i))
            next_id += 1
    folder = tmp_path / "images"
    folder.mkdir(parents=True, exist_ok=True)
    images, anns, det_by_id = [], [], {}
    for new_id, src in copies:
        cv2.imwrite(str(folder / f"{new_id}.png"), np.zeros((8, 8, 3), np.uint8))
        images.append({"id": new_id, "file_name": f"{new_id}.png", "height": 400, "width": 600})
        for x, y, w, h, c, crowd in base_anns[src - 1]:
            anns.append({"id": len(anns) + 1, "image_id": new_id, "category_id": c, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": crowd})
        det_by_id[new_id] = dets[src]
    cats = [{"id": 7, "name": "cat"}, {"id": 9, "name": "dog"}, {"id": 11, "name": "owl"}]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    es = load_eval_set(folder, ann, (8, 8), Preprocess())
    evaluation = CocoEvaluation(es)
    evaluation.add([det_by_id[m.image_id] for m in es.metas])
    return es, evaluation


def test_weighted_map_is_cocoeval_with_images_repeated(tmp_path: Path) -> None:
    """Weight 1 everywhere = COCOeval's mAP; weights (2, 0, 3, ...) = COCOeval on a set holding those
    images that many times (so a resample is a real bootstrap draw of images)."""
    es, ev = _synthetic(tmp_path / "a")
    stats = ev.image_stats()
    assert stats.n_images == 24
    assert map_samples(stats, np.ones((1, 24)))[0] == pytest.approx(ev.result().map, abs=1e-12)
    again = ImageStats.from_json(json.loads(json.dumps(stats.to_json())))
    assert map_samples(again, np.ones((1, 24)))[0] == pytest.approx(ev.result().map, abs=1e-12)
    # image ids 1..24 sort as es.metas; image 3 twice, image 5 three times, image 8 dropped
    w = np.ones(24)
    w[2], w[4], w[7] = 2, 3, 0
    _es2, ev2 = _synthetic(tmp_path / "b", duplicate={3: 2, 5: 3})
    # the duplicated set also holds image 8: compare with image 8 weight 1 instead, and a zero elsewhere
    w[7] = 1
    assert map_samples(stats, w[None])[0] == pytest.approx(ev2.result().map, abs=1e-9)


def test_paired_bootstrap_interval(tmp_path: Path) -> None:
    es, ev = _synthetic(tmp_path / "a", n=40, seed=5)
    stats = ev.image_stats()
    same = drop_samples(stats, stats)
    assert np.all(same == 0) and paired_interval(same) == (0.0, 0.0)  # paired: a model against itself
    _es, ev_b = _synthetic(tmp_path / "b", n=40, seed=5)
    w = resample_weights(40, 200, seed=0)
    assert w.shape == (200, 40) and np.all(w.sum(1) == 40) and np.array_equal(w, resample_weights(40, 200, seed=0))
    spread = map_samples(stats, w)
    lo, hi = paired_interval(spread)
    assert lo < ev.result().map < hi and hi - lo > 0.01  # 40 noisy images: mAP moves with the draw


def test_instance_counts(tmp_path: Path) -> None:
    es, _ev = _synthetic(tmp_path, n=10)
    counts = class_instances(es)
    want = {}
    for a in es.coco.dataset["annotations"]:
        if not a["iscrowd"]:
            name = {7: "cat", 9: "dog"}[a["category_id"]]
            want[name] = want.get(name, 0) + 1
    assert counts == want
    assert FEW_INSTANCES > 1


# --- a searched tiny study: units, intervals, MLflow names and descriptions, dashboard names -------


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    from autoq.app.search import run_search
    from autoq.config import load_config
    from autoq.pipeline import Project

    root = tmp_path_factory.mktemp("units")
    cfg = make_tiny_project(root, extra="space: {precisions: [int8, int16, float]}\n")
    project = Project(load_config(cfg))
    logs: list[str] = []
    study = run_search(project, budget=6, log=logs.append)
    return root, cfg, project, study, logs


def _client(root: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    return client, client.get_experiment_by_name("tiny").experiment_id


def test_points_in_mlflow_csv_and_intervals_on_every_trial(searched):
    from autoq.plan import percentile_interval
    from autoq.trial_record import BOOT_ATTR

    root, _cfg, project, study, logs = searched
    client, exp = _client(root)
    runs = {int(r.data.tags["autoq.trial"]): r for r in client.search_runs([exp], "tags.`autoq.trial` != ''")}
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) >= 4
    for t in complete:
        m = runs[t.number].data.metrics
        assert "map_drop" not in m and "map" not in m  # no fraction where people filter
        assert m["map_drop_pt"] == pytest.approx(100 * t.values[0], abs=1e-4)
        lo, hi = percentile_interval(t.user_attrs[BOOT_ATTR])
        assert m["map_drop_pt_lo"] == pytest.approx(100 * lo, abs=1e-3) and m["map_drop_pt_hi"] == pytest.approx(100 * hi, abs=1e-3)
        assert lo <= hi and len(t.user_attrs[BOOT_ATTR]) == 200
    # a filter in points matches what it says: drop under 1 pt
    under = client.search_runs([exp], "metrics.map_drop_pt < 1")
    assert {int(r.data.tags["autoq.trial"]) for r in under} == {t.number for t in complete if 100 * t.values[0] < 1}
    parent = study.user_attrs["mlflow_parent_run_id"]
    csv = Path(client.download_artifacts(parent, "pareto.csv", str(root / "dl"))).read_text().splitlines()
    assert csv[0].startswith("trial,map_pt,map_drop_pt,map_drop_pt_lo,map_drop_pt_hi,latency_ms")
    first = csv[1].split(",")
    t = study.trials[int(first[0])]
    assert float(first[2]) == pytest.approx(100 * t.values[0], abs=1e-3)
    assert client.get_run(parent).data.metrics["float_map_pt"] == pytest.approx(100 * project.baseline.map, abs=1e-3)
    assert any(" pt [" in line and "trial" in line for line in logs)  # the progress line shows the interval


def test_front_runs_named_described_and_charted(searched):
    root, _cfg, project, study, _logs = searched
    client, exp = _client(root)
    parent = study.user_attrs["mlflow_parent_run_id"]
    front = client.search_runs([exp], "tags.pareto = 'true'")
    members = {int(r.data.tags["autoq.trial"]) for r in front}
    assert members and members == {t.number for t in study.best_trials}
    for r in front:
        n = r.data.tags["autoq.trial"]
        assert r.info.run_name.startswith(f"★ trial {n} · drop ") and " ms" in r.info.run_name
        note = r.data.tags["mlflow.note.content"]
        assert f"autoq export --trial {n}" in note and "estimated latency" in note and "95% interval" in note
    others = client.search_runs([exp], "tags.pareto = 'false'")
    assert all(r.info.run_name == f"trial {r.data.tags['autoq.trial']}" for r in others)
    # the UI opens on the front: members are top-level runs, the other trials collapsed under the study run
    assert all("mlflow.parentRunId" not in r.data.tags and r.data.tags["autoq.study_run"] == parent for r in front)
    assert others and all(r.data.tags["mlflow.parentRunId"] == parent == r.data.tags["autoq.study_run"] for r in others)
    assert all(r.data.tags["autoq.study"] == "tiny" for r in front + others)
    desc = client.get_run(parent).data.tags["mlflow.note.content"]
    assert "| trial | mAP | drop pt |" in desc and all(f"`autoq export --trial {m}`" in desc for m in members)
    chart = client.search_runs([exp], "tags.`autoq.kind` = 'front'")
    assert len(chart) == 1 and chart[0].data.tags["autoq.study_run"] == parent
    assert "mlflow.parentRunId" not in chart[0].data.tags  # top level: listed when the UI opens
    history = client.get_metric_history(chart[0].info.run_id, "drop_pt_vs_step_latency_us")
    by_trial = {t.number: t for t in study.best_trials}
    assert {h.step for h in history} == {int(round(1000 * t.values[1])) for t in by_trial.values()}


def test_front_table_marks_indistinguishable_members():
    from autoq.results.front import (
        ParetoRow,
        format_pareto,
        front_markdown,
        front_run_name,
    )

    rows = [ParetoRow(3, 0.30, 0.010, 1.0, 10, 0, 0, 0.002, 0.02),
            ParetoRow(7, 0.31, 0.0099, 1.7, 8, 2, 0, 0.001, 0.019, same_as=3)]
    table = format_pareto(rows, "horizon-j5")
    assert "[0.20, 2.00]" in table and "~#3" in table and "1 of 2 front members are distinguishable" in table
    assert "est. ms (horizon-j5)" in table
    assert front_run_name(rows[1]).endswith("~#3") and "≈ faster #3" in front_markdown(rows)


def test_paired_difference_decides_distinguishable(searched):
    from autoq.results.front import _not_better

    rng = np.random.default_rng(0)
    fast = list(0.02 + 0.005 * rng.standard_normal(200))
    noise = 0.002 * rng.standard_normal(200)
    assert _not_better([x - 0.00004 + e for x, e in zip(fast, noise)], fast)  # 0.004 pt better, +-0.2 pt: noise
    assert not _not_better([x - 0.01 + e for x, e in zip(fast, noise)], fast)  # 1 pt better: real


def test_optuna_dashboard_names(searched):
    from autoq.trial_record import PARAM_LEGEND_ATTR

    _root, _cfg, project, study, _logs = searched
    assert study.metric_names[0].startswith("mAP drop") and "latency" in study.metric_names[1]
    legend = study.user_attrs[PARAM_LEGEND_ATTR]
    assert set(study.trials[-1].params) <= set(legend)


def test_cli_pareto_prints_intervals_without_preprocessing(searched, capsys, monkeypatch):
    from autoq.cli import main
    from autoq.pipeline import Project

    _root, cfg, _project, study, _logs = searched

    def boom(self):
        raise AssertionError("autoq pareto preprocessed the eval images")

    monkeypatch.setattr(Project, "eval_set", property(boom))
    assert main(["pareto", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "95% interval" in out and "autoq export" in out and "autoq report" in out and "est. ms" in out


def test_report_shows_intervals_instances_and_next_command(searched, tmp_path):
    from autoq.cli import main

    _root, cfg, _project, study, _logs = searched
    out = tmp_path / "report.html"
    assert main(["report", "-c", str(cfg), "-o", str(out)]) == 0
    md = out.with_suffix(".md").read_text()
    assert "95% interval (pt)" in md and "instances" in md and "not measurements" in md
    assert "autoq export --trial" in md.rsplit("## Next", 1)[1]
    parts = md.split("| part | value |")[1].split("\n\n")[0]
    counts = [line for line in parts.splitlines() if "nodes" in line]
    assert counts and all(not line.rstrip(" |").endswith(".0000") for line in counts)  # counts print as integers


def test_plot_zooms_on_the_front_and_labels_every_member():
    from autoq.report.plots import (
        TrialPoint,
        axis_titles,
        pareto_png,
        pareto_svg,
        view_window,
    )

    pts = [TrialPoint(i, 0.3, 0.01 - 0.001 * i, 1.0 + 0.1 * i, True, 0.005 - 0.001 * i, 0.015 - 0.001 * i)
           for i in range(6)]
    pts += [TrialPoint(10, 0.0, 0.30, 1.2, False), TrialPoint(11, 0.3, 0.0, 40.0, False)]  # broken, CPU-float
    x0, x1, y0, y1 = view_window(pts)
    assert x1 < 5 and y1 < 5  # the outliers do not stretch the axes (points)
    assert axis_titles("horizon-j5")[0] == "estimated latency, horizon-j5 cost model (ms)"
    svg = pareto_svg(pts, target="horizon-j5")
    assert all(f">#{i}<" in svg for i in range(6)) and "horizon-j5 cost model" in svg
    png = pareto_png(pts, target="horizon-j5")
    assert png[:4] == b"\x89PNG"


# --- the MLflow UI itself (headless Chromium) ------------------------------------------------------


def test_mlflow_ui_pages_load_and_name_the_front_members(searched):
    import subprocess
    import tempfile

    from autoq.report.ui_shot import CHROME_FLAGS, chromium_binary, serve_mlflow_ui
    from autoq.trial_record import FRONT_VIEW_ATTR

    binary = chromium_binary()
    if binary is None:
        pytest.skip("no chromium")
    root, _cfg, _project, study, _logs = searched
    client, exp = _client(root)
    member = study.best_trials[0]
    run_id = member.user_attrs["mlflow_run_id"]

    def dom(url: str) -> str:
        with tempfile.TemporaryDirectory() as profile:
            r = subprocess.run([binary, *CHROME_FLAGS, f"--user-data-dir={profile}", "--window-size=1600,1000",
                                "--virtual-time-budget=20000", "--dump-dom", url],
                               capture_output=True, text=True, timeout=120)
        return r.stdout

    with serve_mlflow_ui(f"sqlite:///{root / 'mlflow.db'}") as base:
        runs = dom(f"{base}/#/experiments/{exp}/runs")  # the experiment as it opens: no filter, nothing expanded
        page = dom(f"{base}/#/experiments/{exp}/runs/{run_id}")
        view = dom(f"{base}/{study.user_attrs[FRONT_VIEW_ATTR]}")  # the address `autoq search` prints
    assert "study tiny" in runs and "pareto front chart" in runs
    # the saved front view: only the members, with the drop, its interval and the latency as columns
    assert all(f"★ trial {t.number} · drop" in view for t in study.best_trials)
    assert "study tiny" not in view and all(c in view for c in ("map_drop_pt_lo", "map_drop_pt_hi", "latency_ms"))
    for t in study.best_trials:  # every front member listed by name
        assert f"★ trial {t.number} · drop" in runs
    off = [t.number for t in study.trials if t.state.name == "COMPLETE" and t not in study.best_trials]
    assert off and all(f">trial {n}<" not in runs for n in off)  # the rest stay collapsed under the study run
    assert f"★ trial {member.number} · drop" in page and f"autoq export --trial {member.number}" in page
