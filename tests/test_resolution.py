"""Input resolution as a search dimension: baked Reshape shapes rewritten, verified by running."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from autoq.model.resolution import at_resolution, format_resolution, parse_resolution


def _shufflenet(h: int, w: int, *, flatten_split: bool = False) -> onnx.ModelProto:
    """Conv(stride 2) -> channel shuffle [N, 2, C/2, H, W] -> Conv -> flatten [N, C, H*W], all baked."""
    rng = np.random.default_rng(0)
    fh, fw = h // 2, w // 2
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((8, 8, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array([1, 2, 4, fh, fw], np.int64), "s_split"),
        numpy_helper.from_array(np.array([1, 8, fh, fw], np.int64), "s_merge"),
        numpy_helper.from_array(np.array([1, 8, fh * fw], np.int64), "s_flat"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["c1", "s_split"], ["r1"], name="shuffle_split"),
        helper.make_node("Transpose", ["r1"], ["t1"], name="shuffle_t", perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["t1", "s_merge"], ["r2"], name="shuffle_merge"),
        helper.make_node("Conv", ["r2", "w2"], ["c2"], name="conv2"),
        helper.make_node("Reshape", ["c2", "s_flat"], ["y"], name="flatten"),
    ]
    out = "y"
    if flatten_split:  # H*W split back into H, W: ambiguous for a rewrite
        inits.append(numpy_helper.from_array(np.array([1, 8, fh, fw], np.int64), "s_unflat"))
        nodes.append(helper.make_node("Reshape", ["y", "s_unflat"], ["z"], name="unflatten"))
        out = "z"
    graph = helper.make_graph(
        nodes, "shuffle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, h, w])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_shufflenet_runs_at_new_resolution_like_a_graph_built_there():
    original = _shufflenet(64, 64)
    moved = at_resolution(original, (48, 80))
    direct = _shufflenet(48, 80)
    x = np.random.default_rng(1).standard_normal((1, 3, 48, 80)).astype(np.float32)
    got, want = _run(moved, x), _run(direct, x)
    assert got.shape == want.shape == (1, 8, 24 * 40)
    np.testing.assert_allclose(got, want, atol=1e-5)
    dims = moved.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 48, 80]
    assert {n.name for n in moved.graph.node} == {n.name for n in original.graph.node}  # names kept


def test_flattened_hw_split_back_follows_h_and_w():
    """[N, C, H*W] -> [N, C, H, W] on a square model: each axis probed alone tells H from W (issue 16)."""
    moved = at_resolution(_shufflenet(64, 64, flatten_split=True), (32, 48))
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 48)).astype(np.float32)
    np.testing.assert_allclose(_run(moved, x), _run(_shufflenet(32, 48, flatten_split=True), x), atol=1e-5)


def test_resolution_strings():
    assert parse_resolution("320x256") == (320, 256)
    assert format_resolution((320, 256)) == "320x256"
    with pytest.raises(ValueError):
        parse_resolution("320")
