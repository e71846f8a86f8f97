"""Horizon hb_mapper ``makertbin`` YAML (OE 1.x: X3 = bernoulli2, J5 = bayes, X5 = bayes-e).

What a trial decides maps onto hb_mapper like this:

* float nodes -> ``node_info: {name: {ON: CPU}}`` (bayes, bayes-e) or ``run_on_cpu: 'a;b'``
  (bernoulli2, which has no node_info);
* int16 nodes -> ``node_info: {name: {ON: BPU, InputType: int16, OutputType: int16}}``; bernoulli2
  has no int16, so such a config is refused rather than silently downgraded;
* int8 is hb_mapper's default and is not listed;
* weight granularity -> ``per_channel``; the range method -> ``calibration_type`` (+ ``max_percentile``).

The body is written with ``yaml.safe_dump`` so any node name stays valid YAML; the provenance and
assumptions go in a leading comment block.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autoq.errors import ConfigError, ExportError
from autoq.export.base import EXPORTERS, ExportContext
from autoq.plan import Precision

__all__ = ["MARCH_BY_TARGET", "march_for_target", "read_horizon", "write_horizon"]

MARCHES = ("bernoulli2", "bayes", "bayes-e")
MARCH_BY_TARGET = {"horizon-x3": "bernoulli2", "horizon-j5": "bayes", "horizon-x5": "bayes-e"}
_CHIP = {"bernoulli2": "X3", "bayes": "J5", "bayes-e": "X5"}
INPUT_TYPES_RT = ("rgb", "bgr", "yuv444", "nv12", "gray", "featuremap")
LAYOUTS = ("NCHW", "NHWC")
CAL_DATA_TYPES = ("float32", "uint8")
COMPILE_MODES = ("latency", "bandwidth")
OPTIMIZE_LEVELS = ("O0", "O1", "O2", "O3")
DEFAULT_MAX_PERCENTILE = 0.99995  # hb_mapper's usual choice when a percentile is not given


def march_for_target(target: str) -> str:
    """The hb_mapper ``march`` for an autoq target name; unknown targets get ``bayes`` (J5-class)."""
    return MARCH_BY_TARGET.get(target, "bayes")


@EXPORTERS.register("horizon")
def write_horizon(
    ctx: ExportContext,
    out: Path,
    *,
    march: str | None = None,
    input_type_rt: str | None = None,
    input_layout_rt: str | None = None,
    working_dir: str = "model_output",
    output_model_file_prefix: str | None = None,
    cal_data_type: str = "float32",
    compile_mode: str = "latency",
    optimize_level: str = "O3",
    core_num: int | None = None,
) -> list[Path]:
    """Writes the hb_mapper makertbin YAML for one trial; returns ``[path]``.

    ``out`` is the YAML file, or a directory to write ``<study>_trial<N>_hb_mapper.yaml`` into.
    ``march`` defaults from ``ctx.target`` (horizon-x3 -> bernoulli2, horizon-j5 -> bayes,
    horizon-x5 -> bayes-e, anything else -> bayes). ``input_type_rt`` defaults to the training
    colour order; ``nv12`` is allowed. ``cal_data_type`` describes the files in ``ctx.calib_dir``.
    """
    import yaml

    march = march or march_for_target(ctx.target)
    _choice("march", march, MARCHES)
    type_train = ctx.preprocess.color
    type_rt = input_type_rt or type_train
    _choice("input_type_rt", type_rt, INPUT_TYPES_RT)
    if input_layout_rt is not None:
        _choice("input_layout_rt", input_layout_rt, LAYOUTS)
    _choice("cal_data_type", cal_data_type, CAL_DATA_TYPES)
    _choice("compile_mode", compile_mode, COMPILE_MODES)
    _choice("optimize_level", optimize_level, OPTIMIZE_LEVELS)
    if core_num is not None and core_num not in (1, 2):
        raise ConfigError(f"export option core_num must be 1 or 2, got {core_num!r}")

    stray = ctx.overrides_outside_model()
    if stray:
        raise ExportError(
            f"the config overrides nodes that {ctx.model_path} does not have: {_names(stray)}; "
            "export the trial together with the model variant it was searched on"
        )
    assignment = ctx.assignment()
    floats = [n for n, p in assignment.items() if p is Precision.FLOAT]
    int16s = [n for n, p in assignment.items() if p is Precision.INT16]
    if march == "bernoulli2" and int16s:
        raise ExportError(
            f"march bernoulli2 (X3) has no int16: nodes {_names(int16s)}; use target horizon-x3 so the "
            "search excludes int16, or pick another trial"
        )

    prefix = output_model_file_prefix or ctx.label()
    model: dict[str, Any] = {
        "onnx_model": str(ctx.model_path),
        "march": march,
        "working_dir": working_dir,
        "output_model_file_prefix": prefix,
    }
    if march != "bernoulli2" and (floats or int16s):
        node_info: dict[str, dict[str, str]] = {}
        for name, p in assignment.items():
            if p is Precision.FLOAT:
                node_info[name] = {"ON": "CPU"}
            elif p is Precision.INT16:
                node_info[name] = {"ON": "BPU", "InputType": "int16", "OutputType": "int16"}
        model["node_info"] = node_info

    pre = ctx.preprocess
    inputs: dict[str, Any] = {
        "input_name": ctx.input_name,
        "input_type_train": type_train,
        "input_layout_train": "NCHW",
        "input_type_rt": type_rt,
    }
    if type_rt != "nv12":  # NV12 is a fixed planar format: hb_mapper takes no layout for it
        inputs["input_layout_rt"] = input_layout_rt or "NCHW"
    inputs["input_shape"] = "x".join(str(int(d)) for d in ctx.input_shape)
    mean = [float(m) for m in pre.mean]
    std = [float(s) for s in pre.std]
    if all(m == 0.0 for m in mean) and all(s == 1.0 for s in std):
        inputs["norm_type"] = "no_preprocess"
    else:
        inputs["norm_type"] = "data_mean_and_scale"
        inputs["mean_value"] = " ".join(_num(m) for m in mean)
        inputs["scale_value"] = " ".join(_num(1.0 / s) for s in std)

    cal = ctx.config.calibration
    cal_type, max_percentile, cal_note = _calibration_type(cal.method, cal.percentile)
    calib: dict[str, Any] = {
        "cal_data_dir": str(ctx.calib_dir) if ctx.calib_dir is not None else "./calibration_data",
        "cal_data_type": cal_data_type,
        "calibration_type": cal_type,
    }
    if max_percentile is not None:
        calib["max_percentile"] = max_percentile
    calib["per_channel"] = cal.granularity == "per_channel"
    if march == "bernoulli2" and floats:
        calib["run_on_cpu"] = ";".join(floats)

    compiler: dict[str, Any] = {"compile_mode": compile_mode, "optimize_level": optimize_level}
    if core_num is not None:
        compiler["core_num"] = core_num

    body = yaml.safe_dump(
        {
            "model_parameters": model,
            "input_parameters": inputs,
            "calibration_parameters": calib,
            "compiler_parameters": compiler,
        },
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=4096,
    )
    if cal_note:
        body = _annotate(body, "calibration_parameters:", "  calibration_type: ", cal_note)
    header = _header(ctx, march, assignment, type_rt, cal_data_type, cal_note)

    out = Path(out)
    if out.is_dir() or not out.suffix:
        out.mkdir(parents=True, exist_ok=True)
        out = out / f"{ctx.label()}_hb_mapper.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + body, encoding="utf-8")
    return [out]


def read_horizon(path: Path) -> tuple[dict[str, Precision], dict[str, Any]]:
    """Parses an hb_mapper YAML back into (node -> precision of listed nodes, calibration).

    Nodes come from ``node_info`` (mapping or ``"n1:int16;n2:int16"`` string; ``ON: CPU`` -> float,
    an int16 input/output type -> int16, otherwise int8) and from ``run_on_cpu`` (float).
    The calibration dict has ``granularity``, ``calibration_type`` and ``max_percentile``.
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"hb_mapper config {path}: cannot read it as YAML ({exc}); check the file") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"hb_mapper config {path}: expected the groups model_parameters, input_parameters, ...")
    model = data.get("model_parameters") or {}
    calib = data.get("calibration_parameters") or {}

    nodes: dict[str, Precision] = {}
    info = model.get("node_info") or {}
    if isinstance(info, str):
        for item in info.split(";"):
            name, sep, kind = item.strip().rpartition(":")
            if not sep:
                continue
            kind = kind.strip().lower()
            nodes[name.strip()] = (
                Precision.FLOAT if kind == "cpu" else Precision.INT16 if kind == "int16" else Precision.INT8
            )
    elif isinstance(info, Mapping):
        for name, spec in info.items():
            spec = spec or {}
            if str(spec.get("ON", "BPU")).upper() == "CPU":
                nodes[str(name)] = Precision.FLOAT
            elif any(k.startswith(("InputType", "OutputType")) and str(v) == "int16" for k, v in spec.items()):
                nodes[str(name)] = Precision.INT16
            else:
                nodes[str(name)] = Precision.INT8
    else:
        raise ConfigError(f"hb_mapper config {path}: model_parameters.node_info must be a mapping or a string")
    run_on_cpu = calib.get("run_on_cpu") or ""
    names = run_on_cpu if isinstance(run_on_cpu, list) else str(run_on_cpu).split(";")
    for name in names:
        if str(name).strip():
            nodes[str(name).strip()] = Precision.FLOAT

    per_channel = calib.get("per_channel", False)
    if isinstance(per_channel, str):
        per_channel = per_channel.strip().lower() == "true"
    max_percentile = calib.get("max_percentile")
    calibration = {
        "granularity": "per_channel" if per_channel else "per_tensor",
        "calibration_type": calib.get("calibration_type", "default"),
        "max_percentile": float(max_percentile) if max_percentile is not None else None,
    }
    return nodes, calibration


