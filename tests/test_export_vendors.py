"""vastai, ascend and tensorrt bundles: strict checkers, calibration data as each tool reads it."""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).parent))
from checkers import ascend as ascend_checker
from checkers import tensorrt as tensorrt_checker
from checkers import vastai as vastai_checker

from autoq.data.preprocess import Preprocess, to_input
from autoq.errors import ConfigError, ExportError
from autoq.export import ExportContext, export_config
from autoq.export.ascend import read_ascend
from autoq.export.tensorrt import read_tensorrt
from autoq.export.vastai import read_vastai
from autoq.plan import Calibration, Precision, QuantConfig

H = W = 8
QUANTIZABLE = ("c0", "s0", "m0", "c1", "mm0", "g0")
PP = Preprocess(resize="letterbox", color="rgb", mean=(10.0, 20.0, 30.0), std=(50.0, 60.0, 70.0))


def tiny_model() -> onnx.ModelProto:
    """images -> Conv c0 -> SiLU (s0, m0) -> Conv c1 -> Reshape r0 -> MatMul mm0 -> Gemm g0."""
    rng = np.random.default_rng(0)
    init = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w0"),
        numpy_helper.from_array(rng.normal(size=(2, 4, 1, 1)).astype(np.float32), "w1"),
        numpy_helper.from_array(np.array([1, 2 * H * W], np.int64), "shape"),
        numpy_helper.from_array(rng.normal(size=(2 * H * W, 6)).astype(np.float32), "wm"),
        numpy_helper.from_array(rng.normal(size=(6, 5)).astype(np.float32), "wg"),
    ]
    nodes = [
        helper.make_node("Conv", ["images", "w0"], ["a"], name="c0", pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["a"], ["b"], name="s0"),
        helper.make_node("Mul", ["a", "b"], ["c"], name="m0"),
        helper.make_node("Conv", ["c", "w1"], ["d"], name="c1"),
        helper.make_node("Reshape", ["d", "shape"], ["e"], name="r0"),
        helper.make_node("MatMul", ["e", "wm"], ["f"], name="mm0"),
        helper.make_node("Gemm", ["f", "wg"], ["out"], name="g0"),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 5])], initializer=init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def images() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(3, H, W, 3), dtype=np.uint8)


@pytest.fixture()
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_model(), path)
    return path


def ctx(model_path: Path, config: QuantConfig, **kw) -> ExportContext:
    m = onnx.load(str(model_path))
    fields: dict = {
        "config": config, "model_path": model_path, "input_name": "images", "input_shape": (1, 3, H, W),
        "node_names": QUANTIZABLE, "node_ops": {n.name: n.op_type for n in m.graph.node}, "preprocess": PP,
        "study": "tiny", "trial": 3, "map_drop": 0.01, "latency_ms": 1.5, "target": "vastai-va1",
        "calib_images": images,
    }
    return ExportContext(**(fields | kw))


def cfg(nodes: dict, method: str = "percentile", granularity: str = "per_channel") -> QuantConfig:
    return QuantConfig(calibration=Calibration(granularity=granularity, method=method, percentile=99.99), nodes=nodes)


# --------------------------------------------------------------------------- vastai


def test_vastai_bundle_passes_checker_and_npz_is_autoq_input(tmp_path: Path, model_path: Path) -> None:
    files = export_config(ctx(model_path, cfg({"c1": "float", "mm0": "float"})), "vastai", tmp_path / "v")
    folder = tmp_path / "v"
    assert files[0].name == "tiny_trial3_vamc.yaml"
    assert vastai_checker.check(folder) == []
    data = yaml.safe_load(files[0].read_text())
    q = data["backend"]["quantize"]
    assert q == {"calibrate_mode": "percentile", "quantize_per_channel": True,
                 "skip_conv_layers": [1], "skip_matmul_layers": [0]}
    assert "exclude_layers" not in q and "quantize_mode" not in q
    assert data["dataset"] == {"type": "tvm", "path": "calib", "sampler": {"suffix": "npz", "get_data_num": 3}}
    assert data["frontend"]["checkpoint"] == "model.onnx" and (folder / "model.onnx").is_file()
    expected = to_input(images(), PP)
    for k in range(3):
        with np.load(folder / "calib" / f"{k:04d}.npz") as z:
            assert z.files == ["images"] and z["images"].dtype == np.float32
            np.testing.assert_array_equal(z["images"], expected[k:k + 1])
    assert os.access(folder / "run.sh", os.X_OK)
    assert "vamc compile tiny_trial3_vamc.yaml" in (folder / "run.sh").read_text()
    nodes, cal = read_vastai(files[0])
    assert nodes == {"c1": Precision.FLOAT, "mm0": Precision.FLOAT}
    assert cal["skip_conv_layers"] == [1] and cal["calibrate_mode"] == "percentile"


