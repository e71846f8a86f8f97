"""Huawei Ascend: AMCT (ONNX) quantization config JSON + the ATC ``--keep_dtype`` file.

What a trial decides maps onto AMCT and ATC like this:

* every quantizable node gets an AMCT layer entry; float nodes -> ``{"quant_enable": false}``, and
  their names also go to the keep_dtype file (one op name per line) so ATC keeps them in float;
* int8 nodes -> ``quant_enable: true`` with ``activation_quant_params.num_bits: 8``;
* int16 nodes -> ``activation_quant_params.num_bits: 16`` for the op types AMCT quantizes to INT16
  activations (`INT16_OPS`: Conv, ConvTranspose, Gemm, MatMul — assumed, check your AMCT version);
  int16 on any other op type is refused (``ExportError`` naming the nodes);
* weights always ``{"wts_algo": "arq_quantize", "channel_wise": <per_channel>, "num_bits": 8}``;
* the range method -> IFMR ``max_percentile``/``min_percentile`` (minmax -> 1.0, percentile -> p,
  anything else -> AMCT's default 0.999999 with a note).

AMCT reads every top-level key other than its own as a layer name, so provenance and assumptions
go to a sidecar ``<file>.autoq.txt``. The keep_dtype file has no comment syntax either and is
written even when empty (then leave ``--keep_dtype`` out).
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
    check_model_nodes,
    header_lines,
    join_names,
    out_file,
    percentile_fraction,
    precision_counts,
    provenance_sidecar,
)
from autoq.plan import Precision

__all__ = ["INT16_OPS", "read_ascend", "read_keep_dtype", "write_ascend"]

INT16_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
AMCT_DEFAULT_PERCENTILE = 0.999999
_GLOBAL_KEYS = ("version", "batch_num", "activation_offset", "do_fusion", "skip_fusion_layers", "skip_layers")


@EXPORTERS.register("ascend")
def write_ascend(ctx: ExportContext, out: Path, *, batch_num: int = 1) -> list[Path]:
    """Writes ``<label>_amct.json``, ``<label>_keep_dtype.txt`` and the JSON's ``.autoq.txt`` sidecar."""
    if batch_num < 1:
        raise ConfigError("export option batch_num must be >= 1")
    check_model_nodes(ctx)
    assignment = ctx.assignment()
    bad16 = [n for n, p in assignment.items() if p is Precision.INT16 and ctx.node_ops.get(n) not in INT16_OPS]
    if bad16:
        raise ExportError(
            f"AMCT quantizes only {', '.join(sorted(INT16_OPS))} to int16 activations: nodes {join_names(bad16)} "
            "are other op types; pick a trial without them"
        )
    clashes = [n for n in assignment if n in _GLOBAL_KEYS]
    if clashes:
        raise ExportError(f"node names {join_names(clashes)} clash with AMCT's global config keys; rename them")

    cal = ctx.config.calibration
    percentile, note = _percentile(cal.method, cal.percentile)
    data: dict[str, Any] = {
        "version": 1,
        "batch_num": int(batch_num),
        "activation_offset": True,
        "do_fusion": True,
        "skip_fusion_layers": [],
    }
    floats: list[str] = []
    for name, p in assignment.items():
        if p is Precision.FLOAT:
            data[name] = {"quant_enable": False}
            floats.append(name)
            continue
        data[name] = {
            "quant_enable": True,
            "activation_quant_params": {
                "num_bits": 16 if p is Precision.INT16 else 8,
                "max_percentile": percentile,
                "min_percentile": percentile,
                "search_range": [0.7, 1.3],
                "search_step": 0.01,
            },
            "weight_quant_params": {
                "wts_algo": "arq_quantize",
                "channel_wise": cal.granularity == "per_channel",
                "num_bits": 8,
            },
        }

    path = out_file(ctx, out, "_amct.json")
    keep = path.with_name(path.name.removesuffix(".json").removesuffix("_amct") + "_keep_dtype.txt")
    counts = precision_counts(ctx)
    assumptions = [
        f"layer names are node names of {ctx.model_path}; AMCT warns about names it cannot find",
        "activation_offset true = asymmetric activations, as autoq's QDQ model uses",
        f"int16 activations (num_bits 16) assumed supported by AMCT for {', '.join(sorted(INT16_OPS))}",
        f"{keep.name} lists the {len(floats)} float nodes for atc --keep_dtype"
        + ("" if floats else " (empty: leave --keep_dtype out)"),
    ]
    if note:
        assumptions.append(f"max_percentile: {note}")
    header = header_lines(
        ctx,
        "AMCT quantization config (JSON) + ATC keep_dtype list",
        counts=f"{counts['int8']} int8, {counts['int16']} int16, {counts['float']} float (quant_enable false)",
        assumptions=assumptions,
        run=(f"amct_onnx calibration --model {ctx.model_path} --calibration_config {path.name} ...; then "
             f"atc --model=<quantized deploy onnx> --framework=5 --keep_dtype={keep.name} ..."),
    )
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    keep.write_text("".join(f"{n}\n" for n in floats), encoding="utf-8")
    return [path, keep, provenance_sidecar(path, header)]


