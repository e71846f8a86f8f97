"""Axera bundles (axera-pulsar, axera-pulsar2): contents, calibration data as the tools read it, strict checkers."""

from __future__ import annotations

import io
import json
import os
import shlex
import tarfile
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from checkers import pulsar as pulsar_checker
from checkers import pulsar2 as pulsar2_checker
from onnx import TensorProto, helper, numpy_helper

from autoq.data.preprocess import Preprocess, to_input
from autoq.errors import ConfigError, ExportError
from autoq.export import ExportContext, export_config
from autoq.export.pulsar import read_pulsar
from autoq.export.pulsar2 import read_pulsar2
from autoq.plan import Calibration, Precision, QuantConfig

H = W = 16
CONV0, SIG, MUL, CONV1, RESHAPE = "/stem/Conv", "/stem/act/Sigmoid", "/stem/act/Mul", "/head/Conv", "/head/Reshape"
NODES = (CONV0, SIG, MUL, CONV1, RESHAPE)


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w0 = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w0")
    w1 = numpy_helper.from_array(rng.standard_normal((2, 4, 1, 1)).astype(np.float32), "w1")
    shape = numpy_helper.from_array(np.array([1, 2, H * W], np.int64), "shape")
    nodes = [
        helper.make_node("Conv", ["images", "w0"], ["/stem/Conv_output_0"], name=CONV0, pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["/stem/Conv_output_0"], ["/stem/act/Sigmoid_output_0"], name=SIG),
        helper.make_node("Mul", ["/stem/Conv_output_0", "/stem/act/Sigmoid_output_0"], ["/stem/act/Mul_output_0"],
                         name=MUL),
        helper.make_node("Conv", ["/stem/act/Mul_output_0", "w1"], ["/head/Conv_output_0"], name=CONV1),
        helper.make_node("Reshape", ["/head/Conv_output_0", "shape"], ["output"], name=RESHAPE),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 2, H * W])],
                              initializer=[w0, w1, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model


IMAGES = np.random.default_rng(1).integers(0, 256, (3, H, W, 3), dtype=np.uint8)
PRE = Preprocess(color="rgb", mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
MIXED = QuantConfig(calibration=Calibration(granularity="per_channel", method="percentile", percentile=99.99),
                    nodes={CONV1: "int16", SIG: "float", MUL: "float", RESHAPE: "int16"})


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "tiny.onnx"
    path.parent.mkdir()
    onnx.save(_model(), path)
    return path


def ctx_for(config: QuantConfig, model_path: Path, pre: Preprocess = PRE) -> ExportContext:
    return ExportContext(
        config=config, model_path=model_path, input_name="images", input_shape=(1, 3, H, W), node_names=NODES,
        node_ops={CONV0: "Conv", SIG: "Sigmoid", MUL: "Mul", CONV1: "Conv", RESHAPE: "Reshape"}, preprocess=pre,
        study="tiny", trial=3, map_drop=0.01, latency_ms=1.5, target="axera-ax650", calib_images=lambda: IMAGES,
    )


def _members(tar_path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(tar_path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def _read_as_image_tool(tar_path: Path, color: str, mean, std) -> np.ndarray:
    """What an Image-format loader does: decode (OpenCV, BGR), convert to the model's colour order,
    resize to the input size (a no-op here), normalise with mean/std, NCHW float32."""
    out = []
    for _, raw in _members(tar_path):
        img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
        if color == "rgb":
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        img = cv2.resize(img, (W, H), interpolation=cv2.INTER_LINEAR)
        x = (img.astype(np.float32) - np.float32(mean)) / np.float32(std)
        out.append(x.transpose(2, 0, 1))
    return np.stack(out)


# --------------------------------------------------------------------------- pulsar2


def test_pulsar2_bundle_passes_checker_and_calibration_matches_autoq(tmp_path: Path, model_path: Path) -> None:
    files = export_config(ctx_for(MIXED, model_path), "axera-pulsar2", tmp_path / "b")
    folder = tmp_path / "b"
    assert [f.name for f in files] == ["tiny_trial3_pulsar2.json", "tiny_trial3_pulsar2.json.autoq.txt", "model.onnx",
                                       "calibration.tar", "run.sh"]
    assert pulsar2_checker.check(folder) == []
    data = json.loads(files[0].read_text())
    assert data["input"] == "model.onnx" and data["onnx_opt"] == {"disable_onnx_optimization": True}
    quant = data["quant"]
    # Reshape is not listed (no effect); FP32 only on Sigmoid/Mul; int8 is the default
    assert quant["layer_configs"] == [{"layer_name": SIG, "data_type": "FP32"}, {"layer_name": MUL, "data_type": "FP32"},
                                      {"layer_name": CONV1, "data_type": "U16"}]
    assert quant["input_configs"] == [{
        "tensor_name": "images", "calibration_dataset": "calibration.tar", "calibration_format": "Image",
        "calibration_size": 3, "calibration_mean": list(PRE.mean), "calibration_std": list(PRE.std)}]
    assert data["input_processors"][0]["tensor_format"] == "RGB"
    # the tool's Image pipeline on the bundled tar gives exactly autoq's model input
    got = _read_as_image_tool(folder / "calibration.tar", "rgb", PRE.mean, PRE.std)
    np.testing.assert_allclose(got, to_input(IMAGES, PRE), rtol=0, atol=1e-5)
    run = (folder / "run.sh").read_text().splitlines()
    assert os.access(folder / "run.sh", os.X_OK)
    assert shlex.split(run[-1]) == ["pulsar2", "build", "--input", "model.onnx", "--config", "tiny_trial3_pulsar2.json",
                                    "--output_dir", "output", "--output_name", "tiny_trial3.axmodel",
                                    "--target_hardware", "AX650"]
    side = files[1].read_text()
    assert "Reshape/Transpose" in side and "disable_onnx_optimization" in side and "Percentile" in side
    nodes, cal = read_pulsar2(files[0])
    assert nodes == {SIG: Precision.FLOAT, MUL: Precision.FLOAT, CONV1: Precision.INT16}
    assert cal["calibration_dataset"] == "calibration.tar" and cal["default"] is Precision.INT8


def test_pulsar2_float_conv_is_refused_or_written_u16(tmp_path: Path, model_path: Path) -> None:
    cfg = QuantConfig(nodes={CONV0: "float", SIG: "float"})
    with pytest.raises(ExportError, match=r"float Conv nodes /stem/Conv; .*float_conv=U16"):
        export_config(ctx_for(cfg, model_path), "axera-pulsar2", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    files = export_config(ctx_for(cfg, model_path), "axera-pulsar2", tmp_path / "y", float_conv="U16")
    assert pulsar2_checker.check(tmp_path / "y") == []
    items = json.loads(files[0].read_text())["quant"]["layer_configs"]
    assert items == [{"layer_name": CONV0, "data_type": "U16"}, {"layer_name": SIG, "data_type": "FP32"}]
    with pytest.raises(ConfigError, match="float_conv must be one of refuse, U16"):
        export_config(ctx_for(cfg, model_path), "axera-pulsar2", tmp_path / "z", float_conv="FP32")


def test_pulsar2_float_default_has_no_whole_graph_fp32(tmp_path: Path, model_path: Path) -> None:
    cfg = QuantConfig(default="float", nodes={CONV1: "int8"})
    files = export_config(ctx_for(cfg, model_path), "axera-pulsar2", tmp_path / "f", float_conv="U16")
    assert pulsar2_checker.check(tmp_path / "f") == []
    items = json.loads(files[0].read_text())["quant"]["layer_configs"]
    assert all("layer_name" in i for i in items)  # node by node, no DEFAULT item
    assert items == [{"layer_name": CONV0, "data_type": "U16"}, {"layer_name": SIG, "data_type": "FP32"},
                     {"layer_name": MUL, "data_type": "FP32"}]


def test_pulsar2_int16_default(tmp_path: Path, model_path: Path) -> None:
    cfg = QuantConfig(default="int16", nodes={CONV0: "int8", RESHAPE: "int8"})
    files = export_config(ctx_for(cfg, model_path), "axera-pulsar2", tmp_path / "d")
    assert pulsar2_checker.check(tmp_path / "d") == []
    items = json.loads(files[0].read_text())["quant"]["layer_configs"]
    assert items == [{"start_tensor_names": ["DEFAULT"], "end_tensor_names": ["DEFAULT"], "data_type": "U16"},
                     {"layer_name": CONV0, "data_type": "U8"}]
    nodes, cal = read_pulsar2(files[0])
    assert nodes == {CONV0: Precision.INT8} and cal["default"] is Precision.INT16


def test_pulsar2_numpy_calibration_is_autoq_input(tmp_path: Path, model_path: Path) -> None:
    files = export_config(ctx_for(QuantConfig(), model_path), "axera-pulsar2", tmp_path / "n",
                          calibration_format="Numpy", calibration_size=2)
    assert pulsar2_checker.check(tmp_path / "n") == []
    data = json.loads(files[0].read_text())
    first = data["quant"]["input_configs"][0]
    assert first["calibration_format"] == "Numpy" and first["calibration_size"] == 2
    assert "calibration_mean" not in first and data["input_processors"][0]["mean"] == list(PRE.mean)
    assert "layer_configs" not in data["quant"] and "onnx_opt" not in data
    arrays = [np.load(io.BytesIO(raw)) for _, raw in _members(tmp_path / "n" / "calibration.tar")]
    assert all(a.shape == (1, 3, H, W) and a.dtype == np.float32 for a in arrays)
    np.testing.assert_array_equal(np.concatenate(arrays), to_input(IMAGES, PRE))


def test_pulsar2_needs_calibration_images(tmp_path: Path, model_path: Path) -> None:
    import dataclasses

    ctx = dataclasses.replace(ctx_for(QuantConfig(), model_path), calib_images=None)
    with pytest.raises(ExportError, match="export from a project"):
        export_config(ctx, "axera-pulsar2", tmp_path / "c")
    with pytest.raises(ConfigError, match="npu_mode must be one of NPU1, NPU2, got 'NPU3'"):
        export_config(ctx_for(QuantConfig(), model_path), "axera-pulsar2", tmp_path / "c", target_hardware="AX620E",
                      npu_mode="NPU3")


def test_pulsar2_checker_finds_documented_violations(tmp_path: Path, model_path: Path) -> None:
    files = export_config(ctx_for(MIXED, model_path), "axera-pulsar2", tmp_path / "b")
    data = json.loads(files[0].read_text())
    data["quant"]["layer_configs"] += [
        {"layer_name": CONV0, "data_type": "FP32"},
        {"layer_name": "not_there", "data_type": "U16"},
        {"layer_name": RESHAPE, "data_type": "U16"},
        {"layer_name": SIG, "op_type": "Sigmoid", "data_type": "U16"},
        {"layer_name": MUL, "data_type": "U16", "output_data_type": "FP32"},
        {"start_tensor_names": ["DEFAULT"], "end_tensor_names": ["DEFAULT"], "data_type": "FP32"},
    ]
    data["quant"]["input_configs"][0]["calibration_size"] = 10
    data["quant"]["input_configs"][0]["tensor_name"] = "input"
    data["quant"]["bogus"] = 1
    data["npu_mode"] = "NPU4"
    files[0].write_text(json.dumps(data))
    found = "\n".join(pulsar2_checker.check(tmp_path / "b"))
    for rule in ("R1 unknown key quant.bogus", "R1 npu_mode 'NPU4'", "R4 quant.layer_configs[3] layer '/stem/Conv'",
                 "R7 quant.layer_configs[4] layer 'not_there'", "R6 quant.layer_configs[5]",
                 "R3 quant.layer_configs[6] must choose exactly one", "R5 quant.layer_configs[7]",
                 "R4 a whole-graph FP32 item puts Conv nodes in FP32", "R9 quant.input_configs[0].calibration_size 10",
                 "R8 quant.input_configs[0].tensor_name 'input'"):
        assert rule in found, rule
    # a calibration image of the wrong size
    with tarfile.open(tmp_path / "b" / "calibration.tar", "a") as tar:
        raw = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
        info = tarfile.TarInfo("9999.png")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    assert "member 9999.png is (8, 8, 3)" in "\n".join(pulsar2_checker.check(tmp_path / "b"))


# --------------------------------------------------------------------------- pulsar (AX620A)


def test_pulsar_bundle_passes_checker_and_calibration_matches_autoq(tmp_path: Path, model_path: Path) -> None:
    cfg = QuantConfig(calibration=Calibration(method="mse"), nodes={CONV1: "int16", MUL: "int16"})
    files = export_config(ctx_for(cfg, model_path), "axera-pulsar", tmp_path / "p")
    folder = tmp_path / "p"
    assert [f.name for f in files] == ["tiny_trial3_pulsar.prototxt", "model.onnx", "calibration.tar", "run.sh"]
    assert pulsar_checker.check(folder) == []
    text = files[0].read_text()
    assert 'input_path: "model.onnx"' in text and "input_normalization" in text
    nodes, cal = read_pulsar(files[0])
    # selectors are the nodes' output tensors
    assert nodes == {"/stem/act/Mul_output_0": Precision.INT16, "/head/Conv_output_0": Precision.INT16}
    assert cal["path"] == "calibration.tar" and cal["size"] == 3
    assert cal["observer_method"] == "OBSVR_METHOD_MSE_CLIPPING"
    got = _read_as_image_tool(folder / "calibration.tar", "rgb", PRE.mean, PRE.std)
    np.testing.assert_allclose(got, to_input(IMAGES, PRE), rtol=0, atol=1e-5)
    run = (folder / "run.sh").read_text().splitlines()
    assert shlex.split(run[-1]) == ["pulsar", "build", "--input", "model.onnx", "--output", "tiny_trial3.joint",
                                    "--config", "tiny_trial3_pulsar.prototxt", "--output_config",
                                    "output_config.prototxt", "--target_hardware", "AX620"]
    files = export_config(ctx_for(cfg, model_path), "axera-pulsar", tmp_path / "q", op_name_from="node")
    assert pulsar_checker.check(tmp_path / "q") == []
    assert read_pulsar(files[0])[0] == {MUL: Precision.INT16, CONV1: Precision.INT16}


def test_pulsar_float_nodes_need_float_as_uint16(tmp_path: Path, model_path: Path) -> None:
    with pytest.raises(ExportError, match=r"float nodes /stem/act/Sigmoid, /stem/act/Mul; .*float_as_uint16"):
        export_config(ctx_for(MIXED, model_path), "axera-pulsar", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    files = export_config(ctx_for(MIXED, model_path), "axera-pulsar", tmp_path / "y", float_as_uint16=True)
    assert pulsar_checker.check(tmp_path / "y") == []
    assert "# autoq: float node, written as UINT16" in files[0].read_text()
    cfg = QuantConfig(default="int16", nodes={CONV0: "int8"}, calibration=Calibration(granularity="per_tensor"))
    files = export_config(ctx_for(cfg, model_path, Preprocess(color="bgr")), "axera-pulsar", tmp_path / "d")
    assert pulsar_checker.check(tmp_path / "d") == []
    nodes, cal = read_pulsar(files[0])
    assert nodes == {"/stem/Conv_output_0": Precision.INT8} and cal["default"] is Precision.INT16
    assert "input_normalization" not in files[0].read_text()  # raw pixels: nothing to normalise
    got = _read_as_image_tool(tmp_path / "d" / "calibration.tar", "bgr", (0, 0, 0), (1, 1, 1))
    np.testing.assert_array_equal(got, to_input(IMAGES, Preprocess(color="bgr")))


def test_pulsar_checker_finds_documented_violations(tmp_path: Path, model_path: Path) -> None:
    cfg = QuantConfig(nodes={CONV1: "int16"})
    [path, *_] = export_config(ctx_for(cfg, model_path), "axera-pulsar", tmp_path / "p")
    text = path.read_text()
    path.write_text(text.replace('op_name: "/head/Conv_output_0"', 'op_name: "nope"').replace("size: 3", "size: 7"))
    found = "\n".join(pulsar_checker.check(tmp_path / "p"))
    assert "P3 operator_conf_items[0] op_name 'nope'" in found and "P4 dataset_conf_calibration.size 7" in found
    path.write_text(text.replace("weight_type: INT8", "weight_type: INT4"))
    assert "P3 operator_conf_items[0] 16-bit features go with weight_type INT8" in pulsar_checker.check(tmp_path / "p")
    path.write_text(text + "unknown_field: 1\n")
    assert pulsar_checker.check(tmp_path / "p")[0].startswith("P1 ")
    path.write_text(text.replace("--target_hardware", "--bogus"))
    path.write_text(text)
    (tmp_path / "p" / "run.sh").write_text("#!/bin/sh\npulsar build --config other.prototxt --input model.onnx\n")
    assert any("P7 run.sh --config 'other.prototxt'" in v for v in pulsar_checker.check(tmp_path / "p"))