@pytest.mark.parametrize(("method", "mode"), [("minmax", "max"), ("percentile", "percentile"), ("mse", "mse"),
                                              ("kl", "kl_divergence")])
def test_vastai_calibrate_modes(tmp_path: Path, model_path: Path, method: str, mode: str) -> None:
    [path, *_] = export_config(ctx(model_path, cfg({}, method=method, granularity="per_tensor")), "vastai", tmp_path)
    q = yaml.safe_load(path.read_text())["backend"]["quantize"]
    assert q == {"calibrate_mode": mode, "quantize_per_channel": False}
    assert vastai_checker.check(tmp_path) == []


def test_vastai_other_float_and_int16(tmp_path: Path, model_path: Path) -> None:
    with pytest.raises(ExportError, match=r"float nodes s0 \(Sigmoid\) cannot be expressed.*other_float='int8'"):
        export_config(ctx(model_path, cfg({"s0": "float"})), "vastai", tmp_path / "a")
    [path, *_] = export_config(ctx(model_path, cfg({"s0": "float", "c0": "float"})), "vastai", tmp_path / "b",
                               other_float="int8")
    assert "quantized int8 by vamc: s0" in path.read_text()
    assert yaml.safe_load(path.read_text())["backend"]["quantize"]["skip_conv_layers"] == [0]
    assert vastai_checker.check(tmp_path / "b") == []
    with pytest.raises(ExportError, match="vamc has no int16: nodes c0"):
        export_config(ctx(model_path, cfg({"c0": "int16"})), "vastai", tmp_path / "c")
    with pytest.raises(ConfigError, match="other_float must be one of refuse, int8"):
        export_config(ctx(model_path, cfg({})), "vastai", tmp_path / "d", other_float="fp16")


def test_vastai_all_float_is_fp16_without_dataset(tmp_path: Path, model_path: Path) -> None:
    [path, *_] = export_config(ctx(model_path, QuantConfig.uniform("float")), "vastai", tmp_path)
    data = yaml.safe_load(path.read_text())
    assert data["backend"] == {"type": "tvm_vacc", "dtype": "fp16"} and "dataset" not in data
    assert vastai_checker.check(tmp_path) == []


def test_vastai_checker_catches_violations(tmp_path: Path, model_path: Path) -> None:
    [path, *_] = export_config(ctx(model_path, cfg({"c1": "float"})), "vastai", tmp_path)
    data = yaml.safe_load(path.read_text())
    data["backend"]["quantize"].update(skip_conv_layers=[2], exclude_layers=[1], calibrate_mode="kl")
    data["dataset"]["sampler"]["suffix"] = "jpg"
    path.write_text(yaml.safe_dump(data))
    errs = vastai_checker.check(tmp_path)
    assert any("skip_conv_layers id 2 is outside the model's 2 Conv layers" in e for e in errs)
    assert any("exclude_layers without quantize_mode: manual" in e for e in errs)
    assert any("calibrate_mode 'kl'" in e for e in errs)
    assert any("without suffix 'jpg'" in e for e in errs)
    data["dataset"]["sampler"]["suffix"] = "npz"
    path.write_text(yaml.safe_dump(data))
    np.savez(tmp_path / "calib" / "0000.npz", images=np.zeros((1, 3, H, W), np.float64))
    assert any("0000.npz: images is float64" in e for e in vastai_checker.check(tmp_path))


# --------------------------------------------------------------------------- ascend


MIXED_ASCEND = {"c0": "int16", "s0": "int16", "c1": "float", "g0": "int16", "m0": "float"}