def read_ascend(path: Path) -> tuple[dict[str, Precision], dict[str, Any]]:
    """Parses an AMCT JSON config strictly.

    Returns (layer -> precision: quant_enable false -> float, num_bits 16 -> int16, else int8;
    calibration) where calibration has ``granularity`` (from the layers' ``channel_wise``, which must
    agree), ``max_percentile``, ``batch_num`` and ``activation_offset``.
    """
    path = Path(path)
    where = f"AMCT config {path}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read it as JSON ({exc})") from None
    if not isinstance(data, Mapping) or "version" not in data:
        raise ConfigError(f"{where}: expected an object with version, batch_num and layer entries")
    nodes: dict[str, Precision] = {}
    channel_wise: set[bool] = set()
    percentiles: set[float] = set()
    for name, spec in data.items():
        if name in _GLOBAL_KEYS:
            continue
        if not isinstance(spec, Mapping) or not isinstance(spec.get("quant_enable"), bool):
            raise ConfigError(f"{where}: layer {name!r} needs an object with a boolean quant_enable")
        if not spec["quant_enable"]:
            nodes[name] = Precision.FLOAT
            continue
        act = spec.get("activation_quant_params") or {}
        bits = act.get("num_bits", 8)
        if bits not in (8, 16):
            raise ConfigError(f"{where}: layer {name!r} activation num_bits {bits!r} is not 8 or 16")
        nodes[name] = Precision.INT16 if bits == 16 else Precision.INT8
        if "max_percentile" in act:
            percentiles.add(float(act["max_percentile"]))
        wts = spec.get("weight_quant_params") or {}
        if "channel_wise" in wts:
            channel_wise.add(bool(wts["channel_wise"]))
    if len(channel_wise) > 1:
        raise ConfigError(f"{where}: layers disagree on weight channel_wise")
    calibration = {
        "granularity": "per_channel" if channel_wise == {True} else "per_tensor",
        "max_percentile": percentiles.pop() if len(percentiles) == 1 else sorted(percentiles) or None,
        "batch_num": data.get("batch_num"),
        "activation_offset": data.get("activation_offset"),
    }
    return nodes, calibration


def read_keep_dtype(path: Path) -> list[str]:
    """The op names of an ATC ``--keep_dtype`` file (one per line, blank lines skipped)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"keep_dtype file {path}: cannot read it ({exc})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _percentile(method: str, percentile: float | None) -> tuple[float, str]:
    m = (method or "minmax").lower()
    if m in ("minmax", "max"):
        return 1.0, ""
    if m == "percentile":
        p = percentile_fraction(percentile)
        return (p, "") if p is not None else (AMCT_DEFAULT_PERCENTILE, "no percentile given; AMCT's default")
    return AMCT_DEFAULT_PERCENTILE, f"nearest equivalent: autoq method {method!r} -> AMCT's default IFMR search"
