"""Every built-in export format: parses with its own parser, round-trips, matches a golden structure."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import pytest
import yaml
from test_export_horizon import MIXED, NODES, Preprocess, make_ctx

from autoq.errors import ConfigError, ExportError
from autoq.export import EXPORTERS, export_config
from autoq.export.ascend import read_ascend, read_keep_dtype
from autoq.export.horizon_j6 import read_horizon_j6
from autoq.export.onnx_qdq import read_onnx_qdq
from autoq.export.prototxt import Ident, PrototxtError, dump_prototxt, parse_prototxt
from autoq.export.pulsar import read_pulsar
from autoq.export.pulsar2 import read_pulsar2
from autoq.export.rknn import read_rknn
from autoq.export.tensorrt import read_tensorrt
from autoq.export.vastai import read_vastai
from autoq.plan import Calibration, Precision, QuantConfig

FLOAT_ONLY = QuantConfig(
    calibration=Calibration(granularity="per_tensor", method="minmax"),
    nodes={NODES[1]: "float", NODES[2]: "float"},
)
INT16_ONLY = QuantConfig(calibration=Calibration(method="mse"), nodes={NODES[0]: "int16", NODES[4]: "int16"})


def ctx_for(config: QuantConfig = MIXED, **kw):
    return make_ctx(config, **kw)


def listed(config: QuantConfig) -> dict[str, Precision]:
    """What an exporter lists: the nodes whose precision differs from the trial's default."""
    return {n: p for n, p in config.assignment(NODES).items() if p is not config.default}


def test_every_format_is_registered() -> None:
    for fmt in ("horizon", "horizon-j6", "axera-pulsar", "axera-pulsar2", "vastai", "ascend", "rknn",
                "onnx-qdq", "tensorrt"):
        assert fmt in EXPORTERS, fmt


# --------------------------------------------------------------------------- horizon-j6


def test_horizon_j6_golden_and_round_trip(tmp_path: Path) -> None:
    import numpy as np
    from checkers.horizon_j6 import check
    from test_export_horizon import H, W, bundle_ctx

    from autoq.data.preprocess import to_input

    ctx = bundle_ctx(tmp_path)
    files = export_config(ctx, "horizon-j6", tmp_path / "j6")
    path, cfg, model, run, side, *tensors = files
    assert path.name == "yolox-nano_trial17_quant_config.json" and side.name.endswith(".json.autoq.txt")
    assert cfg.name == "yolox-nano_trial17_hb_compile.yaml" and model.name == "model.onnx" and run.name == "run.sh"
    data = json.loads(path.read_text())
    assert data == {
        "model_config": {"all_node_type": "int8", "model_output_type": "int8",
                         "activation": {"calibration_type": "max", "max_percentile": 0.9999}},
        "op_config": {},
        "node_config": {NODES[1]: {"qtype": "int16"}, NODES[2]: {"qtype": "float32"}, NODES[3]: {"qtype": "int16"}},
    }
    nodes, cal = read_horizon_j6(tmp_path / "j6")
    assert nodes == listed(MIXED)
    assert cal == {"default": Precision.INT8, "model_output_type": "int8", "calibration_type": "max",
                   "max_percentile": pytest.approx(0.9999)}
    config = yaml.safe_load(cfg.read_text())
    assert config["calibration_parameters"] == {"cal_data_dir": "./calibration_data", "quant_config": f"./{path.name}"}
    assert config["model_parameters"]["onnx_model"] == "./model.onnx" and config["model_parameters"]["march"] == "nash-e"
    assert f"hb_compile --config {cfg.name}" in run.read_text()
    for needle in ("study: yolox-nano", "trial: 17", "predicted mAP drop: 1.23 pt", "9.87 ms", "assumptions:"):
        assert needle in side.read_text() and needle in cfg.read_text()
    # calibration tensors: float32 NCHW raw pixels, exactly autoq's input before mean/std
    arrays = np.stack([np.load(t)[0] for t in tensors])
    assert arrays.dtype == np.float32 and arrays.shape == (3, 3, H, W)
    assert np.array_equal(arrays, to_input(ctx.calib_images(), ctx.preprocess))
    assert check(tmp_path / "j6") == []


