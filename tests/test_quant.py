from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from autoq.errors import ModelError
from autoq.model.graph import LoadedModel, load_model
from autoq.plan import Calibration, QuantConfig
from autoq.quant import calibrate
from autoq.quant.calibrate import ActivationStats, collect_stats, stats_key
from autoq.quant.qdq import build_qdq
from autoq.quant.ranges import activation_ranges


def _exact_int8_weights(rng: np.random.Generator, shape: tuple[int, ...], step: float) -> np.ndarray:
    """Weights int8 symmetric quantization represents exactly, so activation error dominates."""
    k = rng.integers(-127, 128, size=shape)
    k.flat[0] = 127
    return (k * step).astype(np.float32)


def _tiny_model(opset: int = 13) -> onnx.ModelProto:
    """x -> conv1 -> c1 -> sig -> s; mul(c1, s) -> m -> conv2 -> c2; concat(m, c2) -> out."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(_exact_int8_weights(rng, (4, 3, 3, 3), 0.01), "w1"),
        numpy_helper.from_array(np.zeros(4, np.float32), "b1"),
        numpy_helper.from_array(_exact_int8_weights(rng, (4, 4, 1, 1), 0.02), "w2"),
        numpy_helper.from_array(np.zeros(4, np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Sigmoid", ["c1"], ["s"], name="sig"),
        helper.make_node("Mul", ["c1", "s"], ["m"], name="mul"),
        helper.make_node("Conv", ["m", "w2", "b2"], ["c2"], name="conv2", kernel_shape=[1, 1]),
        helper.make_node("Concat", ["m", "c2"], ["out"], name="concat", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 8, 8])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model


def _batches(n: int = 4, seed: int = 1, shape=(1, 3, 8, 8)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) * 2 for _ in range(n)]


@pytest.fixture
def tiny(tmp_path) -> LoadedModel:
    path = tmp_path / "tiny.onnx"
    onnx.save_model(_tiny_model(11), str(path))
    return load_model(path)


@pytest.fixture
def tiny_ranges(tiny, tmp_path) -> dict[str, tuple[float, float]]:
    stats = collect_stats(tiny, _batches(), cache_dir=tmp_path / "cache", key="tiny")
    return activation_ranges(stats, Calibration())


def _run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _init(proto: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in proto.graph.initializer if t.name == name)


# ------------------------------------------------------------------------------------ calibration


def test_minmax_matches_ort_calibrator(tiny, tmp_path):
    from onnxruntime.quantization.calibrate import (
        CalibrationDataReader,
        CalibrationMethod,
        create_calibrator,
    )

    batches = _batches(5)
    stats = collect_stats(tiny, batches, cache_dir=None, key="x")

    ref_path = tmp_path / "ref.onnx"
    onnx.save_model(tiny.proto, str(ref_path))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": b} for b in batches])

        def get_next(self):
            return next(self.it, None)

    cal = create_calibrator(
        ref_path, None, augmented_model_path=str(tmp_path / "aug.onnx"), calibrate_method=CalibrationMethod.MinMax
    )
    cal.collect_data(Reader())
    ref = cal.compute_data()
    assert set(stats.minmax) == set(ref.keys())
    assert {"x", "c1", "s", "m", "c2", "out"} <= set(stats.minmax)
    for name, td in ref.items():
        lo, hi = (float(np.asarray(v).item()) for v in td.range_value)
        np.testing.assert_allclose(stats.minmax[name], (lo, hi), rtol=1e-5, atol=1e-7)
    # and equals a plain numpy min/max of the graph input
    x = np.stack(batches)
    np.testing.assert_allclose(stats.minmax["x"], (x.min(), x.max()), rtol=1e-6)


def test_stats_cache_reused(tiny, tmp_path):
    cache = tmp_path / "cache"
    before = calibrate.CALIBRATION_PASSES
    first = collect_stats(tiny, _batches(), cache_dir=cache, key="k1")
    assert calibrate.CALIBRATION_PASSES == before + 1
    assert (cache / "stats-k1.npz").is_file()

    def must_not_iterate():
        raise AssertionError("batches read on a cache hit")
        yield  # pragma: no cover

    again = collect_stats(tiny, must_not_iterate(), cache_dir=cache, key="k1")
    assert calibrate.CALIBRATION_PASSES == before + 1
    assert again.minmax.keys() == first.minmax.keys()
    for name, (lo, hi) in first.minmax.items():
        assert again.minmax[name] == pytest.approx((lo, hi), rel=1e-6)

    collect_stats(tiny, _batches(seed=3), cache_dir=cache, key="k2")
    assert calibrate.CALIBRATION_PASSES == before + 2


def test_stats_roundtrip(tmp_path):
    stats = ActivationStats(minmax={"a": (-1.5, 2.0), "b/c:0": (0.25, 0.5)})
    stats.save(tmp_path / "s.npz")
    assert ActivationStats.load(tmp_path / "s.npz").minmax == stats.minmax


def test_stats_key():
    key = stats_key("abc", "letterbox-416", "a.jpg,b.jpg")
    assert len(key) == 16 and int(key, 16) >= 0
    assert key == stats_key("abc", "letterbox-416", "a.jpg,b.jpg")
    assert key != stats_key("abc", "letterbox-320", "a.jpg,b.jpg")


def test_batches_split_for_batch1_model_and_shape_checked(tiny):
    from autoq.errors import DataError

    stacked = np.concatenate(_batches(4))  # (4, 3, 8, 8) into a batch-1 model
    stats = collect_stats(tiny, [stacked], cache_dir=None, key="s")
    per_image = collect_stats(tiny, _batches(4), cache_dir=None, key="s")
    assert stats.minmax.keys() == per_image.minmax.keys()
    for name, (lo, hi) in per_image.minmax.items():
        assert stats.minmax[name] == pytest.approx((lo, hi), rel=1e-6)
    with pytest.raises(DataError, match="does not fit the input"):
        collect_stats(tiny, [np.zeros((1, 3, 16, 16), np.float32)], cache_dir=None, key="s")
    with pytest.raises(DataError, match="no calibration images"):
        collect_stats(tiny, [], cache_dir=None, key="s")


def test_activation_ranges_include_zero_and_reject_unknown():
    stats = ActivationStats(minmax={"pos": (0.5, 2.0), "neg": (-3.0, -1.0), "both": (-1.0, 1.0)})
    ranges = activation_ranges(stats, Calibration(method="minmax"))
    assert ranges == {"pos": (0.0, 2.0), "neg": (-3.0, 0.0), "both": (-1.0, 1.0)}
    with pytest.raises(ValueError, match="unknown calibration method 'nope'; known: kl, minmax, mse, percentile"):
        activation_ranges(stats, Calibration(method="nope"))


# -------------------------------------------------------------------------------------------- QDQ


def _ops(proto: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in proto.graph.node]


def test_all_int8_has_qdq_and_runs(tiny, tiny_ranges):
    q = build_qdq(tiny, QuantConfig.uniform("int8"), tiny_ranges)
    ops = _ops(q)
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    zps = {n.input[2] for n in q.graph.node if n.op_type == "QuantizeLinear"}
    assert {_init(q, z).dtype for z in zps} == {np.dtype(np.int8)}
    x = _batches(1, seed=9)[0]
    y = _run(q, x)
    assert y.shape == (1, 8, 8, 8)
    ref = _run(tiny.proto, x)
    assert np.abs(y - ref).max() < 0.2 * np.abs(ref).max()


def test_build_is_deterministic(tiny, tiny_ranges):
    cfg = QuantConfig(default="int8", nodes={"sig": "int16", "concat": "float"})
    a = build_qdq(tiny, cfg, tiny_ranges).SerializeToString()
    b = build_qdq(tiny, cfg, tiny_ranges).SerializeToString()
    assert a == b


def test_float_node_left_unquantized(tiny, tiny_ranges):
    q = build_qdq(tiny, QuantConfig(default="int8", nodes={"concat": "float"}), tiny_ranges)
    concat = next(n for n in q.graph.node if n.op_type == "Concat")
    assert list(concat.output) == ["out"]  # writes the graph output directly, no Q/DQ after it
    assert not any(n.op_type == "QuantizeLinear" and "out" in n.input for n in q.graph.node)
    producers = {o: n.op_type for n in q.graph.node for o in n.output}
    assert all(producers[i] == "DequantizeLinear" for i in concat.input)  # int8 neighbours quantize their outputs
    _run(q, _batches(1)[0])


def test_all_float_config_returns_float_model(tiny, tiny_ranges):
    q = build_qdq(tiny, QuantConfig.uniform("float"), tiny_ranges)
    assert "QuantizeLinear" not in _ops(q)


def test_int16_node_tensors_use_int16(tiny, tiny_ranges):
    q = build_qdq(tiny, QuantConfig(default="int8", nodes={"sig": "int16"}), tiny_ranges)
    zp_type = {}
    for n in q.graph.node:
        if n.op_type == "QuantizeLinear":
            zp_type[n.input[0]] = _init(q, n.input[2]).dtype
    assert zp_type["s"] == np.int16  # output of the int16 node
    assert zp_type["c1"] == np.int16  # its input: int16 because one consumer (sig) is int16
    assert zp_type["m"] == np.int8  # mul -> conv2/concat are int8
    assert any(n.domain == "com.microsoft" for n in q.graph.node if n.op_type == "QuantizeLinear")
    _run(q, _batches(1)[0])


def test_per_channel_weights(tiny, tiny_ranges):
    cfg = QuantConfig.uniform("int8", calibration=Calibration(granularity="per_channel"))
    q = build_qdq(tiny, cfg, tiny_ranges)
    weight_dq = [n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("w1")]
    assert len(weight_dq) == 1
    axis = [a.i for a in weight_dq[0].attribute if a.name == "axis"]
    assert axis == [0]
    assert _init(q, weight_dq[0].input[1]).shape == (4,)
    _run(q, _batches(1)[0])


def test_int16_much_closer_to_float_than_int8(tiny, tiny_ranges):
    x = _batches()[0]  # calibration data: no clipping, so only rounding error remains
    ref = _run(tiny.proto, x)
    mse8 = float(np.mean((_run(build_qdq(tiny, QuantConfig.uniform("int8"), tiny_ranges), x) - ref) ** 2))
    mse16 = float(np.mean((_run(build_qdq(tiny, QuantConfig.uniform("int16"), tiny_ranges), x) - ref) ** 2))
    print(f"MSE int8 {mse8:.3g} int16 {mse16:.3g}")
    assert mse16 * 100 < mse8, (mse8, mse16)


def test_unknown_node_in_config(tiny, tiny_ranges):
    with pytest.raises(ModelError, match="does not have.*conv99"):
        build_qdq(tiny, QuantConfig(default="int8", nodes={"conv99": "int16"}), tiny_ranges)


def test_yolox_nano_qdq(real_data):
    model = load_model(real_data / "models" / "yolox_nano.onnx")
    rng = np.random.default_rng(0)
    x = (rng.random((1, 3, 416, 416), dtype=np.float32) * 255).astype(np.float32)
    stats = collect_stats(model, [x], cache_dir=None, key="yolox")
    ranges = activation_ranges(stats, Calibration())
    start = time.perf_counter()
    q = build_qdq(model, QuantConfig.uniform("int8"), ranges)
    seconds = time.perf_counter() - start
    assert sum(op == "QuantizeLinear" for op in _ops(q)) > 300
    assert seconds < 5, seconds
    y = _run(q, x)
    assert y.shape == (1, 3549, 85)


def test_non_finite_range_is_data_error():
    from autoq.errors import DataError

    with pytest.raises(DataError, match="'t'.*non-finite"):
        activation_ranges(ActivationStats(minmax={"t": (float("nan"), 1.0)}), Calibration())


def test_integer_sessions_keep_float_nodes_weights_float(tmp_path):
    """ORT's WeightBiasQuantization would give the float conv (between a DQ and a Q) int8 weights in the
    integer path; autoq's sessions switch it off, so integer kernels match fake-quant (the fidelity check)."""
    import onnxruntime as ort

    from autoq.runtime.session import SessionSettings, create_session

    rng = np.random.default_rng(0)
    w2 = (rng.standard_normal((8, 8, 3, 3)) * 0.05).astype(np.float32)
    w2[0, 0, 0, 0] = 30.0  # an outlier: int8 weights would zero out every small weight
    inits = [
        numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.2).astype(np.float32), "w1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array((rng.standard_normal((4, 8, 1, 1)) * 0.2).astype(np.float32), "w3"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c2", "w3"], ["y"], name="conv3"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path))
    loaded = load_model(path)
    batches = _batches(4, shape=(1, 3, 16, 16))
    ranges = activation_ranges(collect_stats(loaded, batches, cache_dir=None, key="w"), Calibration())
    data = build_qdq(loaded, QuantConfig(default="int8", nodes={"conv2": "float"}), ranges).SerializeToString()
    x = {"x": batches[0]}

    def run(session) -> np.ndarray:
        return session.run(None, x)[0]

    fake = run(create_session(data, settings=SessionSettings(1, "disabled")))
    ours = run(create_session(data, settings=SessionSettings(1, "all")))
    step = (ranges["y"][1] - ranges["y"][0]) / 255
    assert np.abs(ours - fake).max() <= 2 * step  # rounding of integer kernels only
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    raw = run(ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"]))
    if np.abs(raw - fake).max() <= 2 * step:
        pytest.skip(f"onnxruntime {ort.__version__} does not quantize the float conv's weights; nothing to guard")
