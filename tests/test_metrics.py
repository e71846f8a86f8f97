"""Metric plugins (coco_map, top1, cosine, package.module:function), output similarity, label-free mode."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from autoq.config import load_config
from autoq.errors import ConfigError
from autoq.objectives.metrics import (
    METRICS,
    MetricContext,
    MetricResult,
    drop,
    load_metric,
)
from autoq.objectives.similarity import output_similarity, similarity_per_output
from autoq.pipeline import Project
from autoq.plan import Precision, QuantConfig

NET = (32, 48)


# --- similarity and the metric registry -------------------------------------------------------


def test_similarity_measures_on_known_outputs() -> None:
    ref = [[np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]], np.float32), np.ones((2, 3), np.float32)]]
    got = [[np.array([[0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]], np.float32), np.ones((2, 3), np.float32)]]
    (a, b) = similarity_per_output(ref, got)
    assert a["cosine"] == pytest.approx(0.5)  # image 1 orthogonal (0), image 2 parallel (1)
    assert a["l1"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert a["l2"] == pytest.approx((math.sqrt(2 / 4) + math.sqrt(1 / 4)) / 2)
    assert a["chebyshev"] == pytest.approx(1.0)
    assert b == {"cosine": 1.0, "l1": 0.0, "l2": 0.0, "chebyshev": 0.0}
    flat = output_similarity(ref, got)
    assert flat["cosine"] == pytest.approx(0.75) and flat["cosine/0"] == pytest.approx(0.5)
    assert output_similarity([[np.zeros((1, 2))]], [[np.zeros((1, 2))]])["cosine"] == 1.0
    with pytest.raises(ValueError, match="shape"):
        output_similarity(ref, [[np.zeros((2, 5)), np.ones((2, 3))]])


def test_drop_follows_the_declared_direction() -> None:
    assert drop(0.5, 0.4) == pytest.approx(0.1)
    assert drop(0.2, 0.3, higher_is_better=False) == pytest.approx(0.1)


def test_load_metric_builtins_functions_and_errors(tmp_path: Path, monkeypatch) -> None:
    assert {"coco_map", "top1", "cosine"} <= set(METRICS.names())
    assert load_metric("coco_map").fn.pseudo_gt_score == 0.3
    with pytest.raises(ConfigError, match="unknown metric 'nope'; known: .*coco_map"):
        load_metric("nope")
    with pytest.raises(ConfigError, match="accepted options: pseudo_gt_score"):
        load_metric("coco_map", {"iou": 0.5})
    (tmp_path / "auc_metric.py").write_text(
        textwrap.dedent(
            """
            def auc(outputs, context, *, scale=1.0):
                return scale * len(outputs)
            auc.higher_is_better = False
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    m = load_metric("auc_metric:auc", {"scale": 2.0})
    assert m.higher_is_better is False
    ctx = MetricContext(None)  # type: ignore[arg-type]
    assert m([[np.zeros(1)]] * 3, ctx) == MetricResult(value=6.0)
    with pytest.raises(ConfigError, match="accepted options: scale"):
        load_metric("auc_metric:auc", {"bins": 3})


# --- tiny projects on disk ----------------------------------------------------------------------


