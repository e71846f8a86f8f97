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
    files = export_config(ctx_for(), "horizon-j6", tmp_path / "j6", yaml_snippet=True)
    path, side, snippet = files
    assert path.name == "yolox-nano_trial17_quant_config.json" and side.name.endswith(".json.autoq.txt")
    data = json.loads(path.read_text())
    assert data == {
        "model_config": {"all_node_type": "int8", "model_output_type": "int8",
                         "activation": {"calibration_type": "max", "max_percentile": 0.9999}},
        "op_config": {},
        "node_config": {NODES[1]: {"qtype": "int16"}, NODES[2]: {"qtype": "float32"}, NODES[3]: {"qtype": "int16"}},
    }
    nodes, cal = read_horizon_j6(path)
    assert nodes == listed(MIXED)
    assert cal == {"default": Precision.INT8, "model_output_type": "int8", "calibration_type": "max",
                   "max_percentile": pytest.approx(0.9999)}
    assert yaml.safe_load(snippet.read_text())["calibration_parameters"]["quant_config"] == path.name
    for needle in ("study: yolox-nano", "trial: 17", "predicted mAP drop: 0.0123", "9.87 ms", "assumptions:"):
        assert needle in side.read_text() and needle in snippet.read_text()


def test_horizon_j6_int16_default_and_float16(tmp_path: Path) -> None:
    cfg = QuantConfig(default="int16", nodes={NODES[0]: "int8", NODES[4]: "float"})
    [path, _] = export_config(ctx_for(cfg), "horizon-j6", tmp_path / "a.json", float_type="float16")
    data = json.loads(path.read_text())
    assert data["model_config"]["all_node_type"] == "int16"
    assert data["node_config"] == {NODES[0]: {"qtype": "int8"}, NODES[4]: {"qtype": "float16"}}
    nodes, cal = read_horizon_j6(path)
    assert nodes == listed(cfg) and cal["default"] is Precision.INT16
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"node_config": {"x": {"qtype": "int4"}}}))
    with pytest.raises(ConfigError, match="int4"):
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


