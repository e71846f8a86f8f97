"""Huawei Ascend bundle: AMCT (``amct_onnx calibration``) simplified config + ATC command.

``autoq export --format ascend -o DIR`` writes::

    DIR/<label>_amct.cfg      AMCT's post-training simplified config (proto text,
                              AMCT install dir ``amct_onnx/proto/calibration_config_onnx.proto``)
    DIR/model.onnx            the model the layer names belong to
    DIR/calib/0000.bin ...    calibration inputs as ``--data_dir`` reads them: raw float32, C order,
                              shape ``--input_shape`` (1, 3, H, W) = autoq's exact model input
                              (``to_input(ctx.calib_images(), ctx.preprocess)``), one batch per file
    DIR/keep_dtype.cfg        (only with ``keep_float=True``) float node names, one per line, for ATC
    DIR/run.sh                amct_onnx calibration ... then atc ... on the deploy model

What a trial decides maps onto AMCT like this (AMCT PTQ docs, "训练后量化支持量化的层": Conv, Gemm,
MatMul, ConvTranspose, AveragePool; `AMCT_OPS`):

* ``common_config``: ``arq_quantize {channel_wise: <per_channel>}`` and ``ifmr_quantize`` with the
  range method (minmax -> max/min_percentile 1.0, percentile -> p, else AMCT's default 0.999999);
* float nodes of AMCT's types -> ``skip_layers``; float nodes of other types are not quantized by
  AMCT anyway (they run fp16 after ATC);
* int16 nodes -> ``override_layer_configs`` with ``ifmr_quantize {dst_type: INT16}``: only Conv,
  Gemm and ConvTranspose (`INT16_OPS`); int16 on MatMul/AveragePool is refused (``ExportError``);
  int8/int16 nodes of other types are left to AMCT (not quantized: fp16 after ATC; listed in the header);
* Gemm/MatMul layers get ``arq_quantize {channel_wise: false}`` when the trial is per-channel.

``amct_onnx calibration`` reads only this proto-text form (``--calibration_config``); the JSON
form of ``create_quant_config`` is for the Python API and is not written.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import numpy as np

from autoq.data.preprocess import to_input
from autoq.errors import ConfigError, ExportError
from autoq.export.base import (
    EXPORTERS,
    ExportContext,
    bundle_dir,
    calibration_images,
    check_choice,
    check_model_nodes,
    comment_block,
    copy_model,
    header_lines,
    join_names,
    percentile_fraction,
    precision_counts,
    write_run_script,
)
from autoq.plan import Precision

__all__ = ["AMCT_OPS", "INT16_OPS", "PRECISION_MODES", "read_ascend", "read_keep_dtype", "write_ascend"]

AMCT_OPS = frozenset({"Conv", "Gemm", "MatMul", "ConvTranspose", "AveragePool"})
INT16_OPS = frozenset({"Conv", "ConvTranspose", "Gemm"})
PER_TENSOR_OPS = frozenset({"Gemm", "MatMul"})
AMCT_DEFAULT_PERCENTILE = 0.999999
#: ATC --precision_mode values (ATC docs, --precision_mode); keep_dtype has no effect with must_keep_origin_dtype
PRECISION_MODES = ("force_fp16", "allow_fp32_to_fp16", "force_fp32", "allow_mix_precision", "must_keep_origin_dtype")


SOC_BY_TARGET = {"ascend-310": "Ascend310", "ascend-310p": "Ascend310P3"}  # ATC --soc_version per autoq target

@EXPORTERS.register("ascend")
def write_ascend(
    ctx: ExportContext,
    out: Path,
    *,
    calibration_size: int = 32,
    soc_version: str | None = None,
    precision_mode: str = "force_fp16",
    keep_float: bool = False,
) -> list[Path]:
    """Writes the AMCT + ATC bundle into the folder ``out``; returns the files, the cfg first.

    ``calibration_size``: how many calibration inputs to ship (AMCT ``--batch_num``).
    ``soc_version``: ATC ``--soc_version`` (default from the target: ascend-310 -> Ascend310, else Ascend310P3).
    ``precision_mode``: ATC ``--precision_mode`` for the layers AMCT leaves in float.
    ``keep_float``: keep autoq's float nodes in their original fp32 (ATC ``--keep_dtype``).
    """
    if calibration_size < 1:
        raise ConfigError("export option calibration_size must be >= 1")
    check_choice("precision_mode", precision_mode, PRECISION_MODES)
    if keep_float and precision_mode == "must_keep_origin_dtype":
        raise ConfigError("export option keep_float has no effect with precision_mode must_keep_origin_dtype "
                          "(ATC ignores --keep_dtype then); pick force_fp16 or allow_fp32_to_fp16")
    check_model_nodes(ctx)
    assignment = ctx.assignment()
    op = ctx.node_ops.get
    bad16 = [n for n, p in assignment.items() if p is Precision.INT16 and op(n) in AMCT_OPS - INT16_OPS]
    if bad16:
        raise ExportError(
            f"AMCT quantizes only {', '.join(sorted(INT16_OPS))} to int16 (dst_type INT16): nodes "
            f"{join_names([f'{n} ({op(n)})' for n in bad16])} would be int8; pick a trial without them"
        )
    bad_names = [n for n in assignment if '"' in n or "\\" in n or "\n" in n]
    if bad_names:
        raise ExportError(f"node names with quotes, backslashes or newlines cannot be written to the AMCT cfg: "
                          f"{join_names(bad_names)}; rename them")

    cal = ctx.config.calibration
    percentile, note = _percentile(cal.method, cal.percentile)
    per_channel = cal.granularity == "per_channel"
    floats = [n for n, p in assignment.items() if p is Precision.FLOAT]
    skip = [n for n in floats if op(n) in AMCT_OPS]
    unquantized = [n for n, p in assignment.items() if p is not Precision.FLOAT and op(n) not in AMCT_OPS]
    all_float = not [n for n, p in assignment.items() if p is not Precision.FLOAT and op(n) in AMCT_OPS]
    overrides: list[tuple[str, bool, bool]] = []  # (name, int16, channel_wise false)
    for n, p in assignment.items():
        if p is Precision.FLOAT or op(n) not in AMCT_OPS:
            continue
        int16 = p is Precision.INT16
        per_tensor = per_channel and op(n) in PER_TENSOR_OPS
        if int16 or per_tensor:
            overrides.append((n, int16, per_tensor))

    folder = bundle_dir(out, "ascend")
    label = ctx.label()
    model = copy_model(ctx, folder)
    files: list[Path] = []
    shape = ",".join(str(int(d)) for d in ctx.input_shape)
    input_shape = f"{ctx.input_name}:{shape}"
    amct_out = f"amct_out/{label}"
    deploy = f"{amct_out}_deploy_model.onnx"
    commands: list[str] = []
    cfg_name = f"{label}_amct.cfg"
    calib: list[Path] = []
    if not all_float:
        calib = _write_calibration(ctx, folder / "calib", calibration_size)
        commands.append(" ".join([
            "amct_onnx", "calibration",
            f"--model={model.name}",
            f"--save_path={amct_out}",
            f"--input_shape={shlex.quote(input_shape)}",
            "--data_dir=calib",
            "--data_types=float32",
            f"--calibration_config={cfg_name}",
            f"--batch_num={len(calib)}",
        ]))
    atc = [
        "atc", f"--model={deploy if not all_float else model.name}", "--framework=5",
        f"--output={label}", f"--soc_version={soc_version or SOC_BY_TARGET.get(ctx.target, 'Ascend310P3')}", f"--input_shape={shlex.quote(input_shape)}",
        f"--precision_mode={precision_mode}",
    ]
    keep_path = folder / "keep_dtype.cfg"
    if keep_float and floats:
        keep_path.write_text("".join(f"{n}\n" for n in floats), encoding="utf-8")
        atc.append(f"--keep_dtype={keep_path.name}")
        files.append(keep_path)
    commands.append(" ".join(atc))

    counts = precision_counts(ctx)
    assumptions = [
        f"layer names are node names of model.onnx; AMCT quantizes {', '.join(sorted(AMCT_OPS))} layers only",
        "activation_offset true = asymmetric activations, as autoq's QDQ model uses",
        (
            "calib/*.bin: raw float32 (1, 3, H, W) C-order, autoq's exact model input (preprocessing included); "
            "one file per batch (--batch_num)"
        ),
        f"layers AMCT does not quantize run in ATC's {precision_mode} precision"
        + (f"; float nodes stay fp32 via --keep_dtype ({keep_path.name})" if keep_float and floats else ""),
    ]
    if unquantized:
        assumptions.append(f"quantized in autoq but not an AMCT layer type (run float on Ascend): "
                           f"{join_names(unquantized)}")
    if note:
        assumptions.append(f"max_percentile: {note}")
    header = header_lines(
        ctx,
        "AMCT ONNX post-training quantization config (calibration_config_onnx.proto text)",
        counts=f"{counts['int8']} int8, {counts['int16']} int16, {counts['float']} float",
        assumptions=assumptions,
        run="sh run.sh   (" + "; then ".join(commands) + ")",
    )
    body = _cfg_text(calibration_batches=len(calib) or 1, skip=skip, per_channel=per_channel,
                     percentile=percentile, overrides=overrides)
    cfg = folder / cfg_name
    cfg.write_text(comment_block(header) + body, encoding="utf-8")
    script = write_run_script(folder, commands, comment=[f"autoq export of {label}: AMCT calibration, then ATC"])
    return [cfg, model, script, *files, *calib]


def _ifmr(percentile: float, int16: bool, indent: str) -> list[str]:
    lines = [
        f"{indent}ifmr_quantize : {{",
        f"{indent}    search_range_start : 0.7",
        f"{indent}    search_range_end : 1.3",
        f"{indent}    search_step : 0.01",
        f"{indent}    max_percentile : {percentile:.10g}",
        f"{indent}    min_percentile : {percentile:.10g}",
    ]
    if int16:
        lines.append(f"{indent}    dst_type : INT16")
    return [*lines, f"{indent}}}"]


def _cfg_text(*, calibration_batches: int, skip: list[str], per_channel: bool, percentile: float,
              overrides: list[tuple[str, bool, bool]]) -> str:
    """The proto-text AMCTConfig (field names of calibration_config_onnx.proto)."""
    lines = [f"batch_num : {int(calibration_batches)}", "activation_offset : true"]
    lines += [f'skip_layers : "{n}"' for n in skip]
    lines += ["common_config : {", "    arq_quantize : {", f"        channel_wise : {str(per_channel).lower()}",
              "    }", *_ifmr(percentile, False, "    "), "}"]
    for name, int16, per_tensor in overrides:
        lines += ["override_layer_configs : {", f'    layer_name : "{name}"', "    calibration_config : {",
                  "        arq_quantize : {",
                  f"            channel_wise : {str(per_channel and not per_tensor).lower()}",
                  "        }", *_ifmr(percentile, int16, "        "), "    }", "}"]
    lines += ["do_fusion : true"]
    return "\n".join(lines) + "\n"


def _write_calibration(ctx: ExportContext, folder: Path, limit: int) -> list[Path]:
    """``calib/<k>.bin``: raw float32 (1, 3, H, W) = autoq's exact model input, one batch each."""
    images = calibration_images(ctx, "ascend")[:limit]
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k, image in enumerate(images):
        path = folder / f"{k:04d}.bin"
        np.ascontiguousarray(to_input(image[None], ctx.preprocess), dtype="<f4").tofile(path)
        files.append(path)
    return files


