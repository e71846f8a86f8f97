"""Any static-shape detector at any searched resolution (issue 16).

A ShuffleNetV2-style detector built here in torch and exported with static shapes (channel shuffles as
Reshape -> Transpose -> Reshape, torch.chunk as Shape arithmetic + Slice, an FPN neck whose Resize has
a fixed size, a head that flattens H*W and reshapes it back): moved to other sizes it matches, output
for output, the same network exported at those sizes; a size that truly cannot be rewritten is dropped
before the search with one line; a study never evaluates one configuration twice.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from autoq.errors import ModelError
from autoq.model.resolution import at_resolution

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional


def _shuffle(x):
    b, c, h, w = (int(v) for v in x.shape)  # python ints: baked into the export like a public model's
    return x.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, c, h, w)


def _cbr(i, o, k=1, s=1, g=1, act=True):
    layers = [nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(o)]
    return nn.Sequential(*layers, nn.ReLU()) if act else nn.Sequential(*layers)


class _Block(nn.Module):
    """ShuffleNetV2 unit: stride 2 (two branches) or stride 1 (chunk, one branch), then a channel shuffle."""

    def __init__(self, i, o, stride):
        super().__init__()
        self.stride, b = stride, o // 2
        if stride == 2:
            self.left = nn.Sequential(_cbr(i, i, 3, 2, i, act=False), _cbr(i, b))
        self.right = nn.Sequential(_cbr(i if stride == 2 else b, b), _cbr(b, b, 3, stride, b, act=False), _cbr(b, b))

    def forward(self, x):
        if self.stride == 1:
            a, c = x.chunk(2, dim=1)
            return _shuffle(torch.cat([a, self.right(c)], 1))
        return _shuffle(torch.cat([self.left(x), self.right(x)], 1))


class _Detector(nn.Module):
    """Stride-8 YOLOX-format head [1, H/8 * W/8, 5 + 2]; ``unshuffle``: a space-to-depth stem (even sizes only)."""

    def __init__(self, unshuffle: bool = False):
        super().__init__()
        self.unshuffle = unshuffle
        self.stem = nn.Sequential(_cbr(12, 8, 3, 1) if unshuffle else _cbr(3, 8, 3, 2), nn.MaxPool2d(3, 2, 1))
        self.s2 = nn.Sequential(_Block(8, 16, 2), _Block(16, 16, 1))
        self.s3 = nn.Sequential(_Block(16, 32, 2), _Block(32, 32, 1))
        self.lat, self.fuse = _cbr(32, 16), _cbr(32, 16, 3)
        self.attn, self.head = nn.Conv2d(16, 1, 1), nn.Conv2d(16, 7, 1)

    def forward(self, x):
        if self.unshuffle:
            b, c, h, w = (int(v) for v in x.shape)
            x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)
        c2 = self.s2(self.stem(x))
        up = F.interpolate(self.lat(self.s3(c2)), size=(int(c2.shape[2]), int(c2.shape[3])), mode="nearest")
        f = self.fuse(torch.cat([up, c2], 1))
        b, c, h, w = (int(v) for v in f.shape)
        a = torch.softmax(self.attn(f).view(b, 1, h * w), dim=-1)  # flatten H*W ...
        f = (f.view(b, c, h * w) * a).view(b, c, h, w) + f  # ... and split it back into H, W
        y = self.head(f)
        return torch.sigmoid(y.view(b, 7, h * w).permute(0, 2, 1))


def export(path, h: int, w: int, *, unshuffle: bool = False):
    """The detector with fixed weights exported at (h, w) with static shapes (opset 11, like the public model)."""
    torch.manual_seed(0)
    m = _Detector(unshuffle).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, torch.zeros(1, 3, h, w), str(path), opset_version=11, dynamo=False,
                          input_names=["images"], output_names=["output"])
    return path


def _run(model, x):
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]


@pytest.mark.parametrize("size", [(48, 48), (32, 64), (40, 56), (100, 100)])
def test_rewrite_matches_the_model_exported_at_that_size(tmp_path, size):
    original = onnx.load(export(tmp_path / "m64.onnx", 64, 64))
    ops = {n.op_type for n in original.graph.node}
    assert {"Reshape", "Transpose", "Resize", "Slice", "Shape"} <= ops  # the patterns under test are there
    moved = at_resolution(original, size)
    x = np.random.default_rng(1).standard_normal((1, 3, *size)).astype(np.float32)
    got, want = _run(moved, x), _run(export(tmp_path / "ref.onnx", *size), x)
    assert got.shape == want.shape == (1, -(-size[0] // 8) * -(-size[1] // 8), 7)
    np.testing.assert_allclose(got, want, atol=1e-5)
    def named(m):  # rewritten constants become initializers: every other node keeps its name
        return [n.name for n in m.graph.node if n.op_type != "Constant"]

    assert named(moved) == named(original)


def test_square_flatten_split_is_not_ambiguous(tmp_path):
    """[N, C, H*W] -> [N, C, H, W] on a square model: H and W are told apart by probing each axis alone."""
    original = onnx.load(export(tmp_path / "m.onnx", 48, 48))
    moved = at_resolution(original, (32, 56))
    x = np.random.default_rng(2).standard_normal((1, 3, 32, 56)).astype(np.float32)
    np.testing.assert_allclose(_run(moved, x), _run(export(tmp_path / "r.onnx", 32, 56), x), atol=1e-5)


def test_space_to_depth_at_an_odd_size_is_refused_naming_the_node(tmp_path):
    original = onnx.load(export(tmp_path / "m.onnx", 64, 64, unshuffle=True))
    moved = at_resolution(original, (48, 80))  # even: fine
    x = np.random.default_rng(3).standard_normal((1, 3, 48, 80)).astype(np.float32)
    np.testing.assert_allclose(_run(moved, x), _run(export(tmp_path / "r.onnx", 48, 80, unshuffle=True), x), atol=1e-5)
    with pytest.raises(ModelError, match=r"Reshape '/Reshape'.*model\.resolutions"):
        at_resolution(original, (63, 64))


def _project(tmp_path, space: str, *, unshuffle: bool = False):
    from tiny_project import make_tiny_project

    from autoq.config import load_config
    from autoq.pipeline import Project

    cfg = make_tiny_project(tmp_path / "p", extra=space)
    export(cfg.parent / "model.onnx", 64, 64, unshuffle=unshuffle)  # replaces the tiny model: same I/O
    return Project(load_config(cfg))


def test_search_at_three_resolutions_drops_the_impossible_one_before_the_first_trial(tmp_path):
    from optuna.trial import TrialState

    from autoq.app.search import run_search

    project = _project(tmp_path, "space: {precisions: [int8, float], granularities: [per_channel],"
                                 " resolutions: [[64, 64], [48, 48], [32, 64], [63, 64]]}\n", unshuffle=True)
    lines: list[str] = []
    study = run_search(project, budget=6, log=lines.append)
    dropped = [m for m in lines if "dropped from the space" in m]
    assert len(dropped) == 1 and "63x64" in dropped[0] and "Reshape" in dropped[0] and "model.resolutions" in dropped[0]
    assert "\n" not in dropped[0] and "Traceback" not in "\n".join(lines)
    assert project.resolution_choices() == ("64x64", "48x48", "32x64")
    done = [t for t in study.trials if t.state is TrialState.COMPLETE]
    assert len(done) == 6
    assert not [t for t in study.trials if t.state is TrialState.FAIL]
    assert {t.params["resolution"] for t in study.trials} <= {"64x64", "48x48", "32x64"}
    # every other choice was built, run and baselined before the first trial, at its own size
    for size in ((48, 48), (32, 64)):
        state = project.variant(size)
        assert state.eval_set.images.shape[1:3] == size and np.isfinite(state.baseline.map)


def test_a_configuration_is_evaluated_once_per_study(tmp_path):
    from optuna.trial import TrialState

    from autoq.app.search import run_search
    from autoq.trial_record import CONFIG_ATTR, DUPLICATE_ATTR, trial_config

    # int8 only, one granularity, one method: every proposal is the same configuration
    project = _project(tmp_path, "space: {precisions: [int8], granularities: [per_channel], methods: [minmax]}\n")
    lines: list[str] = []
    study = run_search(project, budget=4, log=lines.append)
    ran = [t for t in study.trials if t.state is TrialState.COMPLETE]
    configs = [trial_config(t) for t in ran]
    assert len(configs) == len(set(configs)) == 1  # evaluated once
    repeats = [t for t in study.trials if DUPLICATE_ATTR in t.user_attrs]
    assert repeats and all(t.user_attrs[DUPLICATE_ATTR] == ran[0].number and CONFIG_ATTR in t.user_attrs
                           and t.user_attrs["map_drop"] == ran[0].values[0] for t in repeats)
    seeds = [t for t in study.trials if t.user_attrs.get("seed")]
    assert len({str(t.user_attrs.get("seed_config")) for t in seeds}) == len(seeds)  # no seed enqueued twice
    assert any("only proposes configurations already evaluated" in m for m in lines)
