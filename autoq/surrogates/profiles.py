"""Parsers for on-device profiler outputs, turned into one ``Profile`` record.

Supported (see /work/shared/docs/compiler-formats.md, "Latency" lines):

* Horizon ``hrt_model_exec perf --profile_path`` -> ``profiler.log`` (JSON):
  ``perf_result{FPS, average_latency}`` and ``model_latency{<BPU subgraph | CPU node>: {avg_time,
  max_time, min_time}}`` in ms. BPU subgraph entries become ``segments`` (device npu), CPU node
  entries become ``nodes`` (device cpu).
* RKNN ``eval_perf`` per-layer table (text): rows with layer id, op type, (data type), target,
  name and ``Time(us)``; the header row names the columns, the ``Total ... Time(us)`` line is the total.
* ONNX Runtime profiling JSON (chrome trace): events with ``cat == "Node"`` and a name ending in
  ``_kernel_time``, ``args.op_name`` the op type, ``dur`` in us; ``model_run`` events give the total.

Example:
    >>> prof = parse_profile("profiler.log")                   # doctest: +SKIP
    >>> prof.total_ms, prof.segments[:1], prof.nodes[:1]       # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoq.errors import ConfigError

__all__ = ["NodeTime", "Profile", "parse_horizon", "parse_ort", "parse_profile", "parse_rknn"]


@dataclass(frozen=True)
class NodeTime:
    """One timed entry of a profile: a node (or fused layer / subgraph), its op type and ms."""

    name: str
    op_type: str
    ms: float
    device: str = ""


@dataclass(frozen=True)
class Profile:
    """Whole-model latency plus whatever finer timings the profiler gave (all ms)."""

    format: str
    total_ms: float | None
    nodes: tuple[NodeTime, ...] = ()
    segments: tuple[NodeTime, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)

    def node_ms(self) -> dict[str, float]:
        """Time per node name (entries with the same name summed)."""
        out: dict[str, float] = {}
        for n in self.nodes:
            out[n.name] = out.get(n.name, 0.0) + n.ms
        return out


def parse_profile(path: str | Path, fmt: str | None = None) -> Profile:
    """Parses ``path`` as ``fmt`` (horizon | rknn | ort), or detects the format from the content."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ConfigError(f"profile {path}: cannot read it ({exc})") from None
    if fmt is None:
        stripped = text.lstrip()
        if stripped.startswith("["):
            fmt = "ort"
        elif stripped.startswith("{"):
            fmt = "ort" if '"traceEvents"' in text[:2000] else "horizon"
        else:
            fmt = "rknn"
    parsers = {"horizon": parse_horizon, "rknn": parse_rknn, "ort": parse_ort}
    if fmt not in parsers:
        raise ConfigError(f"profile {path}: unknown format {fmt!r}; known: {', '.join(parsers)}")
    try:
        return parsers[fmt](text)
    except ConfigError as exc:
        raise ConfigError(f"profile {path}: {exc}") from None


