"""Horizon hb_mapper bundle: round trip, march rules, preprocessing, calibration tensors, opset, checker."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from checkers.horizon import check
from onnx import TensorProto, helper, numpy_helper

from autoq.data.preprocess import Preprocess, to_input
from autoq.errors import ConfigError, ExportError
from autoq.export import EXPORTERS, ExportContext, export_config
from autoq.export.horizon import read_horizon
from autoq.plan import Calibration, Precision, QuantConfig

NODES = ("/backbone/stem/Conv", "/head/cls_convs.0/Conv", "node: with#odd 'chars'", "/head/reg_preds.0/Conv", "conv_4")


def make_ctx(config: QuantConfig, *, target: str = "horizon-j5", preprocess: Preprocess | None = None) -> ExportContext:
    return ExportContext(
        config=config,
        model_path=Path("/models/yolox_nano.onnx"),
        input_name="images",
        input_shape=(1, 3, 416, 416),
        node_names=NODES,
        node_ops={n: "Conv" for n in NODES} | {"/Reshape": "Reshape"},
        preprocess=preprocess or Preprocess(),
        study="yolox-nano",
        trial=17,
        map_drop=0.0123,
        latency_ms=9.87,
        target=target,
    )


MIXED = QuantConfig(
    calibration=Calibration(granularity="per_channel", method="percentile", percentile=99.99),
    nodes={NODES[1]: "int16", NODES[2]: "float", NODES[3]: "int16"},
)


H, W = 16, 24  # the bundle tests' input size


def tiny_model(path: Path, *, opset: int = 13, extra_op: str | None = None) -> Path:
    """Conv chain whose node names are NODES, then an opset-13 Split (split as an input) + Concat;
    ``extra_op`` appends a node with no exact opset-11 form."""
    rng = np.random.default_rng(0)
    inits, nodes, prev = [], [], "images"
    for i, name in enumerate(NODES):
        w = f"w{i}"
        inits.append(numpy_helper.from_array(rng.normal(0, 0.1, (4, 3 if i == 0 else 4, 3, 3)).astype(np.float32), w))
        nodes.append(helper.make_node("Conv", [prev, w], [f"c{i}"], name=name, pads=[1, 1, 1, 1]))
        prev = f"c{i}"
    inits.append(numpy_helper.from_array(np.array([2, 2], np.int64), "split_sizes"))
    nodes.append(helper.make_node("Split", [prev, "split_sizes"], ["s0", "s1"], name="/split", axis=1))
    nodes.append(helper.make_node("Sigmoid", ["s0"], ["g0"], name="/sig"))
    nodes.append(helper.make_node("Concat", ["g0", "s1"], ["out"], name="/cat", axis=1))
    out = "out"
    if extra_op:
        nodes.append(helper.make_node(extra_op, ["out"], ["out2"], name="/extra"))
        out = "out2"
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 4, H, W])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7 if opset <= 13 else 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def calib_images(n: int = 3) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (n, H, W, 3), dtype=np.uint8)


def bundle_ctx(tmp_path: Path, config: QuantConfig = MIXED, *, target: str = "horizon-j5",
               preprocess: Preprocess | None = None, **model_kw) -> ExportContext:
    """A context whose model and calibration images exist, as ``autoq export`` builds it."""
    model = tiny_model(tmp_path / f"src_{model_kw.get('opset', 13)}_{model_kw.get('extra_op')}.onnx", **model_kw)
    images = calib_images()
    return dataclasses.replace(
        make_ctx(config, target=target, preprocess=preprocess),
        model_path=model, input_shape=(1, 3, H, W), calib_images=lambda: images,
        node_ops={n.name: n.op_type for n in onnx.load(str(model)).graph.node},
    )


def test_bundle_layout_and_checker(tmp_path: Path) -> None:
    files = export_config(bundle_ctx(tmp_path), "horizon", tmp_path / "b")
    folder = tmp_path / "b"
    yaml_path = files[0]
    assert yaml_path == folder / "yolox-nano_trial17_hb_mapper.yaml"
    assert (folder / "model.onnx") in files and (folder / "run.sh") in files
    assert check(folder) == []
    data = yaml.safe_load(yaml_path.read_text())
    assert list(data) == ["model_parameters", "input_parameters", "calibration_parameters", "compiler_parameters"]
    model = data["model_parameters"]
    assert model["march"] == "bayes" and model["onnx_model"] == "./model.onnx"
    assert model["output_model_file_prefix"] == "yolox-nano_trial17"
    assert model["node_info"] == {
        NODES[1]: {"ON": "BPU", "InputType": "int16", "OutputType": "int16"},
        NODES[2]: {"ON": "CPU"},
        NODES[3]: {"ON": "BPU", "InputType": "int16", "OutputType": "int16"},
    }
    inputs = data["input_parameters"]
    assert inputs["input_shape"] == f"1x3x{H}x{W}"
    assert inputs["input_type_train"] == "bgr" and inputs["input_type_rt"] == "bgr"
    assert inputs["input_layout_train"] == "NCHW" and inputs["input_layout_rt"] == "NCHW"
    cal = data["calibration_parameters"]
    assert cal == {"cal_data_dir": "./calibration_data_bgr_f32", "cal_data_type": "float32",
                   "calibration_type": "max", "max_percentile": pytest.approx(0.9999), "per_channel": False}
    assert data["compiler_parameters"] == {"compile_mode": "latency", "optimize_level": "O3"}
    run = (folder / "run.sh").read_text()
    assert "hb_mapper makertbin --config yolox-nano_trial17_hb_mapper.yaml --model-type onnx" in run
    assert os.access(folder / "run.sh", os.X_OK)


def test_round_trip_and_weight_granularity_in_header(tmp_path: Path) -> None:
    export_config(bundle_ctx(tmp_path), "horizon", tmp_path / "b")
    nodes, cal = read_horizon(tmp_path / "b")  # the folder or the yaml
    assert nodes == {n: p for n, p in MIXED.assignment(NODES).items() if p is not Precision.INT8}
    assert cal == {"granularity": "per_channel", "activation_per_channel": False, "calibration_type": "max",
                   "max_percentile": pytest.approx(0.9999)}
    text = (tmp_path / "b" / "yolox-nano_trial17_hb_mapper.yaml").read_text()
    assert "per_channel: False; it is hb_mapper's per-channel activation calibration" in text


@pytest.mark.parametrize("pre", [Preprocess(), Preprocess(color="rgb", mean=(123.675, 116.28, 103.53),
                                                          std=(58.395, 57.12, 57.375))])
def test_calibration_tensors_read_as_hb_mapper_reads_them(tmp_path: Path, pre: Preprocess) -> None:
    """float32 tofile of input_shape, input_layout_train NCHW, input_type_train colour, before norm;
    hb_mapper's (x - mean_value) * scale_value then gives exactly autoq's model input."""
    ctx = bundle_ctx(tmp_path, preprocess=pre)
    export_config(ctx, "horizon", tmp_path / "b")
    data = yaml.safe_load((tmp_path / "b" / "yolox-nano_trial17_hb_mapper.yaml").read_text())
    cal = data["calibration_parameters"]
    files = sorted((tmp_path / "b" / cal["cal_data_dir"]).iterdir())
    assert [f.name for f in files] == [f"{k:04d}.{pre.color}chw" for k in range(3)]
    raw = np.stack([np.fromfile(f, dtype=np.float32).reshape(1, 3, H, W)[0] for f in files])
    images = ctx.calib_images()
    assert np.array_equal(raw, to_input(images, dataclasses.replace(pre, mean=(0, 0, 0), std=(1, 1, 1))))
    inputs = data["input_parameters"]
    mean = np.array([float(v) for v in str(inputs.get("mean_value", "0 0 0")).split()], np.float32)
    scale = np.array([float(v) for v in str(inputs.get("scale_value", "1 1 1")).split()], np.float32)
    normed = (raw - mean.reshape(1, -1, 1, 1)) * scale.reshape(1, -1, 1, 1)
    np.testing.assert_allclose(normed, to_input(images, pre), rtol=1e-5, atol=1e-5)
    assert check(tmp_path / "b") == []


def test_uint8_calibration(tmp_path: Path) -> None:
    files = export_config(bundle_ctx(tmp_path), "horizon", tmp_path / "b", cal_data_type="uint8")
    tensors = [f for f in files if f.suffix == ".bgrchw"]
    assert tensors[0].parent.name == "calibration_data_bgr" and tensors[0].stat().st_size == 3 * H * W
    assert check(tmp_path / "b") == []


def test_model_written_at_opset_11_with_same_names(tmp_path: Path) -> None:
    ctx = bundle_ctx(tmp_path)
    export_config(ctx, "horizon", tmp_path / "b")
    model = onnx.load(str(tmp_path / "b" / "model.onnx"))
    src = onnx.load(str(ctx.model_path))
    assert model.opset_import[0].version == 11 and model.ir_version <= 7
    assert [n.name for n in model.graph.node] == [n.name for n in src.graph.node]
    assert "model.onnx is ONNX opset 11; converted from opset 13" in (tmp_path / "b" / "yolox-nano_trial17_hb_mapper.yaml").read_text()


def test_model_kept_when_no_exact_opset_11_form(tmp_path: Path) -> None:
    export_config(bundle_ctx(tmp_path, opset=14, extra_op="HardSwish"), "horizon", tmp_path / "b")
    model = onnx.load(str(tmp_path / "b" / "model.onnx"))
    assert model.opset_import[0].version == 14
    text = (tmp_path / "b" / "yolox-nano_trial17_hb_mapper.yaml").read_text()
    assert "kept at opset 14: no exact opset-11 form known for HardSwish" in text
    assert check(tmp_path / "b") == ["onnx_model: opset 14 is not accepted (hb_mapper: opset 10 or 11) [RD]",
                                     "onnx_model: ir_version 8 > 7 [RD]"]


def test_march_from_target_and_option(tmp_path: Path) -> None:
    cfg = QuantConfig.uniform("int8")
    for target, march in [("horizon-x5", "bayes-e"), ("generic-npu", "bayes"), ("horizon-x3", "bernoulli2")]:
        [p, *_] = export_config(bundle_ctx(tmp_path, cfg, target=target), "horizon", tmp_path / target)
        data = yaml.safe_load(p.read_text())
        assert data["model_parameters"]["march"] == march
        assert "node_info" not in data["model_parameters"]  # all int8: nothing to list
        assert check(tmp_path / target) == []
    [p, *_] = export_config(bundle_ctx(tmp_path, cfg), "horizon", tmp_path / "opt", march="bayes-e",
                            input_type_rt="nv12")
    data = yaml.safe_load(p.read_text())
    assert data["model_parameters"]["march"] == "bayes-e"
    assert data["input_parameters"]["input_type_rt"] == "nv12" and "input_layout_rt" not in data["input_parameters"]
    assert check(tmp_path / "opt", target="horizon-x5") == []
    assert check(tmp_path / "opt", target="horizon-j5") == [
        "model_parameters.march: 'bayes-e' does not match target horizon-j5 (bayes)"]


def test_bernoulli2_rejects_int16(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"bernoulli2 \(X3\) has no int16: nodes /head/cls_convs.0/Conv, "
                                          r"/head/reg_preds.0/Conv; use target horizon-x3"):
        export_config(bundle_ctx(tmp_path, target="horizon-x3"), "horizon", tmp_path / "x3")
    assert not (tmp_path / "x3").exists()


def test_bernoulli2_lists_float_nodes_in_run_on_cpu(tmp_path: Path) -> None:
    cfg = QuantConfig(nodes={NODES[0]: "float", NODES[2]: "float"})
    [p, *_] = export_config(bundle_ctx(tmp_path, cfg, target="horizon-x3"), "horizon", tmp_path / "x3")
    data = yaml.safe_load(p.read_text())
    assert data["model_parameters"]["march"] == "bernoulli2"
    assert "node_info" not in data["model_parameters"]
    assert data["calibration_parameters"]["run_on_cpu"] == f"{NODES[0]};{NODES[2]}"
    nodes, cal = read_horizon(p)
    assert nodes == {NODES[0]: Precision.FLOAT, NODES[2]: Precision.FLOAT}
    assert cal == {"granularity": "per_tensor", "activation_per_channel": False, "calibration_type": "max",
                   "max_percentile": None}
    assert check(tmp_path / "x3") == []


def test_header_comment(tmp_path: Path) -> None:
    [p, *_] = export_config(bundle_ctx(tmp_path), "horizon", tmp_path / "b")
    header = p.read_text().split("model_parameters:")[0]
    assert all(line.startswith("#") for line in header.strip().splitlines())
    for needle in ("study: yolox-nano", "trial: 17", "predicted mAP drop: 1.23 pt", "predicted latency: 9.87 ms",
                   "target: horizon-j5", "march: bayes", "assumptions:", "2 int16, 1 float", "run next: ./run.sh"):
        assert needle in header, needle


def test_norm_types(tmp_path: Path) -> None:
    cases = [(Preprocess(), {"norm_type": "no_preprocess"}),
             (Preprocess(std=(255.0, 255.0, 255.0)), {"norm_type": "data_scale"}),
             (Preprocess(mean=(1.0, 2.0, 3.0)), {"norm_type": "data_mean", "mean_value": "1 2 3"})]
    for k, (pre, expected) in enumerate(cases):
        [p, *_] = export_config(bundle_ctx(tmp_path, preprocess=pre), "horizon", tmp_path / f"n{k}")
        inputs = yaml.safe_load(p.read_text())["input_parameters"]
        assert {key: inputs[key] for key in expected} == expected
        unused = {"no_preprocess": {"mean_value", "scale_value"}, "data_scale": {"mean_value"},
                  "data_mean": {"scale_value"}}[expected["norm_type"]]
        assert not unused & set(inputs)
        assert check(tmp_path / f"n{k}") == []
    [p, *_] = export_config(bundle_ctx(tmp_path, preprocess=cases[1][0]), "horizon", tmp_path / "y")
    scale = [float(v) for v in yaml.safe_load(p.read_text())["input_parameters"]["scale_value"].split()]
    assert scale == pytest.approx([1 / 255] * 3)


def test_calibration_method_mapping(tmp_path: Path) -> None:
    for k, (method, expected) in enumerate([("minmax", "max"), ("kl", "kl"), ("mse", "kl")]):
        cfg = QuantConfig(calibration=Calibration(method=method))
        [p, *_] = export_config(bundle_ctx(tmp_path, cfg), "horizon", tmp_path / f"m{k}")
        line = next(ln for ln in p.read_text().splitlines() if ln.startswith("  calibration_type:"))
        assert line.split("#")[0].strip() == f"calibration_type: {expected}"
        assert ("nearest documented equivalent" in line) == (method == "mse")
        assert read_horizon(p)[1]["calibration_type"] == expected
        assert check(tmp_path / f"m{k}") == []


def test_errors_are_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no option 'marhc'.*march"):
        export_config(bundle_ctx(tmp_path), "horizon", tmp_path / "x", marhc="bayes")
    with pytest.raises(ConfigError, match="march must be one of"):
        export_config(bundle_ctx(tmp_path), "horizon", tmp_path / "x", march="nash")
    with pytest.raises(ExportError, match="cannot be read"):
        export_config(make_ctx(MIXED), "horizon", tmp_path / "x")
    with pytest.raises(ExportError, match="export from a project"):
        export_config(dataclasses.replace(bundle_ctx(tmp_path), calib_images=None), "horizon", tmp_path / "x")
    (tmp_path / "file").write_text("")
    with pytest.raises(ExportError, match="pass -o DIR"):
        export_config(bundle_ctx(tmp_path), "horizon", tmp_path / "file")


def test_checker_catches_broken_bundles(tmp_path: Path) -> None:
    export_config(bundle_ctx(tmp_path), "horizon", tmp_path / "b")
    folder = tmp_path / "b"
    cfg = folder / "yolox-nano_trial17_hb_mapper.yaml"
    data = yaml.safe_load(cfg.read_text())
    data["model_parameters"]["node_info"]["ghost"] = {"ON": "GPU"}
    data["calibration_parameters"]["calibration_type"] = "mse"
    data["calibration_parameters"]["run_on_cpu"] = ["a", "b"]
    data["input_parameters"]["input_shape"] = "1x3x8x8"
    cfg.write_text(yaml.safe_dump(data))
    next((folder / "calibration_data_bgr_f32").iterdir()).write_bytes(b"\0" * 10)
    problems = check(folder)
    for needle in ("node_info: 'ghost' is not a node", "ON: 'GPU' is not BPU or CPU", "calibration_type: 'mse'",
                   "run_on_cpu: multiple values are one ';'-joined string", "input_shape: 1x3x8x8 does not match",
                   "10 bytes"):
        assert any(needle in p for p in problems), (needle, problems)


def test_overrides_outside_the_model_are_refused(tmp_path: Path) -> None:
    cfg = QuantConfig(nodes={"not_in_model": "int16"})
    with pytest.raises(ExportError, match="does not have: not_in_model"):
        export_config(bundle_ctx(tmp_path, cfg), "horizon", tmp_path / "x")


def test_unknown_format_lists_known(tmp_path: Path) -> None:
    assert "horizon" in EXPORTERS
    with pytest.raises(ConfigError, match=r"unknown export format 'openvino'; known: .*horizon"):
        export_config(make_ctx(MIXED), "openvino", tmp_path / "x.yaml")
