"""Strict checker of an ascend bundle (AMCT proto-text config + model + .bin calibration + run.sh).

Rules (sources):
- cfg fields/enums: AMCT calibration_config_onnx.proto (hiascend AMCT docs "训练后量化简易配置文件";
  same messages as hicann/amct amct_pytorch/.../calibration_config_pytorch.proto), form as
  hicann/amct tests/amct_pytorch/testcase_python/single_file/utils/ptq_a16w8.cfg;
- quantizable layer types Conv, Gemm, MatMul, ConvTranspose, AveragePool (AMCT docs "训练后量化支持量化的层");
  MaxPool/Add are tensor-only in recent versions and take no layer config here;
- dst_type INT16 only on Conv/Gemm/ConvTranspose; channel_wise false on Gemm/MatMul
  (/work/shared/docs/compiler-formats.md "What the tools enforce", AMCT);
- amct_onnx calibration flags (AMCT docs, command-line options overview): --model --save_path
  --input_shape "name:n,c,h,w" --data_dir (bin files, each of --input_shape) --data_types
  --calibration_config (proto text) --batch_num --evaluator;
- ATC: --keep_dtype needs --precision_mode, and has no effect with must_keep_origin_dtype
  (ATC docs, --keep_dtype); --framework=5 for ONNX.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import numpy as np
import onnx

AMCT_OPS = {"Conv", "Gemm", "MatMul", "ConvTranspose", "AveragePool"}
INT16_OPS = {"Conv", "Gemm", "ConvTranspose"}
TOP = {"batch_num", "activation_offset", "skip_layers", "skip_layer_types", "joint_quant", "fakequant_precision_mode",
       "common_config", "override_layer_types", "override_layer_configs", "do_fusion", "skip_fusion_layers"}
CALIB = {"arq_quantize", "ifmr_quantize", "hfmg_quantize"}
ARQ = {"channel_wise"}
IFMR = {"search_range_start", "search_range_end", "search_step", "max_percentile", "min_percentile", "asymmetric",
        "dst_type"}
AMCT_FLAGS = {"model", "save_path", "input_shape", "data_dir", "data_types", "evaluator", "calibration_config",
              "batch_num", "help", "h"}
ATC_FLAGS = {"model", "framework", "output", "soc_version", "input_shape", "input_format", "precision_mode",
             "precision_mode_v2", "keep_dtype", "modify_mixlist", "customize_dtypes", "out_nodes", "log",
             "insert_op_conf", "op_select_implmode", "optypelist_for_implmode", "dynamic_batch_size", "output_type"}
PRECISION_MODES = {"force_fp32", "force_fp16", "allow_fp32_to_fp16", "must_keep_origin_dtype", "allow_mix_precision",
                   "cube_fp16in_fp32out", "allow_mix_precision_fp16", "allow_mix_precision_bf16", "allow_fp32_to_bf16"}
DATA_TYPES = {"float32": 4, "float16": 2, "int8": 1, "uint8": 1, "int32": 4}
_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|([{}:])|([^\s{}:"#]+))')


def parse_text_proto(text: str) -> dict:
    """A small proto-text reader: returns {field: [values]} with nested dicts for messages."""
    tokens = [m.group(2) or m.group(3) or m.group(4) for m in _TOKEN.finditer(text) if not m.group(1)]
    tokens = [t for t in tokens if t is not None]
    pos = 0

    def message(end: str | None) -> dict:
        nonlocal pos
        out: dict = {}
        while pos < len(tokens):
            tok = tokens[pos]
            if tok == "}":
                if end != "}":
                    raise ValueError("unbalanced '}'")
                pos += 1
                return out
            key = tok
            pos += 1
            if pos < len(tokens) and tokens[pos] == ":":
                pos += 1
            if pos < len(tokens) and tokens[pos] == "{":
                pos += 1
                out.setdefault(key, []).append(message("}"))
            else:
                value = tokens[pos]
                pos += 1
                out.setdefault(key, []).append(value[1:-1] if value.startswith('"') else value)
        if end is not None:
            raise ValueError("unclosed '{'")
        return out

    return message(None)


def check(bundle_dir: Path) -> list[str]:
    bundle = Path(bundle_dir)
    cfgs = sorted(p for p in bundle.glob("*.cfg") if p.name != "keep_dtype.cfg")
    if len(cfgs) != 1:
        return [f"expected one AMCT .cfg in {bundle}, found {len(cfgs)}"]
    model_path = bundle / "model.onnx"
    if not model_path.is_file():
        return ["model.onnx missing"]
    model = onnx.load(str(model_path), load_external_data=False)
    ops = {n.name: n.op_type for n in model.graph.node}
    errs: list[str] = []
    try:
        cfg = parse_text_proto(cfgs[0].read_text(encoding="utf-8"))
    except (ValueError, IndexError) as exc:
        return [f"{cfgs[0].name}: not proto text ({exc})"]
    errs += [f"unknown AMCTConfig field {k!r}" for k in cfg if k not in TOP]
    for key in ("batch_num", "activation_offset", "do_fusion", "common_config"):
        if len(cfg.get(key, [])) > 1:
            errs.append(f"optional field {key} given {len(cfg[key])} times")
    if "batch_num" in cfg and not cfg["batch_num"][0].isdigit():
        errs.append(f"batch_num {cfg['batch_num'][0]!r} is not an unsigned integer")
    for key in ("activation_offset", "do_fusion"):
        if key in cfg and cfg[key][0] not in ("true", "false"):
            errs.append(f"{key} {cfg[key][0]!r} is not a boolean")
    skip = cfg.get("skip_layers", [])
    for n in skip:
        if n not in ops:
            errs.append(f"skip_layers {n!r} is not a node of model.onnx")
        elif ops[n] not in AMCT_OPS:
            errs.append(f"skip_layers {n!r} is a {ops[n]}, which AMCT does not quantize")
    common = (cfg.get("common_config") or [{}])[0]
    errs += _check_calib(common, "common_config", None)
    common_cw = (common.get("arq_quantize") or [{}])[0].get("channel_wise", ["false"])[0] == "true"
    overridden: dict[str, dict] = {}
    for item in cfg.get("override_layer_configs", []):
        names = item.get("layer_name", [])
        if len(names) != 1 or "calibration_config" not in item or set(item) - {"layer_name", "calibration_config"}:
            errs.append(f"override_layer_configs item {names} needs exactly layer_name and calibration_config")
            continue
        name = names[0]
        if name not in ops:
            errs.append(f"override layer {name!r} is not a node of model.onnx")
            continue
        if ops[name] not in AMCT_OPS:
            errs.append(f"layer {name} does not support quant ({ops[name]})")
        if name in skip:
            errs.append(f"override layer {name!r} is also in skip_layers")
        overridden[name] = item["calibration_config"][0]
        errs += _check_calib(overridden[name], f"override {name}", ops[name])
    for item in cfg.get("override_layer_types", []):
        lt = item.get("layer_type", [None])[0]
        if lt not in AMCT_OPS:
            errs.append(f"override_layer_types {lt!r} is not an AMCT layer type")
        else:
            errs += _check_calib(item.get("calibration_config", [{}])[0], f"override type {lt}", lt)
    if common_cw:
        for n, op in ops.items():
            if op in ("Gemm", "MatMul") and n not in skip and n not in overridden:
                errs.append(f"{op} {n} inherits channel_wise true from common_config (must be false)")
    errs += _check_run(bundle, model, cfgs[0])
    return errs


def _check_calib(cc: dict, where: str, op: str | None) -> list[str]:
    errs = [f"{where}: unknown CalibrationConfig field {k!r}" for k in cc if k not in CALIB]
    if "ifmr_quantize" in cc and "hfmg_quantize" in cc:
        errs.append(f"{where}: ifmr_quantize and hfmg_quantize are one oneof")
    for arq in cc.get("arq_quantize", []):
        errs += [f"{where}: unknown arq_quantize field {k!r}" for k in arq if k not in ARQ]
        cw = arq.get("channel_wise", [None])[0]
        if cw not in (None, "true", "false"):
            errs.append(f"{where}: channel_wise {cw!r} is not a boolean")
        if op in ("Gemm", "MatMul") and cw == "true":
            errs.append(f"{where}: channel_wise must be false on {op}")
    for ifmr in cc.get("ifmr_quantize", []):
        errs += [f"{where}: unknown ifmr_quantize field {k!r}" for k in ifmr if k not in IFMR]
        try:
            vals = {k: float(ifmr[k][0]) for k in IFMR - {"dst_type", "asymmetric"} if k in ifmr}
        except ValueError:
            errs.append(f"{where}: non-numeric ifmr_quantize value")
            vals = {}
        for k in ("max_percentile", "min_percentile"):
            if k in vals and not 0.5 < vals[k] <= 1.0:
                errs.append(f"{where}: {k} {vals[k]} is not in (0.5, 1]")
        if vals.get("search_range_start", 0.7) >= vals.get("search_range_end", 1.3):
            errs.append(f"{where}: search_range_start must be below search_range_end")
        if "search_step" in vals and vals["search_step"] <= 0:
            errs.append(f"{where}: search_step must be positive")
        dst = ifmr.get("dst_type", ["INT8"])[0]
        if dst not in ("INT8", "INT16"):
            errs.append(f"{where}: dst_type {dst!r} is not INT8 or INT16")
        if dst == "INT16" and op not in INT16_OPS:
            errs.append(f"{where}: dst_type INT16 is only for {sorted(INT16_OPS)}, not {op or 'every layer'}")
    return errs


def _flags(words: list[str], tool: str, allowed: set[str]) -> tuple[dict[str, str], list[str]]:
    opts: dict[str, str] = {}
    errs = []
    for w in words:
        if not w.startswith("--"):
            errs.append(f"{tool}: unexpected argument {w!r}")
            continue
        k, _, v = w[2:].partition("=")
        if k not in allowed:
            errs.append(f"{tool}: --{k} is not a documented option")
        opts[k] = v
    return opts, errs


def _check_run(bundle: Path, model, cfg: Path) -> list[str]:
    run = bundle / "run.sh"
    if not run.is_file() or not os.access(run, os.X_OK):
        return ["run.sh missing or not executable"]
    errs: list[str] = []
    commands = [shlex.split(line, comments=True) for line in run.read_text(encoding="utf-8").splitlines()]
    amct = [c for c in commands if c[:2] == ["amct_onnx", "calibration"]]
    atc = [c for c in commands if c[:1] == ["atc"]]
    if len(atc) != 1:
        errs.append("run.sh needs exactly one atc command")
    inits = {t.name for t in model.graph.initializer}
    graph_inputs = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim]
                    for i in model.graph.input if i.name not in inits}
    if amct:
        opts, e = _flags(amct[0][2:], "amct_onnx calibration", AMCT_FLAGS)
        errs += e
        for req in ("model", "save_path", "input_shape", "data_dir", "data_types", "calibration_config"):
            if req not in opts:
                errs.append(f"amct_onnx calibration: --{req} missing")
        if opts.get("model") and not (bundle / opts["model"]).is_file():
            errs.append(f"amct_onnx --model {opts['model']} is not in the bundle")
        cc = opts.get("calibration_config", "")
        if cc != cfg.name:
            errs.append(f"--calibration_config {cc!r} is not the bundle's cfg {cfg.name}")
        elif cfg.read_text(encoding="utf-8").lstrip().startswith(("{", "[")):
            errs.append("--calibration_config is JSON; amct_onnx reads the proto-text config")
        shape = opts.get("input_shape", "")
        m = re.fullmatch(r"([^:;]+):(\d+(?:,\d+)*)", shape)
        dims: list[int] = []
        if not m:
            errs.append(f"--input_shape {shape!r} is not 'name:n,c,h,w'")
        else:
            dims = [int(d) for d in m.group(2).split(",")]
            if m.group(1) not in graph_inputs:
                errs.append(f"--input_shape names {m.group(1)!r}, not a model input")
            elif any(a and a != b for a, b in zip(graph_inputs[m.group(1)], dims)):
                errs.append(f"--input_shape {dims} does not match the model's {graph_inputs[m.group(1)]}")
        dt = opts.get("data_types", "")
        if dt not in DATA_TYPES:
            errs.append(f"--data_types {dt!r} is not a data type")
        folder = bundle / opts.get("data_dir", "\0")
        if not folder.is_dir():
            errs.append(f"--data_dir {opts.get('data_dir')!r} is not a folder in the bundle")
        elif dims and dt in DATA_TYPES:
            bins = sorted(folder.glob("*.bin"))
            want = int(np.prod(dims)) * DATA_TYPES[dt]
            errs += [f"{b.name}: {b.stat().st_size} bytes, expected {want}" for b in bins if b.stat().st_size != want]
            batch = int(opts.get("batch_num", "1") or 0)
            if not bins or batch > len(bins) or batch < 1:
                errs.append(f"--batch_num {batch} does not fit the {len(bins)} .bin files")
            others = [p.name for p in folder.iterdir() if p.suffix != ".bin"]
            if others:
                errs.append(f"--data_dir holds non-.bin files: {others[:3]}")
    if atc:
        opts, e = _flags(atc[0][1:], "atc", ATC_FLAGS)
        errs += e
        if opts.get("framework") != "5":
            errs.append("atc --framework must be 5 (ONNX)")
        pm = opts.get("precision_mode")
        if pm is not None and pm not in PRECISION_MODES:
            errs.append(f"atc --precision_mode {pm!r} is not documented")
        if "keep_dtype" in opts:
            if pm is None and "precision_mode_v2" not in opts:
                errs.append("atc --keep_dtype needs --precision_mode")
            if pm == "must_keep_origin_dtype":
                errs.append("atc --keep_dtype has no effect with --precision_mode=must_keep_origin_dtype")
            keep = bundle / opts["keep_dtype"]
            if not keep.is_file():
                errs.append(f"--keep_dtype file {opts['keep_dtype']} missing")
            else:
                names = {n.name for n in model.graph.node}
                errs += [f"keep_dtype names {n!r}, not a node of model.onnx"
                         for n in keep.read_text(encoding="utf-8").split("\n") if n and n not in names
                         and not n.startswith("OpType::")]
        src = opts.get("model", "")
        produced = [f"{c_opts.partition('=')[2]}_deploy_model.onnx" for c in amct for c_opts in c
                    if c_opts.startswith("--save_path=")]
        if src not in produced and not (bundle / src).is_file():
            errs.append(f"atc --model {src!r} is neither in the bundle nor AMCT's deploy model {produced}")
        if amct and src not in produced:
            errs.append("atc does not compile AMCT's deploy model")
    return errs
