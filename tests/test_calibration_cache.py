"""Calibration statistics are computed once per model/data/preprocessing and reused across restarts."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from autoq.adapters.base import Detections
from autoq.plan import Calibration, QuantConfig
from autoq.quant import calibrate
from autoq.quant.calibrate import ActivationStats, collect_stats


def empty_adapter(outputs, metas, **_options):
    """Adapter named in the test project's autoq.yaml (this module is importable under pytest)."""
    return [Detections.empty() for _ in metas]


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.01).astype(np.float32), "w"),
        numpy_helper.from_array(np.zeros(4, np.float32), "b"),
    ]
    nodes = [
        helper.make_node("Conv", ["images", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Sigmoid", ["c"], ["s"], name="sig"),
        helper.make_node("Mul", ["c", "s"], ["out"], name="mul"),
    ]
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 32, 32])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


def _image(path: Path, seed: int) -> None:
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 256, (24, 40, 3), dtype=np.uint8))


@pytest.fixture
def project_dir(tmp_path) -> Path:
    onnx.save_model(_model(), str(tmp_path / "model.onnx"))
    (tmp_path / "eval").mkdir()
    (tmp_path / "calib").mkdir()
    images = []
    for i in (1, 2):
        _image(tmp_path / "eval" / f"{i}.png", i)
        images.append({"id": i, "file_name": f"{i}.png", "height": 24, "width": 40})
    ann = {
        "images": images,
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    for i in range(3):
        _image(tmp_path / "calib" / f"c{i}.png", 10 + i)
    (tmp_path / "autoq.yaml").write_text(
        "model: {path: model.onnx, adapter: 'test_calibration_cache:empty_adapter'}\n"
        "data: {eval_images: eval, eval_annotations: ann.json, calib_images: calib, calib_count: 3}\n"
        "space: {methods: [minmax, percentile, mse, kl]}\n"
        "objective: {min_baseline: 0}\n"  # the empty adapter detects nothing: no meaningful baseline
    )
    return tmp_path


def _project(d: Path):
    from autoq.config import load_config
    from autoq.pipeline import Project

    return Project(load_config(d / "autoq.yaml"))


CONFIGS = [
    QuantConfig(default="int8", nodes={"sig": "int16"}, calibration=Calibration("per_channel", "mse")),
    QuantConfig(default="int8", nodes={"mul": "float"}, calibration=Calibration("per_tensor", "percentile", 99.99)),
    QuantConfig.uniform("int16", calibration=Calibration("per_tensor", "kl")),
]


def test_second_run_performs_no_calibration_pass(project_dir):
    before = calibrate.CALIBRATION_PASSES
    first = _project(project_dir)
    results = [first.evaluate(c) for c in CONFIGS]
    assert calibrate.CALIBRATION_PASSES == before + 1
    assert {"ranges", "build", "session", "inference", "score"} <= set(results[0].seconds)
    cache = project_dir / ".autoq" / "cache"
    assert len(list(cache.glob("stats-*.npz"))) == 1
    assert len(list(cache.glob("session-*.json"))) == 1

    again = _project(project_dir)  # a restarted study: same model, data and preprocessing
    for c in CONFIGS:
        again.evaluate(c)
    assert calibrate.CALIBRATION_PASSES == before + 1
    assert again.stats.minmax == first.stats.minmax


def test_changed_calibration_set_or_preprocessing_recomputes(project_dir):
    before = calibrate.CALIBRATION_PASSES
    _project(project_dir).stats
    assert calibrate.CALIBRATION_PASSES == before + 1
    _image(project_dir / "calib" / "a0.png", 99)  # sorts first: the file list changes
    _project(project_dir).stats
    assert calibrate.CALIBRATION_PASSES == before + 2
    _image(project_dir / "calib" / "a0.png", 98)  # same names, other content
    _project(project_dir).stats
    assert calibrate.CALIBRATION_PASSES == before + 3
    cfg = project_dir / "autoq.yaml"
    cfg.write_text(cfg.read_text() + "preprocess: {color: rgb}\n")
    _project(project_dir).stats
    assert calibrate.CALIBRATION_PASSES == before + 4
    _project(project_dir).stats
    assert calibrate.CALIBRATION_PASSES == before + 4


def test_old_format_cache_is_recomputed(project_dir, tmp_path):
    from autoq.model.graph import load_model

    model = load_model(project_dir / "model.onnx")
    batches = [np.random.default_rng(i).random((1, 3, 32, 32), dtype=np.float32) for i in range(2)]
    cache = tmp_path / "c"
    cache.mkdir()
    np.savez(  # what format 1 wrote: min/max only
        cache / "stats-k.npz", format=np.array(1), names=np.array(["images"]), min=np.zeros(1), max=np.ones(1)
    )
    before = calibrate.CALIBRATION_PASSES
    stats = collect_stats(model, batches, cache_dir=cache, key="k")
    assert calibrate.CALIBRATION_PASSES == before + 1
    assert set(stats.histograms) == set(stats.minmax) >= {"images", "c", "s", "out"}
    loaded = ActivationStats.load(cache / "stats-k.npz")
    for name, h in stats.histograms.items():
        np.testing.assert_array_equal(loaded.histograms[name].counts, h.counts)
        assert loaded.histograms[name].threshold == h.threshold
        assert h.counts.sum() == 2 * int(np.prod(model.node("conv").output_shapes[0] or (1, 3, 32, 32))) or name == "images"


def test_check_fidelity_runs_both_ways(project_dir):
    from autoq.report.fidelity import FidelityResult, check_fidelity

    r = check_fidelity(_project(project_dir), CONFIGS[0])
    assert isinstance(r, FidelityResult)
    assert r.diff == pytest.approx(r.map_int - r.map_fake)
