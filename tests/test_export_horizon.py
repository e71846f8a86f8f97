"""Horizon hb_mapper export: round trip, march rules, preprocessing, header."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from autoq.errors import ConfigError, ExportError
from autoq.export import EXPORTERS, ExportContext, export_config
from autoq.export.horizon import read_horizon
from autoq.plan import Calibration, Precision, QuantConfig

try:
    from autoq.data.preprocess import Preprocess
except ImportError:  # preprocess.py not there yet: a stand-in with the same fields
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Preprocess:  # type: ignore[no-redef]
        resize: str = "letterbox"
        pad_value: int = 114
        color: str = "bgr"
        mean: tuple = (0.0, 0.0, 0.0)
        std: tuple = (1.0, 1.0, 1.0)


NODES = ("/backbone/stem/Conv", "/head/cls_convs.0/Conv", "node: with#odd 'chars'", "/head/reg_preds.0/Conv", "conv_4")


def make_ctx(config: QuantConfig, *, target: str = "horizon-j5", preprocess: Preprocess | None = None,
             calib_dir: Path | None = Path("/data/calib_416")) -> ExportContext:
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
        calib_dir=calib_dir,
    )


MIXED = QuantConfig(
    calibration=Calibration(granularity="per_channel", method="percentile", percentile=99.99),
    nodes={NODES[1]: "int16", NODES[2]: "float", NODES[3]: "int16"},
)


def test_round_trip_bayes(tmp_path: Path) -> None:
    [path] = export_config(make_ctx(MIXED), "horizon", tmp_path / "sub" / "hb.yaml")
    assert path == tmp_path / "sub" / "hb.yaml" and path.is_file()
    nodes, cal = read_horizon(path)
    expected = {n: p for n, p in MIXED.assignment(NODES).items() if p is not Precision.INT8}
    assert nodes == expected
    assert cal == {"granularity": "per_channel", "calibration_type": "max", "max_percentile": pytest.approx(0.9999)}


def test_bayes_file_layout(tmp_path: Path) -> None:
    [path] = export_config(make_ctx(MIXED), "horizon", tmp_path / "hb.yaml")
    data = yaml.safe_load(path.read_text())
    assert list(data) == ["model_parameters", "input_parameters", "calibration_parameters", "compiler_parameters"]
    model = data["model_parameters"]
    assert model["march"] == "bayes" and model["onnx_model"] == "/models/yolox_nano.onnx"
    assert model["output_model_file_prefix"] == "yolox-nano_trial17"
    assert model["node_info"] == {
        NODES[1]: {"ON": "BPU", "InputType": "int16", "OutputType": "int16"},
        NODES[2]: {"ON": "CPU"},
        NODES[3]: {"ON": "BPU", "InputType": "int16", "OutputType": "int16"},
    }
    inputs = data["input_parameters"]
    assert inputs["input_shape"] == "1x3x416x416"
    assert inputs["input_type_train"] == "bgr" and inputs["input_type_rt"] == "bgr"
    assert inputs["input_layout_train"] == "NCHW" and inputs["input_layout_rt"] == "NCHW"
    cal = data["calibration_parameters"]
    assert cal["cal_data_dir"] == "/data/calib_416" and cal["per_channel"] is True
    assert "run_on_cpu" not in cal
    assert data["compiler_parameters"] == {"compile_mode": "latency", "optimize_level": "O3"}


def test_march_from_target_and_option(tmp_path: Path) -> None:
    cfg = QuantConfig.uniform("int8")
    for target, march in [("horizon-x5", "bayes-e"), ("generic-npu", "bayes"), ("horizon-j5", "bayes")]:
        [p] = export_config(make_ctx(cfg, target=target), "horizon", tmp_path / f"{target}.yaml")
        data = yaml.safe_load(p.read_text())
        assert data["model_parameters"]["march"] == march
        assert "node_info" not in data["model_parameters"]  # all int8: nothing to list
    [p] = export_config(make_ctx(cfg), "horizon", tmp_path / "opt.yaml", march="bayes-e", input_type_rt="nv12")
    data = yaml.safe_load(p.read_text())
    assert data["model_parameters"]["march"] == "bayes-e"
    assert data["input_parameters"]["input_type_rt"] == "nv12" and "input_layout_rt" not in data["input_parameters"]


def test_bernoulli2_rejects_int16(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"bernoulli2 \(X3\) has no int16: nodes /head/cls_convs.0/Conv, "
                                          r"/head/reg_preds.0/Conv; use target horizon-x3"):
        export_config(make_ctx(MIXED, target="horizon-x3"), "horizon", tmp_path / "x3.yaml")
    assert not (tmp_path / "x3.yaml").exists()


def test_bernoulli2_lists_float_nodes_in_run_on_cpu(tmp_path: Path) -> None:
    cfg = QuantConfig(nodes={NODES[0]: "float", NODES[2]: "float"})
    [p] = export_config(make_ctx(cfg, target="horizon-x3"), "horizon", tmp_path / "x3.yaml")
    data = yaml.safe_load(p.read_text())
    assert data["model_parameters"]["march"] == "bernoulli2"
    assert "node_info" not in data["model_parameters"]
    assert data["calibration_parameters"]["run_on_cpu"] == f"{NODES[0]};{NODES[2]}"
    nodes, cal = read_horizon(p)
    assert nodes == {NODES[0]: Precision.FLOAT, NODES[2]: Precision.FLOAT}
    assert cal == {"granularity": "per_tensor", "calibration_type": "max", "max_percentile": None}


def test_header_comment(tmp_path: Path) -> None:
    [p] = export_config(make_ctx(MIXED), "horizon", tmp_path / "hb.yaml")
    text = p.read_text()
    header = text.split("model_parameters:")[0]
    assert all(line.startswith("#") for line in header.strip().splitlines())
    for needle in ("study: yolox-nano", "trial: 17", "predicted mAP drop: 0.0123", "predicted latency: 9.87 ms",
                   "target: horizon-j5", "march: bayes", "assumptions:", "2 int16, 1 float"):
        assert needle in header, needle


def test_raw_input_is_no_preprocess(tmp_path: Path) -> None:
    [p] = export_config(make_ctx(MIXED), "horizon", tmp_path / "hb.yaml")
    inputs = yaml.safe_load(p.read_text())["input_parameters"]
    assert inputs["norm_type"] == "no_preprocess"
    assert "mean_value" not in inputs and "scale_value" not in inputs


def test_mean_std_is_data_mean_and_scale(tmp_path: Path) -> None:
    pre = Preprocess(color="rgb", mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
    [p] = export_config(make_ctx(MIXED, preprocess=pre), "horizon", tmp_path / "hb.yaml")
    inputs = yaml.safe_load(p.read_text())["input_parameters"]
    assert inputs["norm_type"] == "data_mean_and_scale"
    assert inputs["input_type_train"] == "rgb"
    assert [float(v) for v in inputs["mean_value"].split()] == pytest.approx([123.675, 116.28, 103.53])
    assert [float(v) for v in inputs["scale_value"].split()] == pytest.approx([1 / 58.395, 1 / 57.12, 1 / 57.375])
    yolo = Preprocess(std=(255.0, 255.0, 255.0))
    [p] = export_config(make_ctx(MIXED, preprocess=yolo), "horizon", tmp_path / "yolo.yaml")
    inputs = yaml.safe_load(p.read_text())["input_parameters"]
    assert inputs["mean_value"] == "0 0 0"
    assert [float(v) for v in inputs["scale_value"].split()] == pytest.approx([1 / 255] * 3)


def test_calibration_method_mapping_comments(tmp_path: Path) -> None:
    cfg = QuantConfig(calibration=Calibration(method="mse"))
    [p] = export_config(make_ctx(cfg), "horizon", tmp_path / "hb.yaml")
    line = next(l for l in p.read_text().splitlines() if l.startswith("  calibration_type:"))
    assert line.startswith("  calibration_type: default  # nearest equivalent")
    assert read_horizon(p)[1]["calibration_type"] == "default"


def test_directory_output_and_unknown_option(tmp_path: Path) -> None:
    [p] = export_config(make_ctx(MIXED, calib_dir=None), "horizon", tmp_path / "out")
    assert p.parent == tmp_path / "out" and p.name == "yolox-nano_trial17_hb_mapper.yaml"
    assert "fill in" in p.read_text()
    with pytest.raises(ConfigError, match="no option 'marhc'.*march"):
        export_config(make_ctx(MIXED), "horizon", tmp_path / "x.yaml", marhc="bayes")
    with pytest.raises(ConfigError, match="march must be one of"):
        export_config(make_ctx(MIXED), "horizon", tmp_path / "x.yaml", march="nash")


def test_overrides_outside_the_model_are_refused(tmp_path: Path) -> None:
    cfg = QuantConfig(nodes={"not_in_model": "int16"})
    with pytest.raises(ExportError, match="does not have: not_in_model"):
        export_config(make_ctx(cfg), "horizon", tmp_path / "x.yaml")


def test_unknown_format_lists_known(tmp_path: Path) -> None:
    assert "horizon" in EXPORTERS
    with pytest.raises(ConfigError, match=r"unknown export format 'openvino'; known: .*horizon"):
        export_config(make_ctx(MIXED), "openvino", tmp_path / "x.yaml")
