"""Fitting a target to measurements: recovers known parameters from synthetic data."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from test_cost_model import conv, simple

from autoq.plan import QuantConfig
from autoq.surrogates.cost_model import estimate_latency, load_target, target_from_dict
from autoq.surrogates.fit import Measurement, fit_target, load_measurements, mape, nnls


def net(depth: int, h: int, c: int = 128) -> list:
    """Convs (compute-bound at c=128) each followed by a Sigmoid (memory-bound)."""
    nodes, src = [], "images"
    for i in range(depth):
        nodes.append(conv(f"c{i}", src, h, h, cin=3 if i == 0 else c, cout=c))
        nodes.append(simple(f"s{i}", "Sigmoid", (f"c{i}",), (1, c, h, h), quantizable=True))
        src = f"s{i}"
    return nodes


def synthetic(truth, n: int = 70, seed: int = 1) -> list[Measurement]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        nodes = net(rng.randint(3, 12), rng.choice([24, 32, 48, 64]))
        cfg = QuantConfig(nodes={nd.name: rng.choice(["int8", "int8", "int16", "float"]) for nd in nodes})
        out.append(Measurement(cfg, nodes, estimate_latency(nodes, cfg, truth).total_ms))
    return out


def test_nnls_matches_known_solution() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(0.1, 1.0, size=(30, 5))
    x_true = np.array([1.0, 0.0, 2.5, 0.3, 0.0])
    x = nnls(a, a @ x_true)
    assert np.allclose(x, x_true, atol=1e-6)
    x = nnls(a, a @ np.array([-1.0, 1, 1, 1, 1]))
    assert (x >= 0).all()


def test_fit_recovers_known_parameters() -> None:
    prior = load_target("generic-npu")
    d = prior.to_dict()
    d.update(npu_tops={"int8": 6.0, "int16": 1.2}, boundary_ms=0.25, cpu_gflops=12.0, node_overhead_ms=0.02,
             fixed_ms=0.4, npu_bandwidth_gbs=8.0, cpu_node_overhead_ms=0.01)
    truth = target_from_dict(d)
    meas = synthetic(truth)
    result = fit_target(prior, meas, holdout=0.3, seed=0, ridge=1e-8)
    f = result.target
    assert result.mape_before > 0.1 and result.mape_after < 0.01
    # conv (MAC) compute: effective ops/s of a Conv at each precision
    for p in ("int8", "int16"):
        got = f.npu_tops[p] * f.efficiency("Conv", p)
        want = truth.npu_tops[p] * truth.efficiency("Conv", p)
        assert got == pytest.approx(want, rel=0.03), p
    assert f.boundary_ms == pytest.approx(0.25, rel=0.03)
    assert f.cpu_gflops == pytest.approx(12.0, rel=0.03)
    assert f.npu_bandwidth_gbs == pytest.approx(8.0, rel=0.03)
    assert f.node_overhead_ms == pytest.approx(0.02, rel=0.05)
    assert f.fixed_ms == pytest.approx(0.4, rel=0.05)
    assert "held-out MAPE" in result.report()


def test_fit_uses_per_node_times_and_writes_yaml(tmp_path: Path) -> None:
    prior = load_target("ort-cpu")
    d = prior.to_dict()
    d.update(cpu_gflops=prior.cpu_gflops * 2, node_overhead_ms=0.01)
    truth = target_from_dict(d)
    meas = []
    for k in range(6):
        nodes = net(4, 32)
        cfg = QuantConfig(nodes={f"c{k % 4}": "float"})
        est = estimate_latency(nodes, cfg, truth)
        meas.append(Measurement(cfg, nodes, None, dict(est.per_node), f"profile {k}"))
    result = fit_target(prior, meas, holdout=0.0, ridge=1e-8)
    assert result.target.cpu_gflops == pytest.approx(truth.cpu_gflops, rel=0.03)
    out = result.write(tmp_path / "fitted.yaml")
    again = load_target(str(out))
    assert again.cpu_gflops == pytest.approx(result.target.cpu_gflops)
    assert again.name == "fitted" and again.mode == "estimate" and "fitted from ort-cpu" in again.description


def test_load_measurements_csv(tmp_path: Path) -> None:
    import yaml

    (tmp_path / "a.yaml").write_text(yaml.safe_dump(QuantConfig(nodes={"c1": "float"}).to_dict()))
    (tmp_path / "prof.json").write_text(
        '[{"cat":"Node","name":"c0_kernel_time","dur":1500,"args":{"op_name":"Conv"}},'
        '{"cat":"Session","name":"model_run","dur":4000},{"cat":"Session","name":"model_run","dur":3000}]'
    )
    (tmp_path / "m.csv").write_text("config,ms,profile\na.yaml,3.5,\na.yaml,,prof.json\n")
    nodes = net(3, 16)
    ms = load_measurements(tmp_path / "m.csv", nodes_at=lambda res: nodes)
    assert [m.ms for m in ms] == [3.5, 3.0]
    assert ms[0].config.precision_of("c1").value == "float" and ms[1].node_ms == {"c0": 1.5}
    from autoq.errors import ConfigError

    (tmp_path / "bad.csv").write_text("trial,ms\n3,2.0\n")
    with pytest.raises(ConfigError, match="needs --config"):
        load_measurements(tmp_path / "bad.csv", nodes_at=lambda res: nodes)


def test_mape() -> None:
    assert mape([1.1, 0.9], [1.0, 1.0]) == pytest.approx(0.1)