def test_ascend_bundle_passes_checker_and_bins_are_autoq_input(tmp_path: Path, model_path: Path) -> None:
    files = export_config(ctx(model_path, cfg(MIXED_ASCEND), target="ascend-310p"), "ascend", tmp_path)
    amct = files[0]
    assert amct.name == "tiny_trial3_amct.cfg"
    assert ascend_checker.check(tmp_path) == []
    parsed = ascend_checker.parse_text_proto(amct.read_text())
    assert parsed["skip_layers"] == ["c1"]  # m0 (Mul) is not an AMCT layer: no entry
    overrides = {o["layer_name"][0]: o["calibration_config"][0] for o in parsed["override_layer_configs"]}
    assert set(overrides) == {"c0", "g0", "mm0"}
    assert overrides["c0"]["ifmr_quantize"][0]["dst_type"] == ["INT16"]
    assert overrides["g0"]["ifmr_quantize"][0]["dst_type"] == ["INT16"]
    assert overrides["g0"]["arq_quantize"][0]["channel_wise"] == ["false"]
    assert overrides["mm0"]["arq_quantize"][0]["channel_wise"] == ["false"]
    assert "dst_type" not in overrides["mm0"]["ifmr_quantize"][0]
    assert parsed["common_config"][0]["arq_quantize"][0]["channel_wise"] == ["true"]
    assert parsed["common_config"][0]["ifmr_quantize"][0]["max_percentile"] == ["0.9999"]
    expected = to_input(images(), PP)
    bins = sorted((tmp_path / "calib").glob("*.bin"))
    assert len(bins) == 3
    for k, b in enumerate(bins):  # as amct_onnx reads --data_dir with --data_types float32 --input_shape
        np.testing.assert_array_equal(np.fromfile(b, dtype=np.float32).reshape(1, 3, H, W), expected[k:k + 1])
    run = (tmp_path / "run.sh").read_text().splitlines()
    amct_cmd = shlex.split(next(line for line in run if line.startswith("amct_onnx")))
    assert amct_cmd == ["amct_onnx", "calibration", "--model=model.onnx", "--save_path=amct_out/tiny_trial3",
                        "--input_shape=images:1,3,8,8", "--data_dir=calib", "--data_types=float32",
                        "--calibration_config=tiny_trial3_amct.cfg", "--batch_num=3"]
    atc = shlex.split(next(line for line in run if line.startswith("atc")))
    assert "--model=amct_out/tiny_trial3_deploy_model.onnx" in atc and "--precision_mode=force_fp16" in atc
    assert not any(a.startswith("--keep_dtype") for a in atc)
    nodes, cal = read_ascend(amct)
    assert nodes == {"c1": Precision.FLOAT, "c0": Precision.INT16, "g0": Precision.INT16}
    assert cal["granularity"] == "per_channel" and cal["per_tensor_layers"] == ["mm0", "g0"]
    assert cal["max_percentile"] == pytest.approx(0.9999) and cal["batch_num"] == 3
    assert "not an AMCT layer type (run float on Ascend): s0" in amct.read_text()


def test_ascend_refuses_int16_where_amct_has_none(tmp_path: Path, model_path: Path) -> None:
    with pytest.raises(ExportError, match=r"only Conv, ConvTranspose, Gemm to int16.*mm0 \(MatMul\)"):
        export_config(ctx(model_path, cfg({"mm0": "int16"})), "ascend", tmp_path)


def test_ascend_keep_dtype_goes_with_precision_mode(tmp_path: Path, model_path: Path) -> None:
    c = ctx(model_path, cfg({"c1": "float", "s0": "float"}, granularity="per_tensor"))
    export_config(c, "ascend", tmp_path / "k", keep_float=True, precision_mode="allow_fp32_to_fp16")
    assert ascend_checker.check(tmp_path / "k") == []
    atc = (tmp_path / "k" / "run.sh").read_text()
    assert "--precision_mode=allow_fp32_to_fp16 --keep_dtype=keep_dtype.cfg" in atc
    assert (tmp_path / "k" / "keep_dtype.cfg").read_text() == "s0\nc1\n"
    with pytest.raises(ConfigError, match="keep_float has no effect with precision_mode must_keep_origin_dtype"):
        export_config(c, "ascend", tmp_path / "x", keep_float=True, precision_mode="must_keep_origin_dtype")
    with pytest.raises(ConfigError, match="precision_mode must be one of"):
        export_config(c, "ascend", tmp_path / "y", precision_mode="fp16")


def test_ascend_all_float_compiles_the_model_directly(tmp_path: Path, model_path: Path) -> None:
    export_config(ctx(model_path, QuantConfig.uniform("float")), "ascend", tmp_path)
    run = (tmp_path / "run.sh").read_text()
    assert "amct_onnx" not in run and "atc --model=model.onnx" in run
    assert ascend_checker.check(tmp_path) == []


