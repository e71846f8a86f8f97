"""Cost model: ordering properties a latency surrogate must have, target loading and speed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from autoq.errors import ConfigError
from autoq.plan import QuantConfig
from autoq.surrogates.cost_model import (
    TARGETS,
    LatencyEstimate,
    Target,
    estimate_latency,
    load_target,
)

try:
    from autoq.model.graph import NodeInfo
except ImportError:  # graph.py not there yet: a stand-in with the same fields
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class NodeInfo:  # type: ignore[no-redef]
        name: str
        op_type: str
        inputs: tuple
        outputs: tuple
        input_shapes: tuple
        output_shapes: tuple
        macs: int
        flops: int
        param_bytes: int
        activation_bytes: int
        quantizable: bool


def conv(name: str, src: str, h: int, w: int, cin: int = 32, cout: int = 32, k: int = 3) -> NodeInfo:
    """A stride-1 'same' Conv from tensor ``src`` to tensor ``name`` at h x w."""
    macs = h * w * cout * cin * k * k
    return NodeInfo(
        name=name,
        op_type="Conv",
        inputs=(src, f"{name}.w"),
        outputs=(name,),
        input_shapes=((1, cin, h, w), (cout, cin, k, k)),
        output_shapes=((1, cout, h, w),),
        macs=macs,
        flops=2 * macs,
        param_bytes=cout * cin * k * k * 4,
        activation_bytes=cout * h * w * 4,
        quantizable=True,
    )


def simple(name: str, op: str, srcs: tuple[str, ...], shape: tuple[int, ...], *, quantizable: bool) -> NodeInfo:
    numel = 1
    for d in shape:
        numel *= d
    return NodeInfo(
        name=name,
        op_type=op,
        inputs=srcs,
        outputs=(name,),
        input_shapes=tuple(shape for _ in srcs),
        output_shapes=(shape,),
        macs=0,
        flops=numel,
        param_bytes=0,
        activation_bytes=numel * 4,
        quantizable=quantizable,
    )


def chain(n: int, h: int = 80, w: int = 80) -> list[NodeInfo]:
    """n Convs in a row fed by graph input 'images'."""
    nodes = []
    src = "images"
    for i in range(n):
        nodes.append(conv(f"conv_{i}", src, h, w, cin=3 if i == 0 else 32))
        src = f"conv_{i}"
    return nodes


@pytest.fixture(scope="module")
def npu() -> Target:
    return load_target("generic-npu")


def test_generic_npu_loads_with_documented_numbers(npu: Target) -> None:
    assert "generic-npu" in TARGETS
    assert npu.precisions == ("int8", "int16")
    assert npu.npu_tops["int8"] == 4.0 and npu.npu_tops["int16"] == 1.0
    assert npu.boundary_ms == 0.1 and npu.boundary_bandwidth_gbs == 2.0
    assert npu.cpu_gflops == 20.0


def test_int16_is_not_faster_than_int8(npu: Target) -> None:
    nodes = chain(10)
    t8 = estimate_latency(nodes, QuantConfig.uniform("int8"), npu)
    t16 = estimate_latency(nodes, QuantConfig.uniform("int16"), npu)
    assert t16.total_ms >= t8.total_ms
    assert t16.total_ms > 1.5 * t8.total_ms  # compute-bound convs at 1/4 of the TOPS
    assert set(t8.devices.values()) == {"npu"} and t8.boundaries == 0


def test_float_nodes_in_the_middle_add_boundaries(npu: Target) -> None:
    nodes = chain(12)
    base = estimate_latency(nodes, QuantConfig.uniform("int8"), npu)
    one = estimate_latency(nodes, QuantConfig(nodes={"conv_5": "float"}), npu)
    three = estimate_latency(nodes, QuantConfig(nodes={"conv_3": "float", "conv_6": "float", "conv_9": "float"}), npu)
    assert one.boundaries == 2 and three.boundaries == 6
    assert base.total_ms < one.total_ms < three.total_ms
    assert one.devices["conv_5"] == "cpu" and one.devices["conv_4"] == "npu"
    assert [s[0] for s in one.segments] == ["npu", "cpu", "npu"]
    assert [s[1] for s in one.segments] == [5, 1, 6]
    # grouping the same three float nodes together costs fewer switches
    grouped = estimate_latency(nodes, QuantConfig(nodes={f"conv_{i}": "float" for i in (5, 6, 7)}), npu)
    assert grouped.boundaries == 2 and grouped.total_ms < three.total_ms


def test_boundary_counted_once_per_tensor_and_device(npu: Target) -> None:
    nodes = chain(2) + [
        simple("sig_a", "Sigmoid", ("conv_1",), (1, 32, 80, 80), quantizable=True),
        simple("sig_b", "Sigmoid", ("conv_1",), (1, 32, 80, 80), quantizable=True),
    ]
    est = estimate_latency(nodes, QuantConfig(nodes={"sig_a": "float", "sig_b": "float"}), npu)
    assert est.boundaries == 1
    bytes_ms = 32 * 80 * 80 * 4 / 2e9 * 1e3
    assert est.boundary_ms == pytest.approx(0.1 + bytes_ms)


def test_cpu_op_runs_on_cpu_whatever_precision(npu: Target) -> None:
    nodes = chain(3) + [simple("nms", "NonMaxSuppression", ("conv_2",), (100, 3), quantizable=True)]
    est = estimate_latency(nodes, QuantConfig.uniform("int8"), npu)
    assert est.devices["nms"] == "cpu"
    assert est.boundaries == 1
    assert est.breakdown()["cpu_nodes"] == 1.0


def test_non_quantizable_nodes_follow_their_producer(npu: Target) -> None:
    nodes = chain(3) + [
        simple("reshape", "Reshape", ("conv_2", "shape_const"), (1, 32, 6400), quantizable=False),
        simple("transpose", "Transpose", ("reshape",), (1, 6400, 32), quantizable=False),
    ]
    on_npu = estimate_latency(nodes, QuantConfig.uniform("int8"), npu)
    assert on_npu.devices["reshape"] == "npu" and on_npu.devices["transpose"] == "npu"
    on_cpu = estimate_latency(nodes, QuantConfig(nodes={"conv_2": "float"}), npu)
    assert on_cpu.devices["reshape"] == "cpu" and on_cpu.devices["transpose"] == "cpu"
    assert on_cpu.boundaries == 1  # conv_1 -> conv_2 only; the CPU tail stays on the CPU
    # a layout op fed by the graph input alone runs on the NPU
    head = [simple("pre", "Transpose", ("images",), (1, 3, 80, 80), quantizable=False)]
    assert estimate_latency(head, QuantConfig.uniform("float"), npu).devices["pre"] == "npu"


def test_mixed_int8_int16_pays_converts(npu: Target) -> None:
    nodes = chain(6)
    est = estimate_latency(nodes, QuantConfig(nodes={"conv_2": "int16", "conv_4": "int16"}), npu)
    assert est.converts == 4 and est.convert_ms > 0 and est.boundaries == 0
    assert est.total_ms == pytest.approx(sum(est.per_node.values()) + est.convert_ms)


def test_latency_grows_with_input_pixels(npu: Target) -> None:
    small = estimate_latency(chain(8, 160, 160), QuantConfig.uniform("int8"), npu)
    large = estimate_latency(chain(8, 320, 320), QuantConfig.uniform("int8"), npu)
    assert large.total_ms > 3 * small.total_ms


def test_unsupported_precision_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "int8-only.yaml"
    path.write_text(
        "precisions: [int8]\nnpu_tops: {int8: 2.0}\nnpu_bandwidth_gbs: 4\ncpu_gflops: 10\n"
        "cpu_bandwidth_gbs: 4\nboundary_ms: 0.2\nboundary_bandwidth_gbs: 1\nnode_overhead_ms: 0.02\n"
    )
    target = load_target(str(path))
    assert target.name == "int8-only" and target.precisions == ("int8",)
    assert estimate_latency(chain(3), QuantConfig.uniform("int8"), target).total_ms > 0
    with pytest.raises(ConfigError, match="int8-only cannot run int16.*space.precisions"):
        estimate_latency(chain(3), QuantConfig(nodes={"conv_1": "int16"}), target)


def test_unknown_target_lists_known() -> None:
    with pytest.raises(ConfigError, match=r"target\.name: unknown hardware target 'nope'.*generic-npu"):
        load_target("nope")
    with pytest.raises(ConfigError, match="does not exist"):
        load_target("/no/such/target.yaml")


def test_bad_target_yaml_names_file_and_key(tmp_path: Path) -> None:
    src = (Path(__file__).resolve().parents[1] / "autoq/surrogates/targets/generic-npu.yaml").read_text()
    bad = tmp_path / "typo.yaml"
    bad.write_text(src.replace("cpu_gflops:", "cpu_gflop:"))
    with pytest.raises(ConfigError, match=r"typo\.yaml: key 'cpu_gflop' is not a target key"):
        load_target(str(bad))
    bad.write_text(src.replace("npu_bandwidth_gbs: 8.0", "npu_bandwidth_gbs: fast"))
    with pytest.raises(ConfigError, match=r"typo\.yaml: key 'npu_bandwidth_gbs' must be a number"):
        load_target(str(bad))
    bad.write_text(src.replace("  int16: 1.0\n", ""))
    with pytest.raises(ConfigError, match=r"key 'npu_tops' has no entry for 'int16'"):
        load_target(str(bad))


def test_breakdown_is_flat_and_consistent(npu: Target) -> None:
    est = estimate_latency(chain(6), QuantConfig(nodes={"conv_3": "float"}), npu)
    assert isinstance(est, LatencyEstimate)
    b = est.breakdown()
    assert all(isinstance(v, float) for v in b.values())
    assert b["npu_ms"] + b["cpu_ms"] + b["boundary_ms"] + b["convert_ms"] == pytest.approx(est.total_ms)
    assert b["boundaries"] == 2.0 and b["segments"] == 3.0
    assert sum(ms for _, _, ms in est.segments) == pytest.approx(b["npu_ms"] + b["cpu_ms"])


def test_400_nodes_under_5_ms(npu: Target) -> None:
    nodes: list[NodeInfo] = []
    src = "images"
    for i in range(200):  # conv + a non-quantizable op, with a skip edge every 4 blocks
        nodes.append(conv(f"c{i}", src, 40, 40))
        inputs = (f"c{i}", nodes[-8].outputs[0]) if i >= 4 and i % 4 == 0 else (f"c{i}",)
        nodes.append(simple(f"r{i}", "Add" if len(inputs) == 2 else "Reshape", inputs, (1, 32, 40, 40),
                            quantizable=len(inputs) == 2))
        src = f"r{i}"
    config = QuantConfig(nodes={f"c{i}": ("int16" if i % 7 == 0 else "float" if i % 23 == 0 else "int8")
                                for i in range(200)})
    estimate_latency(nodes, config, npu)
    best = float("inf")
    for _ in range(10):
        t0 = time.perf_counter()
        est = estimate_latency(nodes, config, npu)
        best = min(best, time.perf_counter() - t0)
    assert len(est.per_node) == 400 and est.boundaries > 0 and est.converts > 0
    assert best < 5e-3, f"estimate_latency took {best * 1e3:.2f} ms for 400 nodes"