def parse_horizon(text: str) -> Profile:
    """``hrt_model_exec perf`` profiler.log JSON."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not a Horizon profiler.log JSON ({exc})") from None
    perf = data.get("perf_result") or {}
    total = perf.get("average_latency")
    if total is None and perf.get("FPS"):
        total = 1000.0 / float(perf["FPS"])
    lat = data.get("model_latency") or {}
    if not isinstance(lat, Mapping):
        raise ConfigError("model_latency must map subgraph/node name -> {avg_time, ...}")
    nodes: list[NodeTime] = []
    segments: list[NodeTime] = []
    for name, entry in lat.items():
        ms = entry.get("avg_time") if isinstance(entry, Mapping) else entry
        if ms is None:
            continue
        if re.search(r"subgraph_\d+$", name) or "BPU" in name.upper():
            segments.append(NodeTime(name, "subgraph", float(ms), "npu"))
        else:
            nodes.append(NodeTime(name, "", float(ms), "cpu"))
    if total is None and not lat:
        raise ConfigError("no perf_result.average_latency and no model_latency entries")
    return Profile("horizon", None if total is None else float(total), tuple(nodes), tuple(segments),
                   {"fps": perf.get("FPS")})


_RKNN_TIME = re.compile(r"time\s*\(\s*us\s*\)", re.I)


def parse_rknn(text: str) -> Profile:
    """RKNN ``eval_perf`` per-layer table (rknn-toolkit2 text output)."""
    header: list[str] | None = None
    nodes: list[NodeTime] = []
    total: float | None = None
    for raw in text.splitlines():
        line = raw.replace("|", " ").strip()
        if not line or set(line) <= set("-=+ "):
            continue
        cols = line.split()
        low = [c.lower() for c in cols]
        if header is None and any(_RKNN_TIME.search(c) for c in cols) and any(c.startswith("op") for c in low):
            header = low
            continue
        if line.lower().startswith("total"):
            nums = re.findall(r"[-+]?\d+(?:\.\d+)?", line)
            if nums and _RKNN_TIME.search(line):
                total = float(nums[0]) / 1e3
            elif nums and total is None:
                total = float(nums[-1]) / 1e3
            continue
        if header is None or not cols[0].isdigit():
            continue
        if len(cols) > len(header):  # a last column (the name) with spaces
            cols = cols[: len(header) - 1] + [" ".join(cols[len(header) - 1 :])]
        row = dict(zip(header, cols))
        t_key = next((k for k in header if _RKNN_TIME.search(k)), None)
        try:
            us = float(row.get(t_key, "nan")) if t_key else float("nan")
        except ValueError:
            continue
        if us != us:
            continue
        op = next((row[k] for k in header if k in ("optype", "op_type", "op") and k in row), "")
        name = next((row[k] for k in header if k in ("name", "fullname", "layername", "opname") and k in row), cols[0])
        target = next((row[k] for k in header if k in ("target", "device") and k in row), "")
        device = "cpu" if target.lower() == "cpu" else "npu"
        nodes.append(NodeTime(name, op, us / 1e3, device))
    if header is None:
        raise ConfigError("no RKNN eval_perf table header (a row with 'OpType' and 'Time(us)')")
    if total is None and nodes:
        total = sum(n.ms for n in nodes)
    return Profile("rknn", total, tuple(nodes))


def parse_ort(text: str) -> Profile:
    """ONNX Runtime profiling JSON (``SessionOptions.enable_profiling``)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not an ONNX Runtime profile JSON ({exc})") from None
    events = data.get("traceEvents", []) if isinstance(data, Mapping) else data
    if not isinstance(events, list):
        raise ConfigError("expected a list of trace events")
    per_run: dict[str, list[float]] = {}
    op_of: dict[str, str] = {}
    runs: list[float] = []
    for ev in events:
        if not isinstance(ev, Mapping):
            continue
        name = str(ev.get("name", ""))
        dur = ev.get("dur")
        if dur is None:
            continue
        if ev.get("cat") == "Node" and name.endswith("_kernel_time"):
            node = name[: -len("_kernel_time")]
            per_run.setdefault(node, []).append(float(dur) / 1e3)
            args = ev.get("args") or {}
            op_of[node] = str(args.get("op_name", op_of.get(node, "")))
        elif ev.get("cat") == "Session" and name == "model_run":
            runs.append(float(dur) / 1e3)
    if not per_run and not runs:
        raise ConfigError("no Node *_kernel_time or Session model_run events")
    # Several runs in one trace: the median per node; the first model_run (warm-up) is dropped.
    nodes = tuple(NodeTime(n, op_of.get(n, ""), statistics.median(v), "cpu") for n, v in per_run.items())
    timed = runs[1:] if len(runs) > 1 else runs
    total = statistics.median(timed) if timed else sum(n.ms for n in nodes)
    return Profile("ort", total, nodes, (), {"runs": len(runs)})