def _save(model: onnx.ModelProto, path: Path) -> None:
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _detector(path: Path) -> None:
    """A YOLOv8-format head [1, 4+2, 8]: two confident boxes that move slightly with the image mean."""
    rows = np.zeros((8, 6), np.float32)
    rows[0] = [12, 10, 14, 10, 0.9, 0.0]
    rows[1] = [30, 16, 10, 20, 0.0, 0.7]
    rows[2] = [24, 20, 8, 8, 0.2, 0.0]  # below the pseudo-GT threshold
    const = rows.T[None].copy()
    slope = np.zeros_like(const)
    slope[0, :2, :3] = 0.02  # centres shift by 0.02 * mean pixel
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, *NET])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 6, 8])
    w = numpy_helper.from_array(np.full((1, 3, 1, 1), 1 / 3, np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["images", "w"], ["gray"]),
        helper.make_node("ReduceMean", ["gray"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Mul", ["mean", "slope"], ["shift"]),
        helper.make_node("Add", ["shift", "const"], ["output0"]),
    ]
    inits = [w, numpy_helper.from_array(const, "const"), numpy_helper.from_array(slope, "slope")]
    _save(helper.make_model(helper.make_graph(nodes, "det", [x], [y], initializer=inits), opset_imports=[helper.make_opsetid("", 13)]), path)


def _classifier(path: Path) -> None:
    """Logits [N, 3] = per-channel means of the (BGR) input."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, *NET])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])
    w = numpy_helper.from_array(np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1), "w")
    nodes = [
        helper.make_node("Conv", ["images", "w"], ["c"]),
        helper.make_node("ReduceMean", ["c"], ["logits"], axes=[2, 3], keepdims=0),
    ]
    _save(helper.make_model(helper.make_graph(nodes, "cls", [x], [y], initializer=[w]), opset_imports=[helper.make_opsetid("", 13)]), path)


def _images(folder: Path, colors: list[tuple[int, int, int]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, bgr in enumerate(colors):
        img = np.zeros((64, 96, 3), np.uint8)
        img[:] = bgr
        cv2.imwrite(str(folder / f"img{k}.png"), img)


def _project(tmp_path: Path, model: str, body: str, adapter: str = "yolox") -> Project:
    model_line = f"model: {{path: {model}, adapter: {adapter}, input_size: [{NET[0]}, {NET[1]}]}}"
    (tmp_path / "autoq.yaml").write_text(f"{model_line}\n{body}\nsearch: {{budget: 2}}\n")
    return Project(load_config(tmp_path / "autoq.yaml"))


def test_label_free_float_model_has_zero_drop(tmp_path: Path) -> None:
    _detector(tmp_path / "det.onnx")
    _images(tmp_path / "eval", [(10, 20, 30), (100, 90, 80), (200, 10, 10)])
    _images(tmp_path / "calib", [(50, 50, 50), (120, 60, 30)])
    project = _project(tmp_path, "det.onnx", "data: {eval_images: eval, calib_images: calib}", adapter="yolov8")
    assert project.eval_set.coco is None and len(project.eval_set) == 3
    assert project.baseline.map == pytest.approx(1.0)  # agreement of the float model with itself
    same = project.evaluate(QuantConfig.uniform(Precision.FLOAT))
    assert same.map_drop == pytest.approx(0.0) and same.similarity["cosine"] == pytest.approx(1.0)
    assert project.eval_set.coco is None  # pseudo ground truth lives in the metric's memo, not the eval set
    int8 = project.evaluate(QuantConfig.uniform(Precision.INT8))
    assert 0.0 <= int8.map_drop <= 1.0 and set(int8.similarity) >= {"cosine", "l1", "l2", "chebyshev"}
    assert "sim_cosine" in int8.metrics()


def test_top1_reads_class_folders(tmp_path: Path) -> None:
    _classifier(tmp_path / "cls.onnx")
    for name, bgr in {"blue": (200, 0, 0), "green": (0, 200, 0), "red": (0, 0, 200)}.items():
        _images(tmp_path / "eval" / name, [bgr, tuple(int(v * 0.5) for v in bgr)])
    _images(tmp_path / "calib", [(50, 50, 50)])
    project = _project(
        tmp_path, "cls.onnx", "data: {eval_images: eval, calib_images: calib}\nobjective: {metric: top1}"
    )
    assert project.eval_set.class_names == ("blue", "green", "red") and len(project.eval_set) == 6
    assert project.baseline.map == pytest.approx(1.0) and math.isnan(project.baseline.map50)
    # class order given by the option: the model's channel 0 (blue) is now called "red" -> all wrong
    (tmp_path / "autoq.yaml").write_text(
        (tmp_path / "autoq.yaml").read_text().replace("{metric: top1}", "{metric: top1, options: {class_names: [red, green, blue]}}")
    )
    wrong = Project(load_config(tmp_path / "autoq.yaml"))
    assert wrong.score(wrong.float_outputs).value == pytest.approx(1 / 3)


def test_metric_plugin_end_to_end(tmp_path: Path, monkeypatch, capsys) -> None:
    from autoq.cli import main

    (tmp_path / "mymetric.py").write_text(
        textwrap.dedent(
            """
            import numpy as np

            def metric(outputs, context, *, power=1):
                '''Mean |float - trial| ** power over the logits: lower is better.'''
                ref = np.concatenate([b[0] for b in context.reference])
                got = np.concatenate([b[0] for b in outputs])
                return float((np.abs(ref - got) ** power).mean())

            metric.higher_is_better = False
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # seconds faster than a fresh sqlite store
    _classifier(tmp_path / "cls.onnx")
    _images(tmp_path / "eval", [(10, 120, 250), (200, 100, 0)])
    _images(tmp_path / "calib", [(50, 50, 50), (250, 0, 100)])
    body = (
        "data: {eval_images: eval, calib_images: calib}\nobjective: {metric: 'mymetric:metric', options: {power: 2}}\n"
        f"tracking: {{uri: {(tmp_path / 'mlruns').as_uri()}}}"  # file store: no database migrations
    )
    project = _project(tmp_path, "cls.onnx", body)
    assert project.metric.higher_is_better is False and project.baseline.map == 0.0
    result = project.evaluate(QuantConfig.uniform(Precision.INT8))
    assert result.map_drop == pytest.approx(result.map) and result.map >= 0.0 and result.per_class_ap == {}
    assert main(["search", "-c", str(tmp_path / "autoq.yaml"), "--budget", "2"]) == 0
    assert "Pareto front" in capsys.readouterr().out
