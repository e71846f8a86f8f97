"""Horizon J6 (nash) ``hb_compile`` quant_config, written as JSON (+ an optional YAML snippet).

hb_compile takes ``calibration_parameters.quant_config`` either inline or as the path of a JSON
file; autoq writes the JSON file::

    {"model_config": {"all_node_type": "int8", "model_output_type": "int8",
                      "activation": {"calibration_type": "max", "max_percentile": 0.9999}},
     "op_config": {},
     "node_config": {"<node>": {"qtype": "int16"}, "<node>": {"qtype": "float32"}}}

* the trial's default precision -> ``all_node_type`` (int8 | int16 | float32);
* every node whose precision differs from the default -> ``node_config`` ``qtype``; float nodes get
  ``float32`` (runs on the CPU, like autoq's "left unquantized"), or ``float16`` with
  ``float_type="float16"`` (nash runs float16 on the BPU);
* the range method -> ``activation.calibration_type`` (+ ``max_percentile``).

JSON has no comments and hb_compile validates quant_config keys, so provenance and assumptions go
to a sidecar ``<file>.autoq.txt``; the optional YAML snippet (``yaml_snippet=True``) carries them
as a comment header.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autoq.errors import ConfigError, ExportError
from autoq.export.base import (
    EXPORTERS,
    ExportContext,
    check_choice,
    check_model_nodes,
    comment_block,
    header_lines,
    out_file,
    percentile_fraction,
    precision_counts,
    provenance_sidecar,
)
from autoq.plan import Precision

__all__ = ["read_horizon_j6", "write_horizon_j6"]

QTYPES = ("int8", "int16", "float16", "float32")
FLOAT_TYPES = ("float32", "float16")
CALIBRATION_TYPES = ("default", "mix", "kl", "max", "skip")
DEFAULT_MAX_PERCENTILE = 0.99995


@EXPORTERS.register("horizon-j6")
def write_horizon_j6(
    ctx: ExportContext,
    out: Path,
    *,
    float_type: str = "float32",
    model_output_type: str | None = None,
    yaml_snippet: bool = False,
) -> list[Path]:
    """Writes ``<label>_quant_config.json`` (+ sidecar, + ``<label>_quant_config.yaml`` snippet).

    ``float_type`` is the qtype of float nodes (``float32`` = CPU, ``float16`` = nash BPU).
    ``model_output_type`` defaults to ``all_node_type``. Returns the files written.
    """
    check_choice("float_type", float_type, FLOAT_TYPES)
    check_model_nodes(ctx)
    qtype = {Precision.INT8: "int8", Precision.INT16: "int16", Precision.FLOAT: float_type}
    default = ctx.config.default
    all_type = qtype[default]
    output_type = model_output_type or all_type
    check_choice("model_output_type", output_type, QTYPES)

    assignment = ctx.assignment()
    node_config = {name: {"qtype": qtype[p]} for name, p in assignment.items() if p is not default}
    cal = ctx.config.calibration
    cal_type, max_percentile, note = _calibration(cal.method, cal.percentile)
    activation: dict[str, Any] = {"calibration_type": cal_type}
    if max_percentile is not None:
        activation["max_percentile"] = max_percentile
    data = {
        "model_config": {
            "all_node_type": all_type,
            "model_output_type": output_type,
            "activation": activation,
        },
        "op_config": {},
        "node_config": node_config,
    }

    path = out_file(ctx, out, "_quant_config.json")
    counts = precision_counts(ctx)
    assumptions = [
        f"node names are those of {ctx.model_path}; hb_compile reports node_config names it cannot find",
        f"all_node_type is the trial's default ({default.value}); node_config lists the "
        f"{len(node_config)} nodes that differ from it",
        f"float nodes use qtype {float_type}" + (" (CPU)" if float_type == "float32" else " (nash BPU)"),
        "weights: hb_compile quantizes weights per channel; the trial's weight granularity "
        f"({cal.granularity}) is not expressible in quant_config",
        f"model_output_type: {output_type}",
    ]
    if note:
        assumptions.append(f"calibration_type: {note}")
    run = f"hb_compile --config <your hb_compile yaml with calibration_parameters.quant_config: {path.name}>"
    header = header_lines(
        ctx,
        "hb_compile (J6) quant_config",
        counts=f"{counts['int8']} int8, {counts['int16']} int16, {counts['float']} float",
        assumptions=assumptions,
        run=run,
    )
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    files = [path, provenance_sidecar(path, header)]
    if yaml_snippet:
        import yaml

        snippet = path.with_suffix(".yaml")
        calib = {
            "cal_data_dir": str(ctx.calib_dir) if ctx.calib_dir is not None else "./calibration_data",
            "quant_config": path.name,
        }
        body = yaml.safe_dump({"calibration_parameters": calib}, sort_keys=False, allow_unicode=True, width=4096)
        text = comment_block(header + ["paste calibration_parameters into the hb_compile YAML; "
                                       "quant_config is the JSON next to this file"]) + "\n" + body
        snippet.write_text(text, encoding="utf-8")
        files.append(snippet)
    return files


def read_horizon_j6(path: Path) -> tuple[dict[str, Precision], dict[str, Any]]:
    """Parses a quant_config JSON strictly (only model_config, op_config and node_config).

    Returns (node -> precision of the nodes in ``node_config``, calibration) where calibration has
    ``default`` (the Precision of ``all_node_type``), ``model_output_type``, ``calibration_type`` and
    ``max_percentile``. float16/float32 read as float.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"quant_config {path}: cannot read it ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"quant_config {path}: not valid JSON ({exc})") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"quant_config {path}: expected an object with model_config, op_config, node_config")
    unknown = set(data) - {"model_config", "op_config", "node_config"}
    if unknown:
        raise ConfigError(f"quant_config {path}: unknown keys {sorted(unknown)}")
    model = data.get("model_config") or {}
    all_type = model.get("all_node_type", "int8")
    default = _precision(all_type, path, "model_config.all_node_type")
    activation = model.get("activation") or {}
    cal_type = activation.get("calibration_type", "default")
    if isinstance(cal_type, list):  # hb_compile also accepts a list of candidates
        cal_type = cal_type[0] if len(cal_type) == 1 else cal_type
    if isinstance(cal_type, str) and cal_type not in CALIBRATION_TYPES:
        raise ConfigError(f"quant_config {path}: calibration_type {cal_type!r} is not one of {CALIBRATION_TYPES}")
    nodes: dict[str, Precision] = {}
    node_config = data.get("node_config") or {}
    if not isinstance(node_config, Mapping):
        raise ConfigError(f"quant_config {path}: node_config must be an object")
    for name, spec in node_config.items():
        if not isinstance(spec, Mapping):
            raise ConfigError(f"quant_config {path}: node_config[{name!r}] must be an object")
        if "qtype" in spec:
            nodes[str(name)] = _precision(spec["qtype"], path, f"node_config[{name!r}].qtype")
        elif str(spec.get("ON", "")).upper() == "CPU":
            nodes[str(name)] = Precision.FLOAT
        else:
            raise ConfigError(f"quant_config {path}: node_config[{name!r}] has neither qtype nor ON")
    mp = activation.get("max_percentile")
    calibration = {
        "default": default,
        "model_output_type": model.get("model_output_type", all_type),
        "calibration_type": cal_type,
        "max_percentile": float(mp) if mp is not None else None,
    }
    return nodes, calibration


def _precision(qtype: object, path: Path, where: str) -> Precision:
    if qtype not in QTYPES:
        raise ConfigError(f"quant_config {path}: {where} {qtype!r} is not one of {', '.join(QTYPES)}")
    return {"int8": Precision.INT8, "int16": Precision.INT16}.get(str(qtype), Precision.FLOAT)


def _calibration(method: str, percentile: float | None) -> tuple[str, float | None, str]:
    """autoq range method -> (calibration_type, max_percentile, note when not exact)."""
    m = (method or "minmax").lower()
    if m in ("minmax", "max"):
        return "max", None, ""
    if m == "percentile":
        p = percentile_fraction(percentile)
        if p is None:
            return "max", DEFAULT_MAX_PERCENTILE, f"no percentile given; hb_compile's usual {DEFAULT_MAX_PERCENTILE}"
        return "max", p, ""
    if m in ("entropy", "kl"):
        return "kl", None, f"nearest equivalent of autoq method {method!r} (KL-divergence thresholds)"
    if not m:
        raise ExportError("calibration method is empty; set calibration.method")
    return "default", None, (
        f"nearest equivalent: autoq method {method!r} has no hb_compile counterpart; "
        "'default' lets hb_compile choose"
    )