def test_horizon_j6_int16_default_float16_and_output_types(tmp_path: Path) -> None:
    from checkers.horizon_j6 import check
    from test_export_horizon import bundle_ctx

    cfg = QuantConfig(default="int16", nodes={NODES[0]: "int8", NODES[4]: "float"},
                      calibration=Calibration(method="mse"))
    [path, *_] = export_config(bundle_ctx(tmp_path, cfg), "horizon-j6", tmp_path / "a", float_type="float16")
    data = json.loads(path.read_text())
    assert data["model_config"]["all_node_type"] == "int16" and data["model_config"]["model_output_type"] == "int16"
    assert data["model_config"]["activation"] == {"calibration_type": "kl"}  # mse -> nearest documented: kl
    assert data["node_config"] == {NODES[0]: {"qtype": "int8"}, NODES[4]: {"qtype": "float16"}}
    nodes, cal = read_horizon_j6(path)
    assert nodes == listed(cfg) and cal["default"] is Precision.INT16
    assert check(tmp_path / "a") == []
    floats = QuantConfig.uniform("float")
    [path, *_] = export_config(bundle_ctx(tmp_path, floats), "horizon-j6", tmp_path / "f", float_type="float16")
    assert json.loads(path.read_text())["model_config"]["model_output_type"] == "float32"  # never float16
    with pytest.raises(ConfigError, match="model_output_type must be one of int8, int16, float32"):
        export_config(bundle_ctx(tmp_path), "horizon-j6", tmp_path / "g", model_output_type="float16")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"node_config": {"x": {"qtype": "int4"}}}))
    with pytest.raises(ConfigError, match="int4"):
        read_horizon_j6(bad)
    bad.write_text(json.dumps({"model_config": {"activation": {"calibration_type": "default"}}}))
    with pytest.raises(ConfigError, match="'default' is not one of"):
        read_horizon_j6(bad)


# --------------------------------------------------------------------------- prototxt + pulsar


def test_prototxt_reader_subset_and_errors() -> None:
    text = 'a: 1 # c\nb { c: "x\\"y" c: \'z\' d: -2.5e1 }\nb: { }\nl: [1, 2]\ne: ENUM_V;\n'
    assert parse_prototxt(text) == {"a": [1], "b": [{"c": ['x"y', "z"], "d": [-25.0]}, {}], "l": [1, 2],
                                    "e": ["ENUM_V"]}
    assert isinstance(parse_prototxt("e: V")["e"][0], Ident)
    message = {"s": "tab\tq\"ü", "m": [{"#": "note", "k": Ident("K")}, {}], "n": 3}
    assert parse_prototxt(dump_prototxt(message)) == {"s": ["tab\tq\"ü"], "m": [{"k": ["K"]}, {}], "n": [3]}
    for bad, where in [("a { b: 1", "line 1"), ("a: 1\nb 2", "line 2"), ("a: }", "line 1"),
                       ('a: "x\n"', "line 1"), ("a: [1 2]", "line 1")]:
        with pytest.raises(PrototxtError, match=where):
            parse_prototxt(bad)


def _axera_ctx(config: QuantConfig, tmp_path: Path, **kw):
    """make_ctx on a real model (the Identity chain named NODES, input x 1x3x4x4) with two calibration images."""
    import numpy as np
    import onnx

    model_path = tmp_path / "tiny.onnx"
    onnx.save(_tiny_onnx(), model_path)
    return dataclasses.replace(make_ctx(config, **kw), model_path=model_path, input_name="x", input_shape=(1, 3, 4, 4),
                               calib_images=lambda: np.zeros((2, 4, 4, 3), np.uint8))


