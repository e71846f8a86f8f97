"""RKNN: the bundle names only tensors step1 writes, the rk3588 simulation of RKNN's fusions, and
`autoq verify --toolchain rknn` with the real RKNN-Toolkit2 (in its own venv, found through
AUTOQ_RKNN_PYTHON; `.ci/run` installs it with scripts/install-rknn-toolkit.sh)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

import autoq.demo
from autoq.data.preprocess import Preprocess
from autoq.export import export_config
from autoq.export.base import ExportContext
from autoq.export.rknn import read_rknn
from autoq.export.rknn_names import cfg_name_of_nodes, predict_step1_names
from autoq.model.graph import load_model
from autoq.plan import Calibration, Precision, QuantConfig
from autoq.quant.toolchain_sim import fused_tensors, simulate_toolchain

DETECTOR = Path(autoq.demo.__file__).parent / "detector.onnx"
RKNN_PYTHON = os.environ.get("AUTOQ_RKNN_PYTHON", "")
needs_rknn = pytest.mark.skipif(
    not (RKNN_PYTHON and Path(RKNN_PYTHON).is_file()),
    reason="RKNN-Toolkit2 not installed: scripts/install-rknn-toolkit.sh VENV, then AUTOQ_RKNN_PYTHON=VENV/bin/python",
)


@pytest.fixture(scope="module")
def demo_model():
    return load_model(DETECTOR)


def _mixed(model) -> QuantConfig:
    """Every precision, SiLU Sigmoids and Muls disagreeing on purpose, per-channel mse."""
    names = [n.name for n in model.quantizable()]
    return QuantConfig(default="int8", nodes={n: ("int16", "float", "int8")[i % 3] for i, n in enumerate(names)},
                       calibration=Calibration(granularity="per_channel", method="mse"))


def _ctx(model, path: Path, config: QuantConfig, calib: int = 0) -> ExportContext:
    rng = np.random.default_rng(0)
    h, w = model.input_shape[2:]
    return ExportContext(
        config=config, model_path=path, input_name=model.input_name, input_shape=(1, 3, h, w),
        node_names=tuple(n.name for n in model.quantizable()), node_ops={n.name: n.op_type for n in model.nodes},
        preprocess=Preprocess(), study="demo", trial=3, map_drop=0.01, latency_ms=2.0, target="rk3588",
        calib_images=(lambda: rng.integers(0, 256, (calib, h, w, 3), dtype=np.uint8)) if calib else None,
    )


def test_bundle_keys_are_tensors_step1_names(demo_model, tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(demo_model.serialized())
    config = _mixed(demo_model)
    files = export_config(_ctx(demo_model, path, config, calib=3), "rknn", tmp_path / "b")
    names = {f.relative_to(tmp_path / "b").as_posix() for f in files}
    assert {"demo_trial3.quantization.cfg", "model.onnx", "rknn_bundle.json", "build_rknn.py", "dataset.txt",
            "calib/0000.npy"} <= names
    layers, cal = read_rknn(files[0])
    step1 = predict_step1_names(onnx.load(str(path)))
    assert layers and set(layers) <= step1
    assert not any(k.endswith("/Sigmoid_output_0") and "/act/" in k for k in layers)  # fused into the SiLU's Mul
    assert cal["quantized_algorithm"] == "mmse" and cal["quantized_method"] == "channel"
    bundle = json.loads((tmp_path / "b" / "rknn_bundle.json").read_text())
    assert bundle["config"]["target_platform"] == "rk3588" and bundle["config"]["mean_values"] == [[0.0, 0.0, 0.0]]
    x = np.load(tmp_path / "b" / "calib" / "0000.npy")
    assert x.shape == (1, 3, *demo_model.input_shape[2:]) and x.dtype == np.float32 and x.max() > 1
    # a SiLU unit whose Sigmoid and Mul disagree is written once, at the higher precision
    model = onnx.load(str(path))
    cfg_of = cfg_name_of_nodes(model, step1)
    assignment = config.assignment([n.name for n in demo_model.quantizable()])
    rank = {Precision.INT8: 0, Precision.INT16: 1, Precision.FLOAT: 2}
    units = [[n for n, t in cfg_of.items() if t == tensor and n in assignment] for tensor in step1]
    silu = [u for u in units if len(u) == 2 and len({assignment[n] for n in u}) == 2]
    assert silu
    for members in silu:
        want = max((assignment[n] for n in members), key=rank.__getitem__)
        assert layers.get(cfg_of[members[0]], Precision.INT8) is want
    # ops autoq does not quantize (Reshape, Transpose, RKNN's X_rs) follow their input's precision
    int16_tail = QuantConfig(default="int8", nodes={n.name: "int16" for n in demo_model.quantizable()
                                                    if n.name.startswith("/Concat_")})
    [cfg, *_] = export_config(_ctx(demo_model, path, int16_tail, calib=1), "rknn", tmp_path / "tail")
    tail_layers, _ = read_rknn(cfg)
    assert tail_layers.get("/Concat_10_output_0_rs") is Precision.INT16, sorted(tail_layers)


def test_bundle_needs_calibration_images_and_a_folder(demo_model, tmp_path):
    from autoq.errors import ExportError

    path = tmp_path / "m.onnx"
    path.write_bytes(demo_model.serialized())
    with pytest.raises(ExportError, match="calibration images"):
        export_config(_ctx(demo_model, path, QuantConfig.uniform("int8")), "rknn", tmp_path / "a")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="bundle folder"):
        export_config(_ctx(demo_model, path, QuantConfig.uniform("int8"), calib=1), "rknn", tmp_path / "file")
    files = export_config(_ctx(demo_model, path, QuantConfig.uniform("float")), "rknn", tmp_path / "f")
    assert json.loads((tmp_path / "f" / "rknn_bundle.json").read_text())["do_quantization"] is False
    assert read_rknn(files[0])[0] == {}  # an all-float trial is a plain float16 build


def test_rk3588_fuses_conv_and_silu_only_when_the_unit_has_one_precision(demo_model):
    graph = demo_model.proto.graph
    names = {n.name for n in demo_model.quantizable()}
    uniform = fused_tensors(graph, ("SiLU", "Sigmoid"), lambda n: Precision.INT8 if n in names else None)
    sig = [n for n in graph.node if n.op_type == "Sigmoid"]
    silu_sig = {n.output[0] for n in sig if any(c.op_type == "Mul" and n.output[0] in c.input and n.input[0] in c.input
                                                for c in graph.node)}
    assert silu_sig and silu_sig <= uniform
    conv = next(n for n in graph.node if n.op_type == "Conv")
    assert conv.output[0] in uniform  # Conv -> SiLU: one ConvExSwish
    split = fused_tensors(graph, ("SiLU", "Sigmoid"),
                          lambda n: (Precision.INT16 if n == conv.name else Precision.INT8) if n in names else None)
    assert conv.output[0] not in split  # RKNN splits a unit given two types
    assert not fused_tensors(graph, (), lambda n: Precision.INT8)


def test_simulation_removes_only_the_fused_qdq_pairs(demo_model):
    from autoq.quant.calibrate import collect_stats
    from autoq.quant.qdq import build_qdq
    from autoq.quant.ranges import activation_ranges

    h, w = demo_model.input_shape[2:]
    rng = np.random.default_rng(0)
    stats = collect_stats(demo_model, [rng.integers(0, 256, (1, 3, h, w)).astype(np.float32)], cache_dir=None, key="t")
    config = QuantConfig.uniform("int8")
    proto = build_qdq(demo_model, config, activation_ranges(stats, config.calibration))
    quantized = {n.input[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    names = {n.name for n in demo_model.quantizable()}
    fused = fused_tensors(demo_model.proto.graph, ("SiLU", "Sigmoid"), lambda n: Precision.INT8 if n in names else None)
    out = simulate_toolchain(onnx.ModelProto.FromString(proto.SerializeToString()), demo_model.proto.graph,
                             fused=fused, float_constants=True)
    left = {n.input[0] for n in out.graph.node if n.op_type == "QuantizeLinear"}
    assert left == quantized - fused and fused & quantized
    consts = [n for n in out.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("decode_")]
    assert not consts  # decode_grid / decode_stride back to float
    onnx.checker.check_model(out)


@needs_rknn
@pytest.mark.slow
def test_verify_all_int8_demo_trial_with_rknn(tmp_path):
    """`autoq verify` builds the demo's all-int8 trial with RKNN-Toolkit2 and simulates it: the simulator's
    mAP is within 1 point of autoq's prediction for rk3588, and lands on the trial's MLflow run."""
    from mlflow.tracking import MlflowClient

    from autoq.cli import main

    d = tmp_path / "demo"
    from autoq.demo.project import write_demo_project

    config = write_demo_project(d, log=lambda _m: None)
    text = config.read_text().replace("name: generic-npu", "name: rk3588")
    config.write_text(text + f"toolchains:\n  rknn: {{python: {RKNN_PYTHON}}}\n")
    assert main(["search", "-c", str(config), "--budget", "2"]) == 0
    env = {k: v for k, v in os.environ.items() if k != "AUTOQ_RKNN_PYTHON"}  # the config names it
    run = subprocess.run([sys.executable, "-m", "autoq", "verify", "-c", str(config), "--trial", "0"],
                         capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    last = run.stdout.strip().splitlines()[-1]
    assert "delta_pt=" in last, last
    delta = float(last.split("delta_pt=")[1].split()[0])
    assert abs(delta) <= 1.0, last
    client = MlflowClient(tracking_uri=f"sqlite:///{d / 'mlflow.db'}")
    exp = client.get_experiment_by_name("autoq-demo")
    [r] = client.search_runs([exp.experiment_id], "tags.`autoq.trial` = '0'")
    assert r.data.metrics["toolchain_delta_pt"] == pytest.approx(delta, abs=0.006)
    assert 0 < r.data.metrics["toolchain_map"] <= 1


def test_verify_without_a_toolchain_python_is_one_line(tmp_path, capsys, monkeypatch):
    from autoq.cli import main
    from autoq.demo.project import write_demo_project

    monkeypatch.delenv("AUTOQ_RKNN_PYTHON", raising=False)
    config = write_demo_project(tmp_path / "demo", log=lambda _m: None)
    assert main(["verify", "-c", str(config), "--trial", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "toolchains.rknn.python is not set" in err[0] and "install-rknn-toolkit.sh" in err[0]


def test_rknn_builds_a_mixed_bundle_and_rejects_a_name_step1_does_not_write(tmp_path, demo_model):
    """Every name of a mixed (int8/int16/float, SiLU units split) bundle is one RKNN-Toolkit2's own step1
    writes: the hybrid build succeeds; a name step1 does not write stops the script before step2 (exit 2)."""
    if not (RKNN_PYTHON and Path(RKNN_PYTHON).is_file()):
        pytest.skip("RKNN-Toolkit2 not installed: scripts/install-rknn-toolkit.sh VENV, then AUTOQ_RKNN_PYTHON=VENV/bin/python")
    path = tmp_path / "m.onnx"
    path.write_bytes(demo_model.serialized())
    [cfg, *_] = export_config(_ctx(demo_model, path, _mixed(demo_model), calib=2), "rknn", tmp_path / "b")
    ok = subprocess.run([RKNN_PYTHON, str(tmp_path / "b" / "build_rknn.py")], capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stdout[-2000:]
    assert (tmp_path / "b" / "demo_trial3.rknn").is_file() and "hybrid_quantization_step2" in ok.stdout
    data = yaml.safe_load(cfg.read_text())
    data["custom_quantize_layers"]["/stem/act/Sigmoid_output_0"] = "float16"  # fused away by RKNN
    cfg.write_text(yaml.safe_dump(data))
    run = subprocess.run([RKNN_PYTHON, str(tmp_path / "b" / "build_rknn.py")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 2, run.stdout[-2000:]
    assert "/stem/act/Sigmoid_output_0" in run.stdout and "not tensors step1 wrote" in run.stdout


def test_int8_consumers_of_an_int16_tensor_read_it_converted(demo_model):
    """rk3588 (int8_reads_convert): an int8 node reading an int16 tensor gets int8 values, as RKNN's
    exDataConvert gives them; without it every consumer reads the int16 quantization."""
    from onnx import numpy_helper

    from autoq.quant.calibrate import collect_stats
    from autoq.quant.qdq import build_qdq, config_int16_tensors
    from autoq.quant.ranges import activation_ranges

    h, w = demo_model.input_shape[2:]
    rng = np.random.default_rng(0)
    stats = collect_stats(demo_model, [rng.integers(0, 256, (1, 3, h, w)).astype(np.float32)], cache_dir=None, key="c")
    conv = next(n for n in demo_model.quantizable() if n.op_type == "Conv")
    config = QuantConfig(default="int8", nodes={conv.name: "int16"})
    ranges = activation_ranges(stats, config.calibration, int16_tensors=config_int16_tensors(demo_model, config))
    sigmoid = next(n for n in demo_model.proto.graph.node if n.op_type == "Sigmoid" and n.input[0] == conv.outputs[0])

    def zero_point_type(proto) -> np.dtype:
        inits = {t.name: t for t in proto.graph.initializer}
        node = next(n for n in proto.graph.node if n.name == sigmoid.name)
        dq = next(n for n in proto.graph.node if n.output[0] == node.input[0])
        return numpy_helper.to_array(inits[dq.input[2]]).dtype

    assert zero_point_type(build_qdq(demo_model, config, ranges)) == np.int16
    assert zero_point_type(build_qdq(demo_model, config, ranges, int8_reads_convert=True)) == np.int8