# --------------------------------------------------------------------------- helpers


def _choice(option: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"export option {option} must be one of {', '.join(allowed)}, got {value!r}")


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} ... ({len(names)} in all)"


def _num(value: float) -> str:
    """Compact, exact-enough decimal (10 significant digits) for mean/scale strings."""
    return f"{value:.10g}"


def _calibration_type(method: str, percentile: float | None) -> tuple[str, float | None, str]:
    """autoq range method -> (hb_mapper calibration_type, max_percentile, note if not exact)."""
    m = (method or "minmax").lower()
    if m in ("minmax", "max"):
        return "max", None, ""
    if m == "percentile":
        if percentile is None:
            return "max", DEFAULT_MAX_PERCENTILE, f"no percentile given; hb_mapper's usual {DEFAULT_MAX_PERCENTILE}"
        p = float(percentile)
        p = p / 100.0 if p > 1.0 else p
        if not 0.0 < p <= 1.0:
            raise ExportError(f"calibration percentile {percentile!r} is not in (0, 100]; fix calibration.percentile")
        return "max", round(p, 10), ""
    if m in ("entropy", "kl"):
        return "kl", None, f"nearest equivalent of autoq method {method!r} (KL-divergence thresholds)"
    return "default", None, (
        f"nearest equivalent: autoq method {method!r} has no hb_mapper counterpart; "
        "'default' lets hb_mapper choose among max, max-percentile and kl"
    )


