from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from autoq.errors import ModelError
from autoq.model.graph import LoadedModel, load_model, node_table, quantizable_op_types


def exact_int8_weights(rng: np.random.Generator, shape: tuple[int, ...], step: float = 0.01) -> np.ndarray:
    """Weights that int8 symmetric per-tensor quantization represents exactly (so activation error dominates)."""
    k = rng.integers(-127, 128, size=shape)
    k.flat[0] = 127
    return (k * step).astype(np.float32)


def conv_sigmoid_model(opset: int = 13, *, named: bool = True, size: int = 8, seed: int = 0) -> onnx.ModelProto:
    """x(1,3,s,s) -> Conv3x3(4) -> c1 -> Sigmoid -> s; Mul(c1, s) -> m -> Conv1x1(4) -> c2; Concat(m, c2) -> out."""
    rng = np.random.default_rng(seed)
    w1 = exact_int8_weights(rng, (4, 3, 3, 3))
    b1 = np.zeros(4, dtype=np.float32)
    w2 = exact_int8_weights(rng, (4, 4, 1, 1), step=0.02)
    b2 = np.zeros(4, dtype=np.float32)
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(b2, "b2"),
    ]

    def name(n: str) -> str:
        return n if named else ""

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name=name("conv1"), pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Sigmoid", ["c1"], ["s"], name=name("sig")),
        helper.make_node("Mul", ["c1", "s"], ["m"], name=name("mul")),
        helper.make_node("Conv", ["m", "w2", "b2"], ["c2"], name=name("conv2"), kernel_shape=[1, 1]),
        helper.make_node("Concat", ["m", "c2"], ["out"], name=name("concat"), axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, size, size])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, str(path))
    return path


def test_node_table_shapes_and_macs_exact(tmp_path):
    model = load_model(save(conv_sigmoid_model(13), tmp_path / "m.onnx"))
    conv1 = model.node("conv1")
    assert conv1.input_shapes == ((1, 3, 8, 8), (4, 3, 3, 3), (4,))
    assert conv1.output_shapes == ((1, 4, 8, 8),)
    assert conv1.macs == 1 * 4 * 8 * 8 * 3 * 3 * 3  # out elems * Cin/groups * kh * kw
    assert conv1.flops == 2 * conv1.macs
    assert conv1.param_bytes == (4 * 3 * 3 * 3 + 4) * 4
    assert conv1.activation_bytes == 4 * 8 * 8 * 4
    conv2 = model.node("conv2")
    assert conv2.macs == 4 * 8 * 8 * 4
    concat = model.node("concat")
    assert concat.output_shapes == ((1, 8, 8, 8),)
    assert concat.macs == 0 and concat.flops == 0
    assert model.node("mul").flops == 4 * 8 * 8
    assert [n.name for n in model.quantizable()] == ["conv1", "sig", "mul", "conv2", "concat"]
    assert model.input_name == "x" and model.input_shape == (1, 3, 8, 8)
    assert model.output_names == ("out",)


def test_quantizable_op_types_cover_detector_ops():
    ops = quantizable_op_types()
    for op in ("Conv", "Sigmoid", "Mul", "Add", "Concat", "Resize", "MaxPool", "Reshape", "Transpose", "Slice"):
        assert op in ops


def test_node_table_at_another_resolution(tmp_path):
    model = load_model(save(conv_sigmoid_model(13), tmp_path / "m.onnx"))
    table = node_table(model.proto, (1, 3, 16, 16))
    conv1 = next(n for n in table if n.name == "conv1")
    assert conv1.output_shapes == ((1, 4, 16, 16),)
    assert conv1.macs == 4 * model.node("conv1").macs
    assert table[-1].output_shapes == ((1, 8, 16, 16),)
    # the loaded model itself is unchanged
    assert model.node("conv1").output_shapes == ((1, 4, 8, 8),)


def test_opset_upgraded_and_nodes_named(tmp_path):
    model = load_model(save(conv_sigmoid_model(11, named=False), tmp_path / "m11.onnx"))
    assert model.opset == 13
    assert all(n.name for n in model.nodes)
    assert [n.name for n in model.nodes] == ["Conv_0", "Sigmoid_1", "Mul_2", "Conv_3", "Concat_4"]
    assert [n.name for n in model.proto.graph.node] == [n.name for n in model.nodes]
    assert len(model.sha256) == 64
    assert model.serialized() is model.serialized()
    assert isinstance(model, LoadedModel)


def test_duplicate_names_made_unique(tmp_path):
    proto = conv_sigmoid_model(13)
    proto.graph.node[1].name = "conv1"
    model = load_model(save(proto, tmp_path / "dup.onnx"))
    names = [n.name for n in model.nodes]
    assert len(set(names)) == len(names)


def test_normalized_model_runs_like_original(tmp_path):
    import onnxruntime as ort

    path = save(conv_sigmoid_model(11), tmp_path / "m.onnx")
    model = load_model(path)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    a = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    b = ort.InferenceSession(model.serialized(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "nope.onnx")


def test_corrupt_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not an onnx model at all")
    with pytest.raises(ModelError, match="bad.onnx.*not a valid ONNX"):
        load_model(bad)


def test_two_inputs_rejected(tmp_path):
    node = helper.make_node("Add", ["a", "b"], ["c"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3]) for n in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 3])],
    )
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "two.onnx")
    with pytest.raises(ModelError, match="2 graph inputs"):
        load_model(path)


def test_opset_upgrade_failure_is_model_error(tmp_path):
    node = helper.make_node("NotAnOp", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), tmp_path / "old.onnx")
    with pytest.raises(ModelError, match=r"cannot upgrade opset 11 of .*old.onnx to 13.*export the model with opset >= 13"):
        load_model(path)


def test_initializer_inputs_are_not_graph_inputs(tmp_path):
    proto = conv_sigmoid_model(13)
    proto.graph.input.append(helper.make_tensor_value_info("w1", TensorProto.FLOAT, [4, 3, 3, 3]))
    model = load_model(save(proto, tmp_path / "m.onnx"))
    assert model.input_name == "x"
    assert [i.name for i in model.proto.graph.input] == ["x"]


def test_yolox_nano_node_table(real_data):
    start = time.perf_counter()
    model = load_model(real_data / "models" / "yolox_nano.onnx")
    seconds = time.perf_counter() - start
    assert model.opset >= 13
    assert len(model.nodes) == 369
    assert model.input_shape == (1, 3, 416, 416)
    assert all(s is not None for n in model.nodes for s in n.output_shapes)
    conv_macs = sum(n.macs for n in model.nodes if n.op_type == "Conv")
    # YOLOX-nano at 416x416 is ~1.08 GFLOPs, i.e. ~0.52 GMACs of convolutions.
    assert 0.45e9 < conv_macs < 0.6e9, conv_macs
    assert len(model.quantizable()) == 369
    assert seconds < 10
    at_320 = node_table(model.proto, (1, 3, 320, 320))
    assert at_320[-1].output_shapes[0] == (1, (40 * 40 + 20 * 20 + 10 * 10), 85)
