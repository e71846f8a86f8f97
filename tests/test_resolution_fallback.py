"""Resolution rewrite fallback (issue 16): a baked shape whose reading as a function of (H, W) is ambiguous
is computed from a tensor that carries its dims (Shape -> Gather -> Concat), so the graph follows its input.

The torch model is square with C == H == W (8 x 8 x 8 features at 64 x 64), so every 8 in a baked shape
could be the channels, the height or the width: a flattened [C*H*W] split back into [C, H, W], a spatial
flatten of a transposed [N, C, W, H] tensor split back (the H-before-W tie-break would be wrong) and an
Expand to [N, C, H, W] of a pooled value. Moved to other sizes it matches, output for output, the same
network exported there; a constant nothing in the graph carries is still refused with one line.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from autoq.errors import ModelError
from autoq.model.resolution import at_resolution

torch = pytest.importorskip("torch")
nn = torch.nn


class _Square(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 8, 8)  # 64 x 64 -> [1, 8, 8, 8]
        self.mix = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        f = torch.relu(self.stem(x))
        b, c, h, w = (int(v) for v in f.shape)  # python ints: baked like a public export
        g = torch.softmax(f.view(b, c * h * w), -1).view(b, c, h, w)  # [C*H*W] -> [8, 8, 8]
        t = f.transpose(2, 3)  # [N, C, W, H]
        u = (torch.softmax(t.reshape(b, c, w * h), -1).view(b, c, w, h) * t).transpose(2, 3)
        e = f.mean((1, 2, 3), keepdim=True).expand(b, c, h, w)  # Expand to [8, 8, 8]
        return self.mix(torch.cat([g * f + u, e], 1))


def _export(path, h: int, w: int):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Square().eval(), torch.zeros(1, 3, h, w), str(path), opset_version=11, dynamo=False,
                          input_names=["images"], output_names=["output"])
    return onnx.load(str(path))


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]


@pytest.fixture(scope="module")
def square(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("fb") / "m64.onnx", 64, 64)


@pytest.mark.parametrize("size", [(32, 48), (48, 48), (96, 40)])
def test_ambiguous_shapes_follow_the_input_and_match_the_export_at_that_size(square, tmp_path, size):
    baked = [n for n in square.graph.node if n.op_type in ("Reshape", "Expand")]
    assert len(baked) >= 4  # the patterns under test are there (no Shape arithmetic of torch's own)
    moved = at_resolution(square, size)
    x = np.random.default_rng(1).standard_normal((1, 3, *size)).astype(np.float32)
    got, want = _run(moved, x), _run(_export(tmp_path / "ref.onnx", *size), x)
    assert got.shape == want.shape == (1, 8, size[0] // 8, size[1] // 8)
    np.testing.assert_allclose(got, want, atol=1e-5)

    old = {n.name for n in square.graph.node if n.op_type != "Constant"}
    new = [n for n in moved.graph.node if n.name not in old and n.op_type != "Constant"]
    assert old <= {n.name for n in moved.graph.node}  # exports key by node name: every name kept
    shapes = [n for n in new if n.op_type == "Shape"]
    assert {n.op_type for n in new} <= {"Shape", "Gather", "Concat"} and len(shapes) == 3
    # named after the node they feed: a Reshape, or the Where of torch's expand(*ints) feeding the Expand
    served = {n.name.split("/at_resolution")[0] for n in new}
    assert served == {"/Reshape_1", "/Reshape_3", "/Where"} and all("/at_resolution" in n.name for n in new)


def test_square_target_still_moves_with_its_input(square, tmp_path):
    """The computed shape is read at run time: the same rewritten graph is right at its declared size."""
    moved = at_resolution(square, (48, 48))
    assert any(n.op_type == "Shape" for n in moved.graph.node)
    x = np.random.default_rng(2).standard_normal((1, 3, 48, 48)).astype(np.float32)
    np.testing.assert_allclose(_run(moved, x), _run(_export(tmp_path / "r.onnx", 48, 48), x), atol=1e-5)


def _orphan(h: int, w: int) -> onnx.ModelProto:
    """Conv to [1, 8, h/2, w/2] next to a ConstantOfShape([1, 8, 8, 8]) that touches nothing else."""
    inits = [numpy_helper.from_array(np.ones((8, 3, 2, 2), np.float32), "w"),
             numpy_helper.from_array(np.array([1, 8, 8, 8], np.int64), "shape")]
    nodes = [helper.make_node("Conv", ["images", "w"], ["c"], name="conv", strides=[2, 2]),
             helper.make_node("ConstantOfShape", ["shape"], ["z"], name="fill")]
    graph = helper.make_graph(nodes, "orphan", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, h, w])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_a_constant_nothing_carries_is_refused_in_one_line():
    with pytest.raises(ModelError) as err:
        at_resolution(_orphan(16, 16), (24, 32))
    text = str(err.value)
    assert "ConstantOfShape 'fill'" in text and "no tensor near it carries" in text and "model.resolutions" in text
    assert "\n" not in text


class _Fold(nn.Module):
    """[C*H*W] split into [C, H/2, 2W] and back: entries are a carrier's dims times 1/2 and 2."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 8, 8)

    def forward(self, x):
        f = self.stem(x)
        b, c, h, w = (int(v) for v in f.shape)
        g = torch.softmax(f.view(b, c * h * w), -1).view(b, c, h // 2, w * 2)
        return (g * 2).view(b, c, h, w) + f


def test_entries_that_are_a_carried_dim_times_a_factor(tmp_path):
    def export(h, w):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_Fold().eval(), torch.zeros(1, 3, h, w), str(tmp_path / f"{h}x{w}.onnx"),
                              opset_version=11, dynamo=False, input_names=["images"], output_names=["output"])
        return onnx.load(str(tmp_path / f"{h}x{w}.onnx"))

    moved = at_resolution(export(64, 64), (32, 80))
    assert {"Mul", "Div"} <= {n.op_type for n in moved.graph.node if "/at_resolution" in n.name}
    x = np.random.default_rng(3).standard_normal((1, 3, 32, 80)).astype(np.float32)
    np.testing.assert_allclose(_run(moved, x), _run(export(32, 80), x), atol=1e-5)
