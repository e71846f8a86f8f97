"""Strict checker of a tensorrt bundle (model + run.sh with one trtexec command).

Rules (sources):
- trtexec options: TensorRT docs, "trtexec" command-line flags (--onnx, --int8, --fp16, --best,
  --stronglyTyped, --precisionConstraints=none|prefer|obey, --layerPrecisions=spec[,spec] with
  spec layerName:precision, --layerOutputTypes, --calib=<cache>, --saveEngine, ...);
- --precisionConstraints=obey with a '*' spec would force Shape/Slice/Exp/... layers too (issue 20):
  a wildcard with obey is refused, and every named layer must be a compute node of the model;
- explicit quantization (TensorRT developer guide, "Working with Quantized Types"): Q/DQ from the ONNX
  domain, int8 symmetric (zero point 0), DequantizeLinear inputs int8; --int8 (or --stronglyTyped)
  present when the model has Q/DQ;
- --calib only reads a calibration cache file: it must exist in the bundle when given.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

FLAGS = {"onnx", "int8", "fp16", "bf16", "fp8", "best", "noTF32", "stronglyTyped", "precisionConstraints",
         "layerPrecisions", "layerOutputTypes", "calib", "saveEngine", "verbose", "exportProfile",
         "exportLayerInfo", "memPoolSize", "shapes", "minShapes", "optShapes", "maxShapes", "builderOptimizationLevel",
         "timingCacheFile", "profilingVerbosity", "skipInference", "useCudaGraph", "separateProfileRun"}
PRECISIONS = {"fp32", "fp16", "bf16", "int8", "fp8", "int4"}
COMPUTE = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def check(bundle_dir: Path) -> list[str]:
    bundle = Path(bundle_dir)
    run = bundle / "run.sh"
    if not run.is_file() or not os.access(run, os.X_OK):
        return ["run.sh missing or not executable"]
    commands = [w for w in (shlex.split(line, comments=True) for line in run.read_text(encoding="utf-8").splitlines())
                if w and w[0] == "trtexec"]
    if len(commands) != 1:
        return [f"run.sh needs exactly one trtexec command, found {len(commands)}"]
    errs: list[str] = []
    opts: dict[str, str] = {}
    for w in commands[0][1:]:
        if not w.startswith("--"):
            errs.append(f"unexpected argument {w!r}")
            continue
        k, _, v = w[2:].partition("=")
        if k not in FLAGS:
            errs.append(f"--{k} is not a documented trtexec option")
        if k in opts:
            errs.append(f"--{k} given twice")
        opts[k] = v
    path = bundle / opts.get("onnx", "\0")
    if "onnx" not in opts or os.path.isabs(opts["onnx"]) or not path.is_file():
        return [*errs, f"--onnx {opts.get('onnx')!r} is not a model inside the bundle"]
    if "saveEngine" not in opts:
        errs.append("--saveEngine missing (the engine is the point of the command)")
    model = onnx.load(str(path), load_external_data=False)
    ops = {n.name: n.op_type for n in model.graph.node}
    inits = {t.name: t for t in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    for n in model.graph.node:
        if n.domain not in ("", "ai.onnx"):
            errs.append(f"node {n.name} ({n.op_type}) is from domain {n.domain!r}, which TensorRT's parser lacks")
    for n in qdq:
        if len(n.input) > 2 and n.input[2]:
            if n.input[2] not in inits:
                errs.append(f"{n.name}: zero point is not a constant")
            else:
                zp = numpy_helper.to_array(inits[n.input[2]])
                if zp.dtype != np.int8:
                    errs.append(f"{n.name}: zero point type {zp.dtype} (TensorRT quantizes to int8)")
                if np.any(zp != 0):
                    errs.append(f"{n.name}: non-zero zero point (TensorRT quantization is symmetric)")
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:
            dt = numpy_helper.to_array(inits[n.input[0]]).dtype
            if dt != np.int8:
                errs.append(f"{n.name}: dequantizes {dt} (TensorRT dequantizes int8 only)")
    if qdq and "int8" not in opts and "stronglyTyped" not in opts and "best" not in opts:
        errs.append("the model has Q/DQ but trtexec gets neither --int8 nor --stronglyTyped")
    if "calib" in opts and not (bundle / opts["calib"]).is_file():
        errs.append(f"--calib {opts['calib']!r} is not a file in the bundle")
    pc = opts.get("precisionConstraints")
    if pc is not None and pc not in ("none", "prefer", "obey"):
        errs.append(f"--precisionConstraints {pc!r} is not none, prefer or obey")
    if "layerPrecisions" in opts and pc not in ("prefer", "obey"):
        errs.append("--layerPrecisions without --precisionConstraints prefer|obey has no effect")
    for spec in filter(None, opts.get("layerPrecisions", "").split(",")):
        name, sep, prec = spec.rpartition(":")
        if not sep or prec not in PRECISIONS:
            errs.append(f"layer precision {spec!r} is not <layer>:<{'|'.join(sorted(PRECISIONS))}>")
            continue
        if name == "*":
            if pc == "obey":
                errs.append(f"'*:{prec}' with --precisionConstraints=obey also forces Shape/Slice/Exp layers")
            continue
        if name not in ops:
            errs.append(f"--layerPrecisions names {name!r}, not a node of {path.name}")
        elif pc == "obey" and ops[name] not in COMPUTE:
            errs.append(f"--layerPrecisions obey on {name!r}, a {ops[name]} (not a compute layer)")
    return errs