def test_pulsar_golden_checker_and_round_trip(tmp_path: Path) -> None:
    from checkers.pulsar import check

    pre = Preprocess(color="rgb")
    ctx = _axera_ctx(INT16_ONLY, tmp_path, preprocess=pre)
    files = export_config(ctx, "axera-pulsar", tmp_path / "p", target_hardware="AX630")
    path = files[0]
    assert [f.name for f in files] == ["yolox-nano_trial17_pulsar.prototxt", "model.onnx", "calibration.tar", "run.sh"]
    text = path.read_text()
    assert text.startswith("# Axera Pulsar config.prototxt written by autoq\n# study: yolox-nano\n# trial: 17")
    assert check(tmp_path / "p") == []  # protobuf's own strict parser with the documented schema, and the rules
    raw = parse_prototxt(text)
    assert raw["input_path"] == ["model.onnx"] and raw["target_hardware"] == ["TARGET_HARDWARE_AX630"]
    assert raw["src_input_tensors"] == [{"tensor_name": ["x"], "color_space": ["TENSOR_COLOR_SPACE_RGB"]}]
    assert raw["neuwizard_conf"][0]["operator_conf"][0]["operator_conf_items"][0] == {
        "selector": [{"op_name": ["t0"]}],  # the node's output tensor
        "attributes": [{"input_feature_type": ["UINT16"], "weight_type": ["INT8"]}],
    }
    nodes, cal = read_pulsar(path)
    assert nodes == {"t0": Precision.INT16, "t4": Precision.INT16}
    assert cal == {"default": Precision.INT8, "granularity": "per_tensor", "observer_method": "OBSVR_METHOD_MSE_CLIPPING",
                   "path": "calibration.tar", "size": 2, "batch_size": 1}
    files = export_config(ctx, "axera-pulsar", tmp_path / "n", op_name_from="node")
    assert read_pulsar(files[0])[0] == listed(INT16_ONLY)


