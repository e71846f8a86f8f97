"""A tiny but real project on disk: a YOLOX-format ONNX head, images and COCO annotations.

Trials on it take well under a second, so search-level tests (resume, workers, failures) stay fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZE = 64
NUM_CLASSES = 2


def tiny_detector(path: Path, opset: int = 13) -> Path:
    """Conv(stride 8) -> SiLU -> Conv -> [1, 64, 5 + C] raw YOLOX-style output at stride 8."""
    rng = np.random.default_rng(0)
    c_out = 5 + NUM_CLASSES
    w1 = numpy_helper.from_array((rng.standard_normal((8, 3, 8, 8)) * 0.01).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(np.zeros(8, np.float32), "b1")
    w2 = numpy_helper.from_array((rng.standard_normal((c_out, 8, 1, 1)) * 0.3).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(np.zeros(c_out, np.float32), "b2")
    shape = numpy_helper.from_array(np.array([1, c_out, 64], np.int64), "shape")
    nodes = [
        helper.make_node("Conv", ["images", "w1", "b1"], ["c1"], name="conv1", strides=[8, 8]),
        helper.make_node("Sigmoid", ["c1"], ["s1"], name="sig1"),
        helper.make_node("Mul", ["c1", "s1"], ["a1"], name="silu1"),
        helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("Reshape", ["c2", "shape"], ["r"], name="reshape"),
        helper.make_node("Transpose", ["r"], ["t"], name="transpose", perm=[0, 2, 1]),
        helper.make_node("Sigmoid", ["t"], ["output"], name="sig_out"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 64, c_out])],
        [w1, b1, w2, b2, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def rich_detector(path: Path, opset: int = 13) -> Path:
    """`tiny_detector`'s output from the op kinds toolchains treat differently: Conv + SiLU, a depthwise
    Conv + Relu, an Add of a constant, MaxPool, Add, Concat, Resize, InstanceNormalization, a 1x1 Conv head, Reshape/Transpose/Sigmoid."""
    rng = np.random.default_rng(0)
    c_out = 5 + NUM_CLASSES

    def w(name, *shape, scale=0.1):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [
        w("w1", 8, 3, 8, 8, scale=0.01), w("b1", 8, scale=0.0), w("wd", 8, 1, 3, 3, scale=0.3), w("bd", 8, scale=0.0),
        w("w2", c_out, 16, 1, 1, scale=0.3), w("b2", c_out, scale=0.0),
        numpy_helper.from_array(np.ones(16, np.float32), "in_s"), numpy_helper.from_array(np.zeros(16, np.float32), "in_b"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
        numpy_helper.from_array(np.linspace(0.5, 1.5, 8, dtype=np.float32).reshape(1, 8, 1, 1), "offset"),
        numpy_helper.from_array(np.array([1, c_out, 64], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["images", "w1", "b1"], ["c1"], name="conv1", strides=[8, 8]),
        helper.make_node("Sigmoid", ["c1"], ["s1"], name="sig1"),
        helper.make_node("Mul", ["c1", "s1"], ["a1"], name="silu1"),
        helper.make_node("Conv", ["a1", "wd", "bd"], ["d1"], name="dwconv", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["d1"], ["r0"], name="relu"),
        helper.make_node("Add", ["r0", "offset"], ["r1"], name="add_offset"),  # a constant operand (zero point != 0)
        helper.make_node("MaxPool", ["r1"], ["m1"], name="pool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["a1", "m1"], ["add1"], name="add"),
        helper.make_node("Concat", ["add1", "r1"], ["cat"], name="concat", axis=1),
        helper.make_node("InstanceNormalization", ["cat", "in_s", "in_b"], ["norm"], name="inorm"),
        helper.make_node("Resize", ["norm", "", "scales"], ["up"], name="resize", mode="nearest"),
        helper.make_node("MaxPool", ["up"], ["down"], name="pool2", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["down", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("Reshape", ["c2", "shape"], ["r"], name="reshape"),
        helper.make_node("Transpose", ["r"], ["t"], name="transpose", perm=[0, 2, 1]),
        helper.make_node("Sigmoid", ["t"], ["output"], name="sig_out"),
    ]
    graph = helper.make_graph(
        nodes, "rich", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 64, c_out])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def make_tiny_project(root: Path, *, n_eval: int = 6, n_calib: int = 4, extra: str = "", rich: bool = False) -> Path:
    """Writes model, images, annotations and autoq.yaml under ``root``; returns the config path.
    ``rich``: the model is `rich_detector` (more op kinds) instead of `tiny_detector`."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    (rich_detector if rich else tiny_detector)(root / "model.onnx")
    ev, cal = root / "eval", root / "calib"
    ev.mkdir(parents=True, exist_ok=True)
    cal.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(1, n_eval + 1):
        img = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        cv2.imwrite(str(ev / f"{i:04d}.png"), img)
        images.append({"id": i, "file_name": f"{i:04d}.png", "height": 48, "width": 64})
        anns.append(
            {"id": i, "image_id": i, "category_id": 1 + i % 2, "bbox": [8, 8, 20, 16], "area": 320, "iscrowd": 0}
        )
    for i in range(n_calib):
        cv2.imwrite(str(cal / f"c{i:03d}.png"), rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    (root / "ann.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    cfg = root / "autoq.yaml"
    cfg.write_text(
        "model:\n  path: model.onnx\n  adapter: yolox\n"
        f"  adapter_options: {{num_classes: {NUM_CLASSES}, strides: [8]}}\n"
        "data: {eval_images: eval, eval_annotations: ann.json, calib_images: calib, calib_count: 4}\n"
        "search: {budget: 4, seed: 0, study_name: tiny, heartbeat_seconds: 1}\n"
        "tracking: {experiment: tiny}\n"
        # random weights on random images: float mAP 0, so the meaningless-baseline stop is off here
        "objective: {min_baseline: 0}\n" + extra
    )
    return cfg
