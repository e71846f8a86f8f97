"""Profiler output parsers: Horizon profiler.log, RKNN eval_perf table, ONNX Runtime profile JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoq.errors import ConfigError
from autoq.surrogates.profiles import parse_profile

HORIZON = {
    "perf_result": {"FPS": 125.3, "average_latency": 7.98},
    "chip_latency": {},
    "model_latency": {
        "yolox_subgraph_0": {"avg_time": 6.1, "max_time": 6.5, "min_time": 5.9},
        "/head/Transpose": {"avg_time": 0.42, "max_time": 0.5, "min_time": 0.4},
        "yolox_subgraph_1": {"avg_time": 1.2, "max_time": 1.3, "min_time": 1.1},
    },
}

RKNN = """
---------------------------------------------------------------------------------------------------
                                 Operator Time Consuming Ranking Table
---------------------------------------------------------------------------------------------------
ID   OpType           DataType Target InputShape                 OutputShape        Time(us)  Name
1    InputOperator    INT8     CPU    \\                          (1,3,416,416)      12        images
2    ConvSigmoid      INT8     NPU    (1,3,416,416),(16,3,3,3)   (1,16,208,208)     845       Conv_0
3    Concat           INT8     NPU    (1,16,52,52),(1,16,52,52)  (1,32,52,52)       120       Concat_9
4    Transpose        INT8     CPU    (1,85,3549)                (1,3549,85)        310       Transpose_300
Total Operator Elapsed Per Frame Time(us): 1287
---------------------------------------------------------------------------------------------------
"""

ORT = [
    {"cat": "Session", "name": "model_run", "dur": 9000, "ph": "X"},
    {"cat": "Node", "name": "Conv_0_kernel_time", "dur": 1200, "args": {"op_name": "Conv"}},
    {"cat": "Node", "name": "Conv_0_fence_before", "dur": 1, "args": {"op_name": "Conv"}},
    {"cat": "Node", "name": "Sigmoid_1_kernel_time", "dur": 300, "args": {"op_name": "Sigmoid"}},
    {"cat": "Session", "name": "model_run", "dur": 5000, "ph": "X"},
    {"cat": "Node", "name": "Conv_0_kernel_time", "dur": 1000, "args": {"op_name": "Conv"}},
    {"cat": "Node", "name": "Sigmoid_1_kernel_time", "dur": 200, "args": {"op_name": "Sigmoid"}},
    {"cat": "Session", "name": "model_run", "dur": 4000, "ph": "X"},
]


def test_horizon_profiler_log(tmp_path: Path) -> None:
    p = tmp_path / "profiler.log"
    p.write_text(json.dumps(HORIZON))
    prof = parse_profile(p)
    assert prof.format == "horizon" and prof.total_ms == pytest.approx(7.98)
    assert [s.name for s in prof.segments] == ["yolox_subgraph_0", "yolox_subgraph_1"]
    assert prof.segments[0].ms == 6.1 and prof.segments[0].device == "npu"
    assert prof.node_ms() == {"/head/Transpose": 0.42}


def test_rknn_eval_perf_table(tmp_path: Path) -> None:
    p = tmp_path / "perf.txt"
    p.write_text(RKNN)
    prof = parse_profile(p)
    assert prof.format == "rknn" and prof.total_ms == pytest.approx(1.287)
    by = {n.name: n for n in prof.nodes}
    assert by["Conv_0"].op_type == "ConvSigmoid" and by["Conv_0"].ms == pytest.approx(0.845)
    assert by["Transpose_300"].device == "cpu" and by["Concat_9"].device == "npu"
    assert len(prof.nodes) == 4


def test_ort_profile_json(tmp_path: Path) -> None:
    p = tmp_path / "onnxruntime_profile.json"
    p.write_text(json.dumps(ORT))
    prof = parse_profile(p)
    assert prof.format == "ort" and prof.total_ms == pytest.approx(4.5)  # median of runs after the first
    assert prof.node_ms() == {"Conv_0": pytest.approx(1.1), "Sigmoid_1": pytest.approx(0.25)}
    assert {n.op_type for n in prof.nodes} == {"Conv", "Sigmoid"}


def test_bad_files_name_the_problem(tmp_path: Path) -> None:
    p = tmp_path / "x.txt"
    p.write_text("nothing here\n")
    with pytest.raises(ConfigError, match="x.txt.*RKNN"):
        parse_profile(p)
    with pytest.raises(ConfigError, match="unknown format"):
        parse_profile(p, "tensorrt")