def _annotate(body: str, group: str, prefix: str, note: str) -> str:
    """Appends ``# note`` to the first line starting with ``prefix`` after the ``group`` line."""
    lines = body.split("\n")
    in_group = False
    for i, line in enumerate(lines):
        if line == group:
            in_group = True
        elif in_group and line.startswith(prefix):
            lines[i] = f"{line}  # {_one_line(note)}"
            break
    return "\n".join(lines)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _header(
    ctx: ExportContext,
    march: str,
    assignment: Mapping[str, Precision],
    type_rt: str,
    cal_data_type: str,
    cal_note: str,
) -> str:
    counts = {p.value: 0 for p in Precision}
    for p in assignment.values():
        counts[p.value] += 1
    pre = ctx.preprocess
    _, _, h, w = (tuple(ctx.input_shape) + (0, 0, 0, 0))[:4]
    drop = "unknown" if ctx.map_drop is None else f"{ctx.map_drop:.4g}"
    latency = "unknown" if ctx.latency_ms is None else f"{ctx.latency_ms:.4g} ms"
    source = f"target {ctx.target}" if ctx.target in MARCH_BY_TARGET else f"default for target {ctx.target}"
    raw = all(float(m) == 0.0 for m in pre.mean) and all(float(s) == 1.0 for s in pre.std)
    geometry = f"letterbox (pad {pre.pad_value})" if pre.resize == "letterbox" else "plain resize"
    lines = [
        "hb_mapper makertbin config written by autoq",
        f"study: {ctx.study or '-'}",
        f"trial: {'-' if ctx.trial is None else ctx.trial}",
        f"predicted mAP drop: {drop} (vs the float model at the same resolution, on autoq's eval set)",
        f"predicted latency: {latency} (autoq cost model for target {ctx.target}, not a board measurement)",
        f"target: {ctx.target}; march: {march} ({_CHIP[march]}, {source})",
        f"nodes: {counts['int8']} int8 (hb_mapper default, not listed), {counts['int16']} int16, "
        f"{counts['float']} float (on CPU)",
        "assumptions:",
        f"  - node names are those of {ctx.model_path}; nodes hb_mapper fuses or renames are not matched,",
        "    so check its log for node_info/run_on_cpu names it could not find",
        f"  - the runtime feeds {type_rt} {h}x{w} images made with {geometry}; input_type_train is "
        f"{pre.color} pixels 0..255"
        + ("" if raw else "; mean/std are applied by norm_type inside the compiled model"),
        f"  - cal_data_dir holds {cal_data_type} {pre.color} NCHW tensors of {h}x{w} images after the same "
        "resize, not normalised",
    ]
    if ctx.calib_dir is None:
        lines.append("  - cal_data_dir was not prepared by autoq: fill in the directory before running hb_mapper")
    if cal_note:
        lines.append(f"  - calibration_type: {cal_note}")
    if march == "bernoulli2":
        lines.append("  - bernoulli2 (X3) has no int16 and no node_info: float nodes are listed in run_on_cpu")
    lines.append("run: hb_mapper makertbin --config <this file> --model-type onnx")
    out = []
    for line in lines:
        lead = line[: len(line) - len(line.lstrip(" "))]
        out.append(f"# {lead}{_one_line(line)}\n")
    return "".join(out) + "\n"