def test_ascend_checker_catches_violations(tmp_path: Path, model_path: Path) -> None:
    [amct, *_] = export_config(ctx(model_path, cfg({})), "ascend", tmp_path)
    amct.write_text(amct.read_text().replace('layer_name : "g0"', 'layer_name : "c0"') + 'skip_layers : "s0"\noverride_layer_configs : {\n layer_name : "mm0"\n'
                    ' calibration_config : {\n  arq_quantize : { channel_wise : true }\n'
                    '  ifmr_quantize : { dst_type : INT16 }\n }\n}\n')
    errs = ascend_checker.check(tmp_path)
    assert any("skip_layers 's0' is a Sigmoid" in e for e in errs)
    assert any("channel_wise must be false on MatMul" in e for e in errs)
    assert any("dst_type INT16 is only for" in e for e in errs)
    assert any("Gemm g0 inherits channel_wise true" in e for e in errs)
    (tmp_path / "calib" / "0000.bin").write_bytes(b"\0" * 10)
    assert any("0000.bin: 10 bytes, expected 768" in e for e in ascend_checker.check(tmp_path))
    run = tmp_path / "run.sh"
    run.write_text(run.read_text().replace("--precision_mode=force_fp16", "--keep_dtype=nope.cfg --bogus=1"))
    errs = ascend_checker.check(tmp_path)
    assert any("--keep_dtype needs --precision_mode" in e for e in errs)
    assert any("--bogus is not a documented option" in e for e in errs)


# --------------------------------------------------------------------------- tensorrt


def qdq_model() -> onnx.ModelProto:
    """A QDQ model the way ORT writes it with UseQDQContribOps: com.microsoft Q/DQ, asymmetric int8
    activations, an int16 pair in front of c1, int8 weights, an int32 bias."""
    base = tiny_model()
    g = base.graph
    ms = "com.microsoft"
    extra = [
        numpy_helper.from_array(np.array(0.02, np.float32), "s_in"),
        numpy_helper.from_array(np.array(-20, np.int8), "z_in"),
        numpy_helper.from_array(np.array(0.001, np.float32), "s16"),
        numpy_helper.from_array(np.array(5, np.int16), "z16"),
        numpy_helper.from_array(np.full(4, 0.01, np.float32), "s_w0"),
        numpy_helper.from_array(np.zeros(4, np.int8), "z_w0"),
        numpy_helper.from_array(np.arange(-8, 100, dtype=np.int8)[:108].reshape(4, 3, 3, 3), "w0_q"),
        numpy_helper.from_array(np.array([100, -50, 0, 7], np.int32), "b0_q"),
        numpy_helper.from_array(np.full(4, 0.0002, np.float32), "s_b0"),
        numpy_helper.from_array(np.zeros(4, np.int32), "z_b0"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["images", "s_in", "z_in"], ["images_q"], name="q_in", domain=ms),
        helper.make_node("DequantizeLinear", ["images_q", "s_in", "z_in"], ["images_dq"], name="dq_in", domain=ms),
        helper.make_node("DequantizeLinear", ["w0_q", "s_w0", "z_w0"], ["w0_dq"], name="dq_w0", domain=ms, axis=0),
        helper.make_node("DequantizeLinear", ["b0_q", "s_b0", "z_b0"], ["b0_dq"], name="dq_b0", domain=ms, axis=0),
        helper.make_node("Conv", ["images_dq", "w0_dq", "b0_dq"], ["a"], name="c0", pads=[1, 1, 1, 1]),
        *[n for n in g.node if n.name in ("s0", "m0")],
        helper.make_node("QuantizeLinear", ["c", "s16", "z16"], ["c_q"], name="q16", domain=ms),
        helper.make_node("DequantizeLinear", ["c_q", "s16", "z16"], ["c_dq"], name="dq16", domain=ms),
        helper.make_node("Conv", ["c_dq", "w1"], ["d"], name="c1"),
        *[n for n in g.node if n.name in ("r0", "mm0", "g0")],
    ]
    inits = [t for t in g.initializer if t.name != "w0"] + extra
    graph = helper.make_graph(nodes, "tiny_qdq", list(g.input), list(g.output), initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(ms, 1)])


