"""Range estimators against ONNX Runtime's calibrators, and their search-space parameters."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from autoq.model.graph import load_model
from autoq.plan import Calibration, QuantConfig
from autoq.quant.calibrate import HIST_BINS, collect_stats, stats_from_arrays
from autoq.quant.qdq import build_qdq, config_int16_tensors
from autoq.quant.ranges import activation_ranges, quantization_mse


def _model(opset: int = 13) -> onnx.ModelProto:
    """x(1,3,32,32) -> conv -> c -> sigmoid -> s; mul(c, s) -> m (SiLU) -> conv2 -> out."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
        numpy_helper.from_array(np.zeros(8, np.float32), "b1"),
        numpy_helper.from_array((rng.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float32), "w2"),
        numpy_helper.from_array(np.zeros(4, np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Sigmoid", ["c"], ["s"], name="sig"),
        helper.make_node("Mul", ["c", "s"], ["m"], name="mul"),
        helper.make_node("Conv", ["m", "w2", "b2"], ["out"], name="conv2", kernel_shape=[1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 32, 32])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model


def _batches(n: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.standard_t(3, size=(1, 3, 32, 32)).astype(np.float32) for _ in range(n)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("ranges")
    path = d / "m.onnx"
    onnx.save_model(_model(), str(path))
    model = load_model(path)
    batches = _batches()
    return model, batches, collect_stats(model, batches, cache_dir=None, key="t"), d


def _ort_ranges(model, batches, tmp, method, **extra):
    from onnxruntime.quantization.calibrate import (
        CalibrationDataReader,
        create_calibrator,
    )

    path = tmp / f"ref-{method.name}.onnx"
    onnx.save_model(model.proto, str(path))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": b} for b in batches])

        def get_next(self):
            return next(self.it, None)

    cal = create_calibrator(
        path, None, augmented_model_path=str(tmp / f"aug-{method.name}.onnx"), calibrate_method=method, extra_options=extra
    )
    cal.collect_data(Reader())
    data = cal.compute_data()
    return {k: tuple(float(np.asarray(v).item()) for v in td.range_value) for k, td in data.items()}


def _zero(lo, hi):
    return min(lo, 0.0), max(hi, 0.0)


def test_minmax_and_percentile_match_ort(setup, capsys):
    from onnxruntime.quantization.calibrate import CalibrationMethod

    model, batches, stats, tmp = setup
    ref = _ort_ranges(model, batches, tmp, CalibrationMethod.MinMax)
    ours = activation_ranges(stats, Calibration(method="minmax"))
    assert set(ref) == set(ours) == {"x", "c", "s", "m", "out"}
    for name, (lo, hi) in ref.items():
        np.testing.assert_allclose(ours[name], _zero(lo, hi), rtol=1e-4)
    for p in (99.9, 99.99):
        ref = _ort_ranges(
            model, batches, tmp, CalibrationMethod.Percentile, percentile=p, num_bins=HIST_BINS, symmetric=False
        )
        ours = activation_ranges(stats, Calibration(method="percentile", percentile=p))
        for name, (lo, hi) in ref.items():
            np.testing.assert_allclose(ours[name], _zero(lo, hi), rtol=1e-4, err_msg=f"{name} at {p}")
        assert ours["x"][1] < stats.minmax["x"][1]  # heavy tails: the percentile really clips
    capsys.readouterr()  # ORT's histogram calibrators print


def _heavy_tailed(n: int = 200_000) -> np.ndarray:
    """Laplace: heavier tails than a Gaussian, finite variance (so clipping can pay off)."""
    return np.random.default_rng(2).laplace(size=n).astype(np.float32)


def test_mse_beats_minmax_and_depends_on_bits():
    x = _heavy_tailed()
    stats = stats_from_arrays({"t": [x[:100_000], x[100_000:]]})
    mm = activation_ranges(stats, Calibration(method="minmax"))["t"]
    r8 = activation_ranges(stats, Calibration(method="mse"))["t"]
    r16 = activation_ranges(stats, Calibration(method="mse"), int16_tensors={"t"})["t"]
    e_mm, e_mse = quantization_mse(x, *mm, bits=8), quantization_mse(x, *r8, bits=8)
    assert e_mse < 0.8 * e_mm, (e_mse, e_mm)
    assert r8 != r16
    assert r8[1] < r16[1] <= mm[1] and mm[0] <= r16[0] < r8[0]  # int16 clips less
    assert quantization_mse(x, *r16, bits=16) <= quantization_mse(x, *mm, bits=16)


def test_kl_inside_minmax_and_clips_tails(setup):
    _, _, stats, _ = setup
    mm = activation_ranges(stats, Calibration(method="minmax"))
    kl = activation_ranges(stats, Calibration(method="kl"))
    for name, (lo, hi) in mm.items():
        assert lo <= kl[name][0] <= 0.0 <= kl[name][1] <= hi
    rng = np.random.default_rng(2)
    x = rng.standard_normal(200_000).astype(np.float32)
    x[:20] = rng.uniform(-100, 100, 20)  # a few far outliers: KL ignores them
    lo, hi = activation_ranges(stats_from_arrays({"t": [x]}), Calibration(method="kl"))["t"]
    assert 3 < hi < 20 and -20 < lo < -3


def test_int16_tensors_get_int16_ranges_and_memo(setup):
    model, _, stats, _ = setup
    cfg = QuantConfig(default="int8", nodes={"sig": "int16"}, calibration=Calibration(method="mse"))
    t16 = config_int16_tensors(model, cfg)
    assert set(t16) == {"c", "s"}
    r = activation_ranges(stats, cfg.calibration, int16_tensors=t16)
    r8 = activation_ranges(stats, cfg.calibration)
    r16 = activation_ranges(stats, cfg.calibration, int16_tensors=list(r8))
    assert r["s"] == r16["s"] and r["c"] == r16["c"] and r["m"] == r8["m"]
    assert ("mse", None, 8) in stats.memo and ("mse", None, 16) in stats.memo
    assert config_int16_tensors(model, QuantConfig.uniform("int8")) == []


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse", "kl"])
def test_per_channel_trial_on_opset11_model(tmp_path, method):
    import onnxruntime as ort

    path = tmp_path / "m11.onnx"
    onnx.save_model(_model(opset=11), str(path))
    model = load_model(path)  # upgraded to opset 13: per-channel QDQ needs it
    assert model.opset >= 13
    batches = _batches(2)
    stats = collect_stats(model, batches, cache_dir=None, key="o")
    cfg = QuantConfig(
        default="int8", nodes={"sig": "int16"}, calibration=Calibration(granularity="per_channel", method=method)
    )
    q = build_qdq(model, cfg, activation_ranges(stats, cfg.calibration, int16_tensors=config_int16_tensors(model, cfg)))
    y = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": batches[0]})[0]
    ref = ort.InferenceSession(model.serialized(), providers=["CPUExecutionProvider"]).run(None, {"x": batches[0]})[0]
    assert y.shape == (1, 4, 32, 32)
    assert np.abs(y - ref).mean() < 0.1 * np.abs(ref).mean()


def test_percentile_is_a_conditional_parameter():
    import optuna

    from autoq.plan import Precision
    from autoq.search.space import params_of, suggest_config

    names = ["a", "b"]
    precisions = [Precision.INT8, Precision.INT16]
    for method, percentile in (("percentile", 99.99), ("mse", None)):
        cfg = QuantConfig(
            default="int8", nodes={"b": "int16"}, calibration=Calibration("per_channel", method, percentile)
        )
        params = params_of(cfg, names)
        assert ("percentile" in params) == (method == "percentile")
        again = suggest_config(
            optuna.trial.FixedTrial(params), names, precisions, ["per_tensor", "per_channel"], ["percentile", "mse"],
            (99.99, 99.999),
        )
        assert again == cfg


def test_space_percentiles_validated(tmp_path):
    from autoq.config import load_config
    from autoq.errors import ConfigError

    for d in ("m", "e", "c"):
        (tmp_path / d).mkdir()
    (tmp_path / "model.onnx").write_bytes(b"x")
    (tmp_path / "a.json").write_text("{}")
    base = "model: {path: model.onnx}\ndata: {eval_images: e, eval_annotations: a.json, calib_images: c}\n"
    cfg = tmp_path / "autoq.yaml"
    cfg.write_text(base + "space: {methods: [percentile, mse], percentiles: [99.9, 99.99]}\n")
    assert load_config(cfg).space.percentiles == (99.9, 99.99)
    cfg.write_text(base + "space: {percentiles: [100]}\n")
    with pytest.raises(ConfigError, match="space.percentiles.*in \\(50, 100\\)"):
        load_config(cfg)
    cfg.write_text(base + "space: {methods: [entropy]}\n")
    with pytest.raises(ConfigError, match="space.methods.*unknown range estimator 'entropy'"):
        load_config(cfg)


def test_fast_build_is_byte_identical_to_ort(setup):
    model, _, stats, _ = setup
    for cfg in (
        QuantConfig.uniform("int8", calibration=Calibration(granularity="per_channel", method="mse")),
        QuantConfig(default="int8", nodes={"sig": "int16", "conv2": "float"}, calibration=Calibration(method="kl")),
        QuantConfig(default="int16", nodes={"mul": "int8"}),
    ):
        ranges = activation_ranges(stats, cfg.calibration, int16_tensors=config_int16_tensors(model, cfg))
        fast = build_qdq(model, cfg, ranges).SerializeToString()
        assert fast == build_qdq(model, cfg, ranges, fast=False).SerializeToString()


def test_fast_build_is_byte_identical_on_the_demo_detector(tmp_path):
    """The same on a real detector graph (Conv weights and biases, SiLU, decode): every config kind."""
    from pathlib import Path

    import autoq.demo

    model = load_model(Path(autoq.demo.__file__).parent / "detector.onnx")
    h, w = model.input_shape[2:]
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (1, 3, h, w)).astype(np.float32) for _ in range(2)]
    stats = collect_stats(model, batches, cache_dir=None, key="demo")
    names = [n.name for n in model.quantizable()]
    mixed = {n: ("int16", "float", "int8")[i % 3] for i, n in enumerate(names)}
    for cfg in (
        QuantConfig.uniform("int8", calibration=Calibration(granularity="per_channel")),
        QuantConfig(default="int8", nodes=mixed, calibration=Calibration(granularity="per_channel", method="mse")),
        QuantConfig(default="int8", nodes=mixed, calibration=Calibration(method="percentile", percentile=99.99)),
    ):
        ranges = activation_ranges(stats, cfg.calibration, int16_tensors=config_int16_tensors(model, cfg))
        assert build_qdq(model, cfg, ranges).SerializeToString() == build_qdq(model, cfg, ranges, fast=False).SerializeToString()


def test_unverified_onnxruntime_builds_with_the_plain_quantizer(setup, monkeypatch):
    """On an onnxruntime the speed-ups were not verified on, build_qdq uses ORT's own quantizer untouched."""
    from onnxruntime.quantization import qdq_quantizer

    from autoq.quant import ort_fast

    model, _, stats, _ = setup
    cfg = QuantConfig(default="int8", nodes={"sig": "int16"}, calibration=Calibration(granularity="per_channel"))
    ranges = activation_ranges(stats, cfg.calibration, int16_tensors=config_int16_tensors(model, cfg))
    expected = build_qdq(model, cfg, ranges, fast=False).SerializeToString()
    monkeypatch.setattr(ort_fast, "supported", lambda: False)
    monkeypatch.setattr(ort_fast, "fast_lookups", None)  # would fail if used
    monkeypatch.setattr(ort_fast, "memo_quantizer", None)
    find = qdq_quantizer.find_by_name
    assert build_qdq(model, cfg, ranges).SerializeToString() == expected
    assert qdq_quantizer.find_by_name is find


def test_ort_speedups_are_on_for_this_onnxruntime():
    """The installed onnxruntime is one the speed-ups were verified on (else builds are just slower):
    a new ORT release needs the byte-identity tests above run and VERIFIED_ORT extended."""
    import onnxruntime

    from autoq.quant import ort_fast

    assert ort_fast.supported(), f"onnxruntime {onnxruntime.__version__} not in {sorted(ort_fast.VERIFIED_ORT)}"