def _pulsar_descriptor_pool():
    """A descriptor for the subset of Pulsar's config that autoq writes, for protobuf's own parser."""
    from google.protobuf import descriptor_pb2, descriptor_pool

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="pulsar_subset.proto", package="ps", syntax="proto2")

    def enum(name: str, *values: str) -> None:
        e = fdp.enum_type.add(name=name)
        for i, v in enumerate(values):
            e.value.add(name=v, number=i)

    def message(name: str, *fields: tuple) -> None:
        m = fdp.message_type.add(name=name)
        for i, (fname, ftype, type_name, repeated) in enumerate(fields, start=1):
            f = m.field.add(name=fname, number=i, type=ftype,
                            label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
            if type_name:
                f.type_name = f".ps.{type_name}"

    S, I, E, M = F.TYPE_STRING, F.TYPE_INT32, F.TYPE_ENUM, F.TYPE_MESSAGE
    enum("InputType", "INPUT_TYPE_UNKNOWN", "INPUT_TYPE_ONNX")
    enum("OutputType", "OUTPUT_TYPE_UNKNOWN", "OUTPUT_TYPE_JOINT")
    enum("Hardware", "TARGET_HARDWARE_UNKNOWN", "TARGET_HARDWARE_AX620", "TARGET_HARDWARE_AX630")
    enum("ColorSpace", *(f"TENSOR_COLOR_SPACE_{c}" for c in ("UNKNOWN", "BGR", "RGB", "GRAY", "NV12", "NV21")))
    enum("DataType", "DT_UNKNOWN", "UINT8", "INT8", "UINT16", "INT16")
    enum("DatasetType", "DATASET_TYPE_UNKNOWN", "DATASET_TYPE_TAR")
    enum("Strategy", "CALIB_STRATEGY_UNKNOWN", "CALIB_STRATEGY_PER_CHANNEL", "CALIB_STRATEGY_PER_TENSOR")
    enum("Observer", "OBSVR_METHOD_UNKNOWN", "OBSVR_METHOD_MIN_MAX", "OBSVR_METHOD_MSE_CLIPPING")
    message("Tensor", ("color_space", E, "ColorSpace", False))
    message("Selector", ("op_name", S, None, True))
    message("Attributes", ("input_feature_type", E, "DataType", False), ("weight_type", E, "DataType", False))
    message("Item", ("selector", M, "Selector", False), ("attributes", M, "Attributes", False))
    message("OperatorConf", ("operator_conf_items", M, "Item", True))
    message("Dataset", ("path", S, None, False), ("type", E, "DatasetType", False), ("size", I, None, False),
            ("batch_size", I, None, False), ("calibration_strategy", E, "Strategy", False),
            ("observer_method", E, "Observer", False))
    message("Neuwizard", ("operator_conf", M, "OperatorConf", False), ("dataset_conf_calibration", M, "Dataset", False))
    message("Config", ("input_path", S, None, False), ("input_type", E, "InputType", False),
            ("output_path", S, None, False), ("output_type", E, "OutputType", False),
            ("target_hardware", E, "Hardware", False), ("src_input_tensors", M, "Tensor", True),
            ("dst_input_tensors", M, "Tensor", True), ("neuwizard_conf", M, "Neuwizard", False))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return pool.FindMessageTypeByName("ps.Config")


def test_pulsar_golden_protobuf_and_round_trip(tmp_path: Path) -> None:
    from google.protobuf import message_factory, text_format

    pre = Preprocess(color="rgb")
    [path] = export_config(ctx_for(INT16_ONLY, preprocess=pre), "axera-pulsar", tmp_path / "p", target_hardware="AX630")
    assert path.name == "yolox-nano_trial17_pulsar.prototxt"
    text = path.read_text()
    assert text.startswith("# Axera Pulsar config.prototxt written by autoq\n# study: yolox-nano\n# trial: 17")
    cls = message_factory.GetMessageClass(_pulsar_descriptor_pool())
    msg = text_format.Parse(text, cls())  # protobuf's own strict parser accepts the file
    assert msg.input_path == "/models/yolox_nano.onnx"
    assert cls.DESCRIPTOR.fields_by_name["target_hardware"].enum_type.values_by_number[msg.target_hardware].name \
        == "TARGET_HARDWARE_AX630"
    items = msg.neuwizard_conf.operator_conf.operator_conf_items
    assert [list(i.selector.op_name) for i in items] == [[NODES[0]], [NODES[4]]]
    dataset = msg.neuwizard_conf.dataset_conf_calibration
    assert dataset.path == "/data/calib_416.tar" and dataset.size == 32
    raw = parse_prototxt(text)
    assert raw["src_input_tensors"] == [{"color_space": ["TENSOR_COLOR_SPACE_RGB"]}]
    assert raw["neuwizard_conf"][0]["operator_conf"][0]["operator_conf_items"][0] == {
        "selector": [{"op_name": [NODES[0]]}],
        "attributes": [{"input_feature_type": ["UINT16"], "weight_type": ["INT8"]}],
    }
    nodes, cal = read_pulsar(path)
    assert nodes == listed(INT16_ONLY)
    assert cal == {"default": Precision.INT8, "granularity": "per_tensor", "observer_method": "OBSVR_METHOD_MSE_CLIPPING",
                   "path": "/data/calib_416.tar", "size": 32, "batch_size": 1}


def test_pulsar_float_nodes(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"float nodes node: with#odd 'chars'; .*float_as_uint16"):
        export_config(ctx_for(), "axera-pulsar", tmp_path / "x.prototxt")
    assert not (tmp_path / "x.prototxt").exists()
    [path] = export_config(ctx_for(), "axera-pulsar", tmp_path / "x.prototxt", float_as_uint16=True)
    assert "# autoq: float node, written as UINT16" in path.read_text()
    nodes, cal = read_pulsar(path)
    assert nodes == {NODES[1]: Precision.INT16, NODES[2]: Precision.INT16, NODES[3]: Precision.INT16}
    assert cal["granularity"] == "per_channel"
    cfg = QuantConfig(default="int16", nodes={NODES[0]: "int8"})  # whole model UINT16 + one UINT8 item
    [path] = export_config(ctx_for(cfg), "axera-pulsar", tmp_path / "d.prototxt")
    nodes, cal = read_pulsar(path)
    assert nodes == {NODES[0]: Precision.INT8} and cal["default"] is Precision.INT16


# --------------------------------------------------------------------------- pulsar2


def test_pulsar2_golden_and_round_trip(tmp_path: Path) -> None:
    pre = Preprocess(color="rgb", mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
    path, side = export_config(ctx_for(preprocess=pre), "axera-pulsar2", tmp_path / "p2")
    data = json.loads(path.read_text())
    assert (data["model_type"], data["npu_mode"], data["target_hardware"]) == ("ONNX", "NPU1", "AX650")
    assert data["input"] == "/models/yolox_nano.onnx" and data["output_name"] == "yolox-nano_trial17.axmodel"
    quant = data["quant"]
    assert quant["calibration_method"] == "Percentile"
    assert quant["input_configs"] == [{
        "tensor_name": "DEFAULT", "calibration_dataset": "/data/calib_416.tar", "calibration_format": "Image",
        "calibration_size": 32, "calibration_mean": [123.675, 116.28, 103.53], "calibration_std": [58.395, 57.12, 57.375],
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
    cfg = QuantConfig(default="float", nodes={NODES[0]: "int8"}, calibration=Calibration(method="entropy"))
    path, _ = export_config(ctx_for(cfg), "axera-pulsar2", tmp_path / "f.json")
    nodes, cal = read_pulsar2(path)
    assert nodes == {NODES[0]: Precision.INT8}
    assert cal["default"] is Precision.FLOAT and cal["calibration_method"] == "KL"


# --------------------------------------------------------------------------- vastai


def test_vastai_golden_and_round_trip(tmp_path: Path) -> None:
    [path] = export_config(ctx_for(FLOAT_ONLY), "vastai", tmp_path / "v")
    data = yaml.safe_load(path.read_text())
    assert data["name"] == "yolox-nano_trial17"
    assert data["frontend"] == {"shape": {"images": [1, 3, 416, 416]}, "type": "onnx",
                                "checkpoint": "/models/yolox_nano.onnx", "dtype": "fp32"}
    assert data["backend"] == {"type": "tvm_vacc", "dtype": "int8", "quantize": {
        "calibrate_mode": "max", "quantize_per_channel": False, "exclude_layers": [1, 2]}}
    assert data["dataset"]["path"] == "/data/calib_416"
    assert "ONNX graph order" in path.read_text().split("name:")[0]  # the indexing assumption, in the header
    expected = listed(FLOAT_ONLY)
    assert read_vastai(path)[0] == expected  # names from the '# autoq-layer' comments
    nodes, cal = read_vastai(path, node_names=NODES)
    assert nodes == expected
    assert cal == {"default": Precision.INT8, "calibrate_mode": "max", "granularity": "per_tensor",
                   "exclude_layers": [1, 2]}


def test_vastai_refuses_int16(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"vamc has no int16: nodes /head/cls_convs.0/Conv, /head/reg_preds.0/Conv"):
        export_config(ctx_for(), "vastai", tmp_path / "v.yaml")
    assert not (tmp_path / "v.yaml").exists()


# --------------------------------------------------------------------------- ascend


def test_ascend_golden_and_round_trip(tmp_path: Path) -> None:
    amct, keep, side = export_config(ctx_for(), "ascend", tmp_path / "a")
    assert keep.name == "yolox-nano_trial17_keep_dtype.txt"
    data = json.loads(amct.read_text())
    assert {k: data[k] for k in ("version", "batch_num", "activation_offset", "do_fusion", "skip_fusion_layers")} == {
        "version": 1, "batch_num": 1, "activation_offset": True, "do_fusion": True, "skip_fusion_layers": []}
    assert data[NODES[2]] == {"quant_enable": False}
    assert data[NODES[1]]["activation_quant_params"]["num_bits"] == 16
    assert data[NODES[0]]["activation_quant_params"]["num_bits"] == 8
    assert data[NODES[0]]["weight_quant_params"] == {"wts_algo": "arq_quantize", "channel_wise": True, "num_bits": 8}
    assert read_keep_dtype(keep) == [NODES[2]]
    nodes, cal = read_ascend(amct)
    assert nodes == MIXED.assignment(NODES)  # AMCT lists every quantizable node
    assert cal == {"granularity": "per_channel", "max_percentile": pytest.approx(0.9999), "batch_num": 1,
                   "activation_offset": True}
    assert "trial: 17" in side.read_text()
    ctx = dataclasses.replace(ctx_for(), node_ops={n: "Conv" for n in NODES} | {NODES[3]: "Add"})
    with pytest.raises(ExportError, match=r"nodes /head/reg_preds.0/Conv are other op types"):
        export_config(ctx, "ascend", tmp_path / "b")


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
    [path] = export_config(ctx_for(), "tensorrt", tmp_path / "t", calib_cache="calib.cache")
    text = path.read_text()
    assert text.startswith("#!/bin/sh\n# trtexec command written by autoq")
    assert "TensorRT has no int16: int16 nodes are built fp16" in text
    words = shlex.split(text.replace("\\\n", " "), comments=True)
    assert words[words.index("trtexec"):] == [
        "trtexec", "--onnx=/models/yolox_nano.onnx", "--int8", "--fp16", "--precisionConstraints=obey",
        f"--layerPrecisions={NODES[1]}:fp16,{NODES[2]}:fp32,{NODES[3]}:fp16,*:int8",
        "--saveEngine=yolox-nano_trial17.engine", "--calib=calib.cache",
    ]
    nodes, cal = read_tensorrt(path)
    assert nodes == listed(MIXED)
    assert cal == {"default": Precision.INT8, "calib": "calib.cache", "precision_constraints": "obey",
                   "onnx": "/models/yolox_nano.onnx", "flags": ["int8", "fp16"]}


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
    import autoq.export.run as run
    import autoq.trial_record as record

    study = optuna.create_study(study_name="yolox-nano", directions=["minimize", "minimize"])
    configs = [MIXED, FLOAT_ONLY, QuantConfig.uniform("int8"), QuantConfig.uniform("float")]
    values = [(0.01, 9.0), (0.02, 8.0), (0.05, 5.0), (0.06, 20.0)]  # the last is dominated
    for cfg, v in zip(configs, values):
        study.add_trial(optuna.trial.create_trial(values=list(v), user_attrs={record.CONFIG_ATTR: cfg.to_dict()}))
    monkeypatch.setattr(run, "load_study", lambda project: study)
    monkeypatch.setattr(run, "trial_context", lambda project, s, t: dataclasses.replace(
        ctx_for(record.trial_config(t)), trial=t.number, map_drop=t.values[0], latency_ms=t.values[1]))

    files = run.export_pareto(object(), fmt="tensorrt", out_dir=tmp_path / "front")
    assert [p.relative_to(tmp_path / "front").as_posix() for p in files] == [
        "trial_2/yolox-nano_trial2_trtexec.sh", "trial_1/yolox-nano_trial1_trtexec.sh",
        "trial_0/yolox-nano_trial0_trtexec.sh"]  # by latency; trial 3 is dominated
    assert read_tensorrt(files[1])[0] == listed(FLOAT_ONLY)
    said: list[str] = []
    files = run.export_pareto(object(), fmt="vastai", out_dir=tmp_path / "v", log=said.append)
    assert sorted(p.parent.name for p in files) == ["trial_1", "trial_2"]  # trial 0 has int16 nodes
    assert len(said) == 1 and "trial 0" in said[0] and "vamc has no int16" in said[0]
    assert not (tmp_path / "v" / "trial_0").exists()


def test_export_pareto_fails_when_no_front_trial_fits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    optuna = pytest.importorskip("optuna")
    import autoq.export.run as run
    import autoq.trial_record as record

    study = optuna.create_study(study_name="m", directions=["minimize", "minimize"])
    study.add_trial(optuna.trial.create_trial(values=[0.0, 1.0], user_attrs={record.CONFIG_ATTR: MIXED.to_dict()}))
    monkeypatch.setattr(run, "load_study", lambda project: study)
    monkeypatch.setattr(run, "trial_context", lambda project, s, t: ctx_for(record.trial_config(t)))
    with pytest.raises(ExportError, match=r"no Pareto trial can be written as vastai: trial 0: vamc has no int16"):
        run.export_pareto(object(), fmt="vastai", out_dir=tmp_path / "v", log=lambda _m: None)