def test_tensorrt_bundle_is_explicit_quantization(tmp_path: Path, model_path: Path) -> None:
    c = ctx(model_path, cfg({"c1": "int16", "s0": "float", "mm0": "float"}),
            qdq_model=lambda: qdq_model().SerializeToString())
    files = export_config(c, "tensorrt", tmp_path)
    assert [f.name for f in files] == ["run.sh", "model_qdq.onnx"]
    assert tensorrt_checker.check(tmp_path) == []
    words = shlex.split((tmp_path / "run.sh").read_text(), comments=True)
    assert words[words.index("trtexec"):] == [
        "trtexec", "--onnx=model_qdq.onnx", "--int8", "--fp16", "--precisionConstraints=obey",
        "--layerPrecisions=c1:fp16,mm0:fp32", "--saveEngine=tiny_trial3.engine"]
    m = onnx.load(str(tmp_path / "model_qdq.onnx"))
    onnx.checker.check_model(m)
    ops = {n.name: n for n in m.graph.node}
    assert "q16" not in ops and "dq16" not in ops and "dq_b0" not in ops  # int16 pair gone, bias folded
    assert ops["c1"].input[0] == "c" and all(n.domain == "" for n in m.graph.node)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    # autoq's range [(-128+20)*0.02, (127+20)*0.02] = [-2.16, 2.94] -> symmetric amax 2.94
    assert inits["s_in"] == pytest.approx(2.94 / 127) and inits["z_in"] == 0 and inits["z_in"].dtype == np.int8
    np.testing.assert_allclose(inits["b0_dq"], [0.02, -0.01, 0.0, 0.0014], rtol=1e-6)
    ort = pytest.importorskip("onnxruntime")
    x = to_input(images()[:1], PP)
    out = ort.InferenceSession(str(tmp_path / "model_qdq.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"images": x})[0]
    assert out.shape == (1, 5) and np.isfinite(out).all()
    nodes, cal = read_tensorrt(tmp_path / "run.sh")
    assert nodes == {"c1": Precision.INT16, "mm0": Precision.FLOAT}
    assert cal["onnx"] == "model_qdq.onnx" and cal["flags"] == ["int8", "fp16"]


def test_tensorrt_all_float_and_missing_qdq(tmp_path: Path, model_path: Path) -> None:
    export_config(ctx(model_path, QuantConfig.uniform("float")), "tensorrt", tmp_path / "f")
    words = shlex.split((tmp_path / "f" / "run.sh").read_text(), comments=True)
    assert "--int8" not in words and "--onnx=model.onnx" in words
    assert "--layerPrecisions=c0:fp32,c1:fp32,mm0:fp32,g0:fp32" in words  # compute nodes only
    assert tensorrt_checker.check(tmp_path / "f") == []
    with pytest.raises(ExportError, match="ships the trial's QDQ model"):
        export_config(ctx(model_path, cfg({})), "tensorrt", tmp_path / "g")


def test_tensorrt_checker_catches_violations(tmp_path: Path, model_path: Path) -> None:
    c = ctx(model_path, cfg({"mm0": "float"}), qdq_model=lambda: qdq_model().SerializeToString())
    export_config(c, "tensorrt", tmp_path)
    run = tmp_path / "run.sh"
    run.write_text(run.read_text().replace("mm0:fp32", "mm0:fp32,r0:fp16,*:int8").replace("--int8 ", ""))
    errs = tensorrt_checker.check(tmp_path)
    assert any("'*:int8' with --precisionConstraints=obey" in e for e in errs)
    assert any("obey on 'r0', a Reshape" in e for e in errs)
    assert any("neither --int8 nor --stronglyTyped" in e for e in errs)
    onnx.save(qdq_model(), tmp_path / "model_qdq.onnx")  # the raw ORT model
    errs = tensorrt_checker.check(tmp_path)
    assert any("domain 'com.microsoft'" in e for e in errs)
    assert any("non-zero zero point" in e for e in errs)
    assert any("dequantizes int32" in e for e in errs)


def test_options_are_keyword_only_with_docstrings() -> None:
    import inspect

    from autoq.export import EXPORTERS

    for fmt in ("vastai", "ascend", "tensorrt"):
        fn = EXPORTERS.get(fmt)
        params = inspect.signature(fn).parameters
        options = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
        assert options, fmt
        for name in options:
            assert f"``{name}``" in fn.__doc__, (fmt, name)
    _ = dataclasses
