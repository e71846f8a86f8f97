"""Built-in hardware targets: every file loads, and the physics holds for each of them."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from test_cost_model import chain, conv, simple

from autoq.errors import ConfigError
from autoq.plan import QuantConfig
from autoq.surrogates.cost_model import (
    TARGETS,
    estimate_latency,
    load_target,
    target_from_dict,
)

BUILT_IN = sorted(TARGETS.names())
EXPECTED = {"horizon-x3", "horizon-j5", "axera-ax620a", "axera-ax650", "vastai-va1", "ascend-310",
            "ascend-310p", "rk3588", "ort-cpu", "generic-npu"}


def test_every_issue_target_is_registered() -> None:
    assert EXPECTED <= set(BUILT_IN)


@pytest.mark.parametrize("name", BUILT_IN)
def test_target_yaml_loads_and_round_trips(name: str) -> None:
    t = load_target(name)
    assert t.name == name and t.description
    assert target_from_dict(t.to_dict()) == t
    text = (Path(__file__).resolve().parents[1] / "autoq/surrogates/targets" / f"{name}.yaml").read_text()
    if name not in ("generic-npu", "ort-cpu"):
        assert "Source" in text or "source" in text  # public numbers cite where they come from
    assert "ASSUMPTION" in text or "assumption" in text.lower()


def test_precisions_per_vendor() -> None:
    assert load_target("horizon-x3").precisions == ("int8",)
    assert load_target("horizon-j5").precisions == ("int8", "int16")
    assert load_target("vastai-va1").precisions == ("int8",) and load_target("vastai-va1").float_on_npu
    assert load_target("ascend-310").npu_tops["int8"] == 16.0 and load_target("ascend-310").npu_tops["float"] == 8.0
    assert load_target("rk3588").npu_tops["int8"] == 6.0
    assert load_target("ort-cpu").mode == "estimate" and load_target("ort-cpu").runs >= 5


def _mixed(n_int16: int, names: list[str]) -> QuantConfig:
    return QuantConfig(nodes={n: "int16" for n in names[:n_int16]})


@pytest.mark.parametrize("name", BUILT_IN)
def test_more_int16_is_not_faster(name: str) -> None:
    t = load_target(name)
    if "int16" not in t.precisions:
        pytest.skip(f"{name} runs no int16")
    nodes = chain(10, 64, 64)
    names = [n.name for n in nodes]
    times = [estimate_latency(nodes, _mixed(k, names), t).total_ms for k in range(0, 11, 2)]
    assert all(b >= a - 1e-9 for a, b in zip(times, times[1:])), times


@pytest.mark.parametrize("name", BUILT_IN)
def test_more_boundaries_cost_more(name: str) -> None:
    t = load_target(name)
    nodes = chain(12, 64, 64) + [simple("nms", "NonMaxSuppression", ("conv_11",), (100, 3), quantizable=True)]
    # islands forced by an op every target runs on the CPU (float may stay on an fp16 NPU)
    # islands: an op the target runs on the CPU, or a float node where float means CPU
    cpu_op = "NonMaxSuppression" if "NonMaxSuppression" in t.cpu_ops else "Sigmoid"
    island_cfg = QuantConfig(nodes={f"x{i}": "float" for i in range(12)})

    def islands(k: int) -> list:
        out = []
        src = "images"
        for i in range(12):
            out.append(conv(f"c{i}", src, 64, 64, cin=3 if i == 0 else 32))
            src = f"c{i}"
            if i < k:
                out.append(simple(f"x{i}", cpu_op, (src,), (1, 32, 64, 64), quantizable=True))
                out.append(simple(f"y{i}", "Reshape", (f"x{i}",), (1, 32, 64, 64), quantizable=False))
                src = f"y{i}"
        return out

    base = [estimate_latency(islands(k), island_cfg, t) for k in range(4)]
    assert [e.boundaries for e in base] == [0, 2, 4, 6]
    # same nodes, more switches: compare boundary cost at equal work
    assert all(b.boundary_ms > a.boundary_ms for a, b in zip(base, base[1:]))
    del nodes
    grouped = estimate_latency(chain(12, 64, 64), QuantConfig(nodes={f"conv_{i}": "float" for i in (4, 5, 6)}), t)
    scattered = estimate_latency(chain(12, 64, 64), QuantConfig(nodes={f"conv_{i}": "float" for i in (2, 5, 8)}), t)
    assert scattered.boundaries >= grouped.boundaries and scattered.total_ms >= grouped.total_ms - 1e-9


@pytest.mark.parametrize("name", BUILT_IN)
def test_latency_grows_with_pixels(name: str) -> None:
    t = load_target(name)
    for cfg in (QuantConfig.uniform("int8"), QuantConfig(nodes={"conv_3": "float"})):
        times = [estimate_latency(chain(8, s, s), cfg, t).total_ms for s in (80, 160, 320)]
        assert times[0] < times[1] < times[2], (name, times)


def test_x3_unsupported_op_runs_on_cpu_and_int16_is_refused() -> None:
    x3 = load_target("horizon-x3")
    nodes = chain(3) + [simple("tr", "Transpose", ("conv_2",), (1, 80, 80, 32), quantizable=False),
                        simple("sub", "Sub", ("tr",), (1, 80, 80, 32), quantizable=True)]
    est = estimate_latency(nodes, QuantConfig.uniform("int8"), x3)
    assert est.devices["conv_2"] == "npu" and est.devices["tr"] == "cpu" and est.devices["sub"] == "cpu"
    assert est.boundaries == 1
    with pytest.raises(ConfigError, match="horizon-x3 cannot run int16"):
        estimate_latency(nodes, QuantConfig(nodes={"conv_1": "int16"}), x3)
    with pytest.raises(ConfigError, match="vastai-va1 cannot run int16"):
        estimate_latency(nodes, QuantConfig(nodes={"conv_1": "int16"}), load_target("vastai-va1"))


def test_per_precision_npu_ops_and_float_on_npu() -> None:
    d = load_target("generic-npu").to_dict()
    d.update(npu_ops={"int16": ["Conv"]}, float_on_npu=True, npu_tops={"int8": 4.0, "int16": 1.0, "float": 1.0})
    t = target_from_dict(d)
    nodes = chain(2) + [simple("sig", "Sigmoid", ("conv_1",), (1, 32, 80, 80), quantizable=True)]
    est = estimate_latency(nodes, QuantConfig.uniform("int16"), t)
    assert est.devices["conv_1"] == "npu" and est.devices["sig"] == "cpu"  # no Sigmoid at int16
    est = estimate_latency(nodes, QuantConfig(nodes={"conv_1": "float"}), t)
    assert est.devices["conv_1"] == "npu" and est.precisions["conv_1"] == "float" and est.converts == 2
    with pytest.raises(ConfigError, match="npu_tops.*float"):
        d2 = dict(d, npu_tops={"int8": 4.0, "int16": 1.0})
        target_from_dict(d2)
    with pytest.raises(ConfigError, match="mode"):
        target_from_dict(dict(d, mode="sometimes"))


def test_table_is_csv_with_nodes_segments_and_totals() -> None:
    t = load_target("horizon-j5")
    est = estimate_latency(chain(6), QuantConfig(nodes={"conv_3": "float", "conv_4": "int16"}), t)
    rows = list(csv.DictReader(io.StringIO(est.table())))
    assert list(rows[0]) == ["node", "op", "device", "precision", "segment", "ms"]
    by = {r["node"]: r for r in rows}
    assert by["conv_3"]["device"] == "cpu" and by["conv_3"]["precision"] == "float"
    assert by["conv_4"]["precision"] == "int16" and by["conv_4"]["segment"] == "2"
    assert [r["device"] for r in rows if r["op"] == "segment"] == ["npu", "cpu", "npu"]
    assert float(by["(total)"]["ms"]) == pytest.approx(est.total_ms, rel=1e-5)
    node_ms = sum(float(r["ms"]) for r in rows[: len(est.per_node)])
    edges = float(by["(boundaries)"]["ms"]) + float(by["(converts)"]["ms"]) + float(by["(fixed)"]["ms"])
    assert node_ms + edges == pytest.approx(est.total_ms, rel=1e-4)


BASE = """
model: {path: m.onnx, adapter: yolox}
data: {eval_images: ev, eval_annotations: ann.json, calib_images: cal, calib_count: 8}
"""


def _tiny_project(tmp_path: Path, target_section: str):
    """A project on disk whose model is a real 2-conv ONNX graph (for latency only)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from autoq.config import load_config
    from autoq.pipeline import Project

    w1 = numpy_helper.from_array(np.random.default_rng(0).normal(size=(8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(np.random.default_rng(1).normal(size=(8, 8, 3, 3)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w1"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
         helper.make_node("Sigmoid", ["a"], ["b"], name="sig"),
         helper.make_node("Conv", ["b", "w2"], ["out"], name="conv_b", pads=[1, 1, 1, 1])],
        "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 32, 32])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.save(model, str(tmp_path / "m.onnx"))
    for d in ("ev", "cal"):
        (tmp_path / d).mkdir(exist_ok=True)
    (tmp_path / "ann.json").write_text("{}")
    cfg = tmp_path / "autoq.yaml"
    cfg.write_text(BASE + target_section)
    return Project(load_config(cfg)), model


def test_x3_project_never_suggests_int16(tmp_path: Path) -> None:
    import optuna

    from autoq.plan import Precision
    from autoq.search.space import suggest_config

    project, _ = _tiny_project(tmp_path, "target: {name: horizon-x3}\nspace: {precisions: [int8, int16, float]}\n")
    allowed = project.allowed_precisions()
    assert Precision.INT16 not in allowed and Precision.INT8 in allowed
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        cfg = suggest_config(trial, project.quantizable_names, allowed, ["per_tensor"], ["minmax"])
        seen |= {cfg.precision_of(n) for n in project.quantizable_names}
        project.validate_config(cfg)
        assert project.latency(cfg).total_ms > 0
        study.tell(trial, 0.0)
    assert Precision.INT16 not in seen and Precision.INT8 in seen
    with pytest.raises(ConfigError, match="int16"):
        project.validate_config(QuantConfig(nodes={"conv_a": "int16"}))
    with pytest.raises(ConfigError, match="horizon-x3 cannot run int16"):
        estimate_latency(project.model.nodes, QuantConfig(nodes={"conv_a": "int16"}), project.target)


def test_measured_mode_times_the_model(tmp_path: Path) -> None:
    project, model = _tiny_project(tmp_path, "target: {name: ort-cpu, mode: measured, runs: 3}\n")
    cfg = QuantConfig.uniform("int8")
    est = project.latency(cfg)  # no proto: the estimate
    assert est.source == "estimate"
    lat = project.latency(cfg, model)
    assert lat.source == "measured" and lat.total_ms > 0 and lat.estimated_ms == pytest.approx(est.total_ms)
    assert lat.breakdown()["estimated_ms"] == pytest.approx(est.total_ms)
    assert "(total),measured" in lat.table()