_FIELD = re.compile(r'^\s*(\w+)\s*:\s*(?:"((?:[^"\\]|\\.)*)"|([^{\s][^\s]*))\s*$')


def read_ascend(path: Path) -> tuple[dict[str, Precision], dict[str, Any]]:
    """Parses the AMCT cfg written by `write_ascend`.

    Returns (layer -> precision: ``skip_layers`` -> float, ``dst_type: INT16`` overrides -> int16;
    calibration) where calibration has ``granularity`` (common ``channel_wise``), ``max_percentile``,
    ``batch_num``, ``activation_offset`` and ``per_tensor_layers`` (overrides with channel_wise false).
    """
    path = Path(path)
    where = f"AMCT cfg {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc})") from None
    nodes: dict[str, Precision] = {}
    stack: list[str] = []
    top: dict[str, Any] = {}
    layer: str | None = None
    per_tensor: list[str] = []
    common_cw: bool | None = None
    percentiles: set[float] = set()
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip() if not raw.strip().startswith(("layer_name", "skip_layers")) else raw.strip()
        if not line:
            continue
        if line.endswith("{"):
            stack.append(line.split(":")[0].strip().rstrip("{").strip())
            continue
        if line == "}":
            if not stack:
                raise ConfigError(f"{where}: unbalanced '}}'")
            if stack.pop() == "override_layer_configs":
                layer = None
            continue
        m = _FIELD.match(line)
        if not m:
            raise ConfigError(f"{where}: cannot read line {raw!r}")
        key, value = m.group(1), m.group(2) if m.group(2) is not None else m.group(3)
        if not stack:
            if key == "skip_layers":
                nodes[value] = Precision.FLOAT
            else:
                top[key] = value
        elif key == "layer_name":
            layer = value
        elif key == "channel_wise":
            if stack[0] == "common_config":
                common_cw = value == "true"
            elif layer is not None and value == "false":
                per_tensor.append(layer)
        elif key == "dst_type" and value == "INT16" and layer is not None:
            nodes[layer] = Precision.INT16
        elif key == "max_percentile":
            percentiles.add(float(value))
    if stack:
        raise ConfigError(f"{where}: unclosed block {stack[-1]!r}")
    calibration = {
        "granularity": "per_channel" if common_cw else "per_tensor",
        "max_percentile": percentiles.pop() if len(percentiles) == 1 else sorted(percentiles) or None,
        "batch_num": int(top["batch_num"]) if "batch_num" in top else None,
        "activation_offset": top.get("activation_offset") == "true",
        "per_tensor_layers": per_tensor,
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