def test_pulsar_float_nodes(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"float nodes node: with#odd 'chars'; .*float_as_uint16"):
        export_config(_axera_ctx(MIXED, tmp_path), "axera-pulsar", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    files = export_config(_axera_ctx(MIXED, tmp_path), "axera-pulsar", tmp_path / "x", float_as_uint16=True,
                          op_name_from="node")
    assert "# autoq: float node, written as UINT16" in files[0].read_text()
    nodes, cal = read_pulsar(files[0])
    assert nodes == {NODES[1]: Precision.INT16, NODES[2]: Precision.INT16, NODES[3]: Precision.INT16}
    assert cal["granularity"] == "per_channel"
    cfg = QuantConfig(default="int16", nodes={NODES[0]: "int8"})  # whole model UINT16 + one UINT8 item
    files = export_config(_axera_ctx(cfg, tmp_path), "axera-pulsar", tmp_path / "d", op_name_from="node")
    nodes, cal = read_pulsar(files[0])
    assert nodes == {NODES[0]: Precision.INT8} and cal["default"] is Precision.INT16


# --------------------------------------------------------------------------- pulsar2


def test_pulsar2_golden_checker_and_round_trip(tmp_path: Path) -> None:
    from checkers.pulsar2 import check

    pre = Preprocess(color="rgb", mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
    with pytest.raises(ExportError, match=r"float Conv nodes node: with#odd 'chars'; .*float_conv=U16"):
        export_config(_axera_ctx(MIXED, tmp_path, preprocess=pre), "axera-pulsar2", tmp_path / "p2")
    ctx = dataclasses.replace(_axera_ctx(MIXED, tmp_path, preprocess=pre),
                              node_ops={n: "Conv" for n in NODES} | {NODES[2]: "Sigmoid"})
    path, side, *rest = export_config(ctx, "axera-pulsar2", tmp_path / "p2")
    assert [p.name for p in rest] == ["model.onnx", "calibration.tar", "run.sh"]
    data = json.loads(path.read_text())
    assert (data["model_type"], data["npu_mode"], data["target_hardware"]) == ("ONNX", "NPU1", "AX650")
    assert data["input"] == "model.onnx" and data["output_name"] == "yolox-nano_trial17.axmodel"
    quant = data["quant"]
    assert quant["calibration_method"] == "Percentile"
    assert quant["input_configs"] == [{
        "tensor_name": "x", "calibration_dataset": "calibration.tar", "calibration_format": "Image",
        "calibration_size": 2, "calibration_mean": [123.675, 116.28, 103.53], "calibration_std": [58.395, 57.12, 57.375],
    }]
    assert quant["layer_configs"] == [
        {"layer_name": NODES[1], "data_type": "U16"},
        {"layer_name": NODES[2], "data_type": "FP32"},
        {"layer_name": NODES[3], "data_type": "U16"},
    ]
    nodes, cal = read_pulsar2(path)
    assert nodes == listed(MIXED)
    assert cal["default"] is Precision.INT8 and cal["calibration_method"] == "Percentile"
    assert cal["mean"] == [123.675, 116.28, 103.53]
    assert "predicted latency: 9.87 ms" in side.read_text()
    assert check(tmp_path / "p2") == []
    cfg = QuantConfig(default="float", nodes={NODES[0]: "int8"}, calibration=Calibration(method="entropy"))
    path, *_ = export_config(_axera_ctx(cfg, tmp_path), "axera-pulsar2", tmp_path / "f", float_conv="U16")
    nodes, cal = read_pulsar2(path)
    assert nodes == {n: Precision.INT16 for n in NODES[1:]}  # float Conv -> U16; never a whole-graph FP32 item
    assert cal["default"] is Precision.INT8 and cal["calibration_method"] == "KL"
    assert check(tmp_path / "f") == []


# --------------------------------------------------------------------------- vastai


def _bundle_ctx(tmp_path: Path, config: QuantConfig = MIXED, **kw):
    """make_ctx with a real model file (Identity nodes named NODES) and calibration images."""
    import numpy as np
    import onnx

    model_path = tmp_path / "m.onnx"
    onnx.save(_tiny_onnx(), model_path)
    return dataclasses.replace(make_ctx(config, **kw), model_path=model_path, input_shape=(1, 3, 4, 4),
                               calib_images=lambda: np.zeros((2, 4, 4, 3), np.uint8),
                               qdq_model=lambda: _tiny_onnx().SerializeToString())


def test_vastai_golden_and_round_trip(tmp_path: Path) -> None:
    # (strict checks on a real Conv/MatMul model: tests/test_export_vendors.py)
    files = export_config(_bundle_ctx(tmp_path, FLOAT_ONLY), "vastai", tmp_path / "v")
    path = files[0]
    data = yaml.safe_load(path.read_text())
    assert data["name"] == "yolox-nano_trial17"
    assert data["frontend"] == {"shape": {"images": [1, 3, 4, 4]}, "type": "onnx", "checkpoint": "model.onnx",
                                "dtype": "fp32"}
    assert data["backend"] == {"type": "tvm_vacc", "dtype": "int8", "quantize": {
        "calibrate_mode": "max", "quantize_per_channel": False, "skip_conv_layers": [1, 2]}}
    assert data["dataset"] == {"type": "tvm", "path": "calib", "sampler": {"suffix": "npz", "get_data_num": 2}}
    assert "ONNX graph order" in path.read_text().split("name:")[0]  # the indexing assumption, in the header
    assert {f.name for f in files} == {path.name, "model.onnx", "run.sh", "0000.npz", "0001.npz"}
    nodes, cal = read_vastai(path)  # names from the '# autoq-layer' comments
    assert nodes == listed(FLOAT_ONLY)
    assert cal == {"default": Precision.INT8, "calibrate_mode": "max", "granularity": "per_tensor",
                   "skip_conv_layers": [1, 2], "skip_matmul_layers": []}


def test_vastai_refuses_int16(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"vamc has no int16: nodes /head/cls_convs.0/Conv, /head/reg_preds.0/Conv"):
        export_config(ctx_for(), "vastai", tmp_path / "v")
    assert not (tmp_path / "v").exists()


# --------------------------------------------------------------------------- ascend


def test_ascend_golden_and_round_trip(tmp_path: Path) -> None:
    # (strict checks on a real Conv/Gemm/MatMul model: tests/test_export_vendors.py)
    files = export_config(_bundle_ctx(tmp_path), "ascend", tmp_path / "a")
    amct = files[0]
    assert amct.name == "yolox-nano_trial17_amct.cfg"
    assert {f.name for f in files} == {amct.name, "model.onnx", "run.sh", "0000.bin", "0001.bin"}
    text = amct.read_text()
    assert "trial: 17" in text
    assert not text.lstrip("#").lstrip().startswith("{")  # proto text, never JSON
    nodes, cal = read_ascend(amct)
    assert nodes == {NODES[2]: Precision.FLOAT, NODES[1]: Precision.INT16, NODES[3]: Precision.INT16}
    assert cal == {"granularity": "per_channel", "max_percentile": pytest.approx(0.9999), "batch_num": 2,
                   "activation_offset": True, "per_tensor_layers": []}
    run = (tmp_path / "a" / "run.sh").read_text()
    assert "--calibration_config=yolox-nano_trial17_amct.cfg" in run and ".json" not in run
    ctx = dataclasses.replace(_bundle_ctx(tmp_path), node_ops={n: "Conv" for n in NODES} | {NODES[3]: "MatMul"})
    with pytest.raises(ExportError, match=r"nodes /head/reg_preds.0/Conv \(MatMul\) would be int8"):
        export_config(ctx, "ascend", tmp_path / "b")
    assert read_keep_dtype is not None


# --------------------------------------------------------------------------- rknn


def test_rknn_golden_and_round_trip(tmp_path: Path) -> None:
    import onnx

    model_path = tmp_path / "m.onnx"
    onnx.save(_tiny_onnx(), model_path)
    import numpy as np

    ctx = dataclasses.replace(make_ctx(MIXED), model_path=model_path,
                              calib_images=lambda: np.zeros((2, 4, 4, 3), np.uint8))
    files = export_config(ctx, "rknn", tmp_path / "r")
    path = files[0]
    assert path.name == "yolox-nano_trial17.quantization.cfg"
    assert {f.name for f in files} == {path.name, "model.onnx", "rknn_bundle.json", "build_rknn.py", "dataset.txt",
                                       "0000.npy", "0001.npy"}
    text = path.read_text()
    assert text.startswith("# RKNN-Toolkit2 hybrid quantization cfg written by autoq")
    assert "no RKNN equivalent; normal (min/max) is the nearest" in text  # percentile
    data = yaml.safe_load(text)
    # t0 feeds the int16 node NODES[1]: autoq quantizes it to int16, and in RKNN a tensor's type is its producer's
    assert data == {"custom_quantize_layers": {"t0": "int16", "t1": "int16", "t2": "float16", "t3": "int16"},
                    "quantize_parameters": {}}
    tensors, cal = read_rknn(path)
    assert tensors == {"t0": Precision.INT16, "t1": Precision.INT16, "t2": Precision.FLOAT, "t3": Precision.INT16}
    assert cal == {"quantized_algorithm": "normal", "quantized_method": "channel", "quantize_parameters": {}}
    nodes, _ = read_rknn(path, node_outputs={n: (f"t{i}",) for i, n in enumerate(NODES)})
    assert nodes == listed(MIXED) | {NODES[0]: Precision.INT16}
    bundle = json.loads((tmp_path / "r" / "rknn_bundle.json").read_text())
    assert bundle["quantization_cfg"] == path.name and bundle["do_quantization"] is True


def test_rknn_needs_the_model_to_name_tensors(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="cannot be read"):
        export_config(make_ctx(MIXED), "rknn", tmp_path / "r2")


# --------------------------------------------------------------------------- onnx-qdq


def _tiny_onnx():
    """Identity chain whose node names are NODES, plus one Q/DQ pair; valid for onnx.checker."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["t_in"], name="dq")]
    prev = "t_in"
    for i, name in enumerate(NODES):
        nodes.append(helper.make_node("Identity", [prev], [f"t{i}"], name=name))
        prev = f"t{i}"
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 3, 4, 4])],
        initializer=[numpy_helper.from_array(np.array(0.1, dtype=np.float32), "s"),
                     numpy_helper.from_array(np.array(0, dtype=np.uint8), "z")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_onnx_qdq_writes_loadable_model(tmp_path: Path) -> None:
    import onnx

    with pytest.raises(ExportError, match="needs the trial's QDQ model"):
        export_config(ctx_for(), "onnx-qdq", tmp_path / "q")
    ctx = dataclasses.replace(ctx_for(), qdq_model=lambda: _tiny_onnx().SerializeToString())
    [path] = export_config(ctx, "onnx-qdq", tmp_path / "q")
    assert path.name == "yolox-nano_trial17_qdq.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["autoq.study"] == "yolox-nano" and meta["autoq.trial"] == "17"
    assert float(meta["autoq.map_drop"]) == pytest.approx(0.0123)
    assert "assumptions:" in meta["autoq.header"]
    nodes, cal = read_onnx_qdq(path)
    assert nodes == MIXED.assignment(NODES)
    assert cal == {"granularity": "per_channel", "method": "percentile", "percentile": 99.99, "qdq_nodes": 2}


# --------------------------------------------------------------------------- tensorrt


def test_tensorrt_golden_and_round_trip(tmp_path: Path) -> None:
    # (strict checks and the QDQ rewrite on a real model: tests/test_export_vendors.py)
    run, model = export_config(_bundle_ctx(tmp_path), "tensorrt", tmp_path / "t")
    text = run.read_text()
    assert text.startswith("#!/usr/bin/env bash\n# TensorRT build command written by autoq")
    assert "TensorRT has no int16: int16 nodes lose their Q/DQ and run fp16" in text
    words = shlex.split(text, comments=True)
    assert words[words.index("trtexec"):] == [
        "trtexec", "--onnx=model_qdq.onnx", "--int8", "--fp16", "--precisionConstraints=obey",
        f"--layerPrecisions={NODES[1]}:fp16,{NODES[2]}:fp32,{NODES[3]}:fp16",
        "--saveEngine=yolox-nano_trial17.engine",
    ]
    nodes, cal = read_tensorrt(run)
    assert nodes == listed(MIXED)
    assert cal == {"onnx": "model_qdq.onnx", "precision_constraints": "obey", "engine": "yolox-nano_trial17.engine",
                   "flags": ["int8", "fp16"]}
    assert model.name == "model_qdq.onnx"


# --------------------------------------------------------------------------- shared rules


@pytest.mark.parametrize("fmt", ["horizon-j6", "axera-pulsar2", "ascend", "rknn", "tensorrt"])
def test_overrides_outside_the_model_are_refused(tmp_path: Path, fmt: str) -> None:
    with pytest.raises(ExportError, match="does not have: not_in_model"):
        export_config(ctx_for(QuantConfig(nodes={"not_in_model": "int16"})), fmt, tmp_path / "x")


def test_unknown_option_names_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no option 'float_as_int16'.*float_as_uint16"):
        export_config(ctx_for(), "axera-pulsar", tmp_path / "x", float_as_int16=True)


def test_unknown_format_lists_every_builtin(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown export format 'openvino'; known: .*axera-pulsar2.*tensorrt"):
        export_config(ctx_for(), "openvino", tmp_path / "x")


# --------------------------------------------------------------------------- export_pareto


def test_export_pareto_writes_one_folder_per_front_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    optuna = pytest.importorskip("optuna")
    import autoq.trial_record as record
    from autoq.export import run

    study = optuna.create_study(study_name="yolox-nano", directions=["minimize", "minimize"])
    configs = [MIXED, FLOAT_ONLY, QuantConfig.uniform("int8"), QuantConfig.uniform("float")]
    values = [(0.01, 9.0), (0.02, 8.0), (0.05, 5.0), (0.06, 20.0)]  # the last is dominated
    for cfg, v in zip(configs, values):
        study.add_trial(optuna.trial.create_trial(values=list(v), user_attrs={record.CONFIG_ATTR: cfg.to_dict()}))
    monkeypatch.setattr(run, "load_study", lambda project: study)
    monkeypatch.setattr(run, "trial_context", lambda project, s, t: dataclasses.replace(
        _bundle_ctx(tmp_path, record.trial_config(t)), trial=t.number, map_drop=t.values[0],
        latency_ms=t.values[1]))

    files = run.export_pareto(object(), fmt="tensorrt", out_dir=tmp_path / "front")
    assert [p.relative_to(tmp_path / "front").as_posix() for p in files if p.name == "run.sh"] == [
        "trial_2/run.sh", "trial_1/run.sh", "trial_0/run.sh"]  # by latency; trial 3 is dominated
    assert read_tensorrt(files[2])[0] == listed(FLOAT_ONLY)
    said: list[str] = []
    files = run.export_pareto(object(), fmt="vastai", out_dir=tmp_path / "v", log=said.append)
    assert sorted({p.relative_to(tmp_path / "v").parts[0] for p in files}) == ["trial_1", "trial_2"]  # 0: int16
    assert len(said) == 1 and "trial 0" in said[0] and "vamc has no int16" in said[0]
    assert not (tmp_path / "v" / "trial_0").exists()


def test_export_pareto_fails_when_no_front_trial_fits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    optuna = pytest.importorskip("optuna")
    import autoq.trial_record as record
    from autoq.export import run

    study = optuna.create_study(study_name="m", directions=["minimize", "minimize"])
    study.add_trial(optuna.trial.create_trial(values=[0.0, 1.0], user_attrs={record.CONFIG_ATTR: MIXED.to_dict()}))
    monkeypatch.setattr(run, "load_study", lambda project: study)
    monkeypatch.setattr(run, "trial_context", lambda project, s, t: ctx_for(record.trial_config(t)))
    with pytest.raises(ExportError, match=r"no Pareto trial can be written as vastai: trial 0: vamc has no int16"):
        run.export_pareto(object(), fmt="vastai", out_dir=tmp_path / "v", log=lambda _m: None)
