"""Op replacements: each rewrite on a small graph (exact within 1e-5, approximations report their
error, stable names) and a tiny search with resolutions and a rewrite set as trial parameters."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from autoq.errors import ModelError
from autoq.model.rewrites import REWRITES, apply_rewrites


def _model(nodes, inits=(), *, shape=(1, 4, 8, 8), opset=13, out_shape=None) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], list(inits),
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _scalar(name, v):
    return numpy_helper.from_array(np.array(v, np.float32), name)


def _silu():
    return _model([helper.make_node("Sigmoid", ["x"], ["s"], name="sig"),
                   helper.make_node("Mul", ["x", "s"], ["y"], name="act")])


@pytest.mark.parametrize("name, op", [("silu_to_hardswish", "HardSwish"), ("silu_to_relu", "Relu")])
def test_silu_rewrites_keep_the_mul_name_and_report_error(name, op):
    out, (rep,) = apply_rewrites(_silu(), [name])
    assert [(n.op_type, n.name) for n in out.graph.node] == [(op, "act")]
    assert rep.matches == 1 and not rep.exact and 0 < rep.max_error < 1.0


def test_sigmoid_to_hardsigmoid():
    m = _model([helper.make_node("Sigmoid", ["x"], ["y"], name="sig")])
    out, (rep,) = apply_rewrites(m, ["sigmoid_to_hardsigmoid"])
    assert [(n.op_type, n.name) for n in out.graph.node] == [("HardSigmoid", "sig")]
    assert 0 < rep.max_error < 0.1


def test_hardswish_to_relu6():
    m = _model([helper.make_node("HardSwish", ["x"], ["y"], name="hs")], opset=14)
    out, (rep,) = apply_rewrites(m, ["hardswish_to_relu6"])
    assert [(n.op_type, n.name) for n in out.graph.node] == [("Clip", "hs")]
    assert rep.max_error > 0  # documented approximation (ReLU6 substitute)


@pytest.mark.parametrize("half_first", [False, True])
def test_gelu_to_tanh(half_first):
    inits = [_scalar("sqrt2", math.sqrt(2)), _scalar("one", 1.0), _scalar("half", 0.5)]
    nodes = [helper.make_node("Div", ["x", "sqrt2"], ["d"], name="div"),
             helper.make_node("Erf", ["d"], ["e"], name="erf"),
             helper.make_node("Add", ["e", "one"], ["a"], name="add")]
    if half_first:
        nodes += [helper.make_node("Mul", ["x", "half"], ["h"], name="half"),
                  helper.make_node("Mul", ["h", "a"], ["y"], name="gelu")]
    else:
        nodes += [helper.make_node("Mul", ["x", "a"], ["m"], name="mul"),
                  helper.make_node("Mul", ["m", "half"], ["y"], name="gelu")]
    out, (rep,) = apply_rewrites(_model(nodes, inits), ["gelu_to_tanh"])
    ops = [n.op_type for n in out.graph.node]
    assert "Erf" not in ops and "Tanh" in ops
    assert out.graph.node[-1].name == "gelu"
    assert 0 < rep.max_error < 1e-2


def test_instancenorm_decompose_is_exact():
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "scale"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "bias")]
    m = _model([helper.make_node("InstanceNormalization", ["x", "scale", "bias"], ["y"], name="inorm", epsilon=1e-5)], inits)
    out, (rep,) = apply_rewrites(m, ["instancenorm_decompose"])
    assert rep.exact and rep.max_error <= 1e-5
    assert "InstanceNormalization" not in {n.op_type for n in out.graph.node}
    assert out.graph.node[-1].name == "inorm"


def test_resize_to_nearest():
    inits = [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    m = _model([helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up", mode="linear")], inits)
    out, (rep,) = apply_rewrites(m, ["resize_to_nearest"])
    attrs = {a.name: helper.get_attribute_value(a) for a in out.graph.node[0].attribute}
    assert attrs["mode"] == b"nearest" and out.graph.node[0].name == "up"
    assert rep.max_error > 0


def test_no_match_and_unknown_name_fail_clearly():
    with pytest.raises(ModelError, match="gelu_to_tanh.*nothing"):
        apply_rewrites(_silu(), ["gelu_to_tanh"])
    from autoq.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown rewrite"):
        apply_rewrites(_silu(), ["nope"])
    assert {"silu_to_hardswish", "instancenorm_decompose", "resize_to_nearest"} <= set(REWRITES.names())


def test_search_with_resolutions_and_a_rewrite(tmp_path):
    from tiny_project import make_tiny_project

    from autoq.app.search import run_search
    from autoq.config import load_config
    from autoq.export.run import trial_context
    from autoq.pipeline import Project
    from autoq.plan import QuantConfig

    cfg = make_tiny_project(tmp_path / "p", extra=(
        "space: {precisions: [int8, float], granularities: [per_channel],"
        " resolutions: [[64, 64], [32, 32]], rewrites: [[silu_to_hardswish]]}\n"))
    project = Project(load_config(cfg))
    assert project.resolution_choices() == ("64x64", "32x32")
    assert project.variant_choices() == ("", "silu_to_hardswish")
    state = project.variant((32, 32), "silu_to_hardswish")
    assert state.input_size == (32, 32) and state.eval_set.images.shape[1:3] == (32, 32)
    ops = {n.name: n.op_type for n in state.model.nodes}
    assert ops["silu1"] == "HardSwish" and "sig1" not in ops
    # a config naming a node the variant lacks is evaluated; drop is against the original baseline
    r = project.evaluate(QuantConfig(resolution=(32, 32), variant="silu_to_hardswish", nodes={"sig1": "float"}))
    assert r.map_drop == pytest.approx(project.baseline.map - r.map)

    study = run_search(project, budget=4, log=lambda _m: None)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 4
    assert all(t.params["resolution"] in ("64x64", "32x32") and t.params["variant"] in ("", "silu_to_hardswish")
               for t in done)
    seeds = [t for t in done if t.user_attrs.get("seed")]  # all-int8 (int16 is not in the space)
    assert seeds and all(t.params["resolution"] == "64x64" and t.params["variant"] == "" for t in seeds)
    import mlflow

    client = mlflow.MlflowClient(load_config(cfg).tracking_uri())
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    logged = [r.data.params for r in runs if "resolution" in r.data.params]
    assert len(logged) >= 4 and all("variant" in p for p in logged)
    ctx = trial_context(project, study, done[0])
    assert ctx.model_path.is_file() and ".autoq/export" in str(ctx.model_path)
    assert ctx.input_shape[2:] == tuple(int(v) for v in done[0].params["resolution"].split("x"))
