#!/usr/bin/env python
"""Builds an autoq RKNN bundle with RKNN-Toolkit2 and, on request, runs the x86 simulator.

This file is copied into every RKNN bundle as ``build_rknn.py``. It runs in the RKNN-Toolkit2
environment (``scripts/install-rknn-toolkit.sh VENV``), never in autoq's: it imports only
RKNN-Toolkit2, numpy and ruamel.yaml (both RKNN dependencies) and the standard library.

    VENV/bin/python build_rknn.py                           # -> <name>.rknn next to this file
    VENV/bin/python build_rknn.py --simulate inputs.txt --outputs out/

``rknn_bundle.json`` (written by ``autoq export --format rknn``) says what to build:

- ``model``: the ONNX model; ``dataset``: a list of calibration ``.npy`` files (float32 NCHW raw
  pixels: ``rknn.config`` applies the mean/std), paths relative to the bundle;
- ``config``: the ``rknn.config`` arguments (target, mean/std, quantized_dtype/algorithm/method);
- ``quantization_cfg``: autoq's ``<name>.quantization.cfg``. When its ``custom_quantize_layers`` is
  empty this is a plain ``build``; otherwise ``hybrid_quantization_step1`` -> every autoq name is
  checked against the cfg step1 wrote (exit 2 naming the unknown ones) -> the layers are merged
  into step1's cfg -> ``hybrid_quantization_step2``;
- ``do_quantization``: false for an all-float trial (a float16 build);
- ``output``: the ``.rknn`` file.

``--simulate LIST --outputs DIR``: after the build, in the same process (RKNN's simulator only runs
a model built in the process), every ``.npy`` of LIST (one path per line, like the dataset) is run
and its outputs saved as ``DIR/<k>_<output index>.npy``, ``k`` the line number from 0. Progress goes
to stdout as ``simulate i/N``; RKNN's own log goes to ``<build dir>/rknn.log``. Exit status: 0 ok,
1 RKNN failed (the last log lines are printed), 2 a bad bundle or layer name.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

LAYER_TYPES = ("int8", "int16", "float16")  # what RKNN-Toolkit2 2.5.0 accepts in custom_quantize_layers


def say(msg: str) -> None:
    print(f"[build_rknn] {msg}", flush=True)


class Quiet:
    """Sends file descriptors 1 and 2 (RKNN's Python log and its C++ compiler's tables) to a log file."""

    def __init__(self, log_path: Path) -> None:
        self.log = open(log_path, "ab", buffering=0)

    def __enter__(self) -> Quiet:
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = (os.dup(1), os.dup(2))
        os.dup2(self.log.fileno(), 1)
        os.dup2(self.log.fileno(), 2)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        os.close(self.saved[0])
        os.close(self.saved[1])
        self.log.close()


def read_list(path: Path) -> list[Path]:
    base = path.parent
    return [(base / line.strip()).resolve() for line in path.read_text().splitlines() if line.strip()]


def load_yaml(text: str):
    from ruamel.yaml import (
        YAML,  # an RKNN-Toolkit2 dependency (PyYAML is not in its environment)
    )

    return YAML(typ="safe").load(text)


def merged_cfg(step1_text: str, layers: dict[str, str]) -> str:
    """step1's cfg with ``custom_quantize_layers`` filled in (the rest byte for byte as step1 wrote it)."""
    head = "custom_quantize_layers: {}\n"
    if not step1_text.startswith(head):
        raise SystemExit("unexpected step1 cfg: it does not start with 'custom_quantize_layers: {}'")
    body = "".join(f"    {json.dumps(k)}: {v}\n" for k, v in layers.items())
    return "custom_quantize_layers:\n" + body + step1_text[len(head):]


def layer_dtypes(log_text: str) -> dict[str, int]:
    """Layers per data type in the compiler's last "Network Layer Information Table" (verbose log)."""
    lines = log_text.replace("\r", "\n").splitlines()
    starts = [i for i, line in enumerate(lines) if "Network Layer Information Table" in line]
    counts: dict[str, int] = {}
    if not starts:
        return counts
    row = re.compile(r"^D RKNN: \[[^\]]+\] (\d+)\s+(\S+)\s+(\S+)\s+(CPU|NPU|GPU)\s")
    for line in lines[starts[-1] + 4:]:
        if "-----" in line:
            break
        m = row.match(line)
        if m:
            key = f"{m.group(3)} {m.group(4)}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def fail(log_path: Path, what: str, exc: BaseException | None = None) -> int:
    tail = log_path.read_text(errors="replace").strip().splitlines()[-5:] if log_path.is_file() else []
    detail = f": {type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}" if exc else ""
    say(f"{what} failed{detail}; last lines of {log_path}:")
    for line in tail:
        say("  " + line)
    return 1


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description="Build an autoq RKNN bundle (and simulate it).")
    ap.add_argument("--bundle", default=str(here / "rknn_bundle.json"))
    ap.add_argument("--simulate", help="list of .npy inputs to run on the simulator after the build")
    ap.add_argument("--outputs", help="folder for the simulator's outputs (with --simulate)")
    ap.add_argument("--work", help="build folder (default: <bundle>/_build)")
    args = ap.parse_args(argv)
    if bool(args.simulate) != bool(args.outputs):
        say("--simulate and --outputs go together")
        return 2
    bundle_path = Path(args.bundle).resolve()
    base = bundle_path.parent
    try:
        bundle = json.loads(bundle_path.read_text())
        model = (base / bundle["model"]).resolve()
        output = (base / bundle["output"]).resolve()
        quant = bool(bundle.get("do_quantization", True))
        config = dict(bundle["config"])
        cfg_path = (base / bundle["quantization_cfg"]).resolve()
        layers = dict(load_yaml(cfg_path.read_text()).get("custom_quantize_layers") or {})
        dataset = read_list((base / bundle["dataset"]).resolve()) if quant else []
        inputs = read_list(Path(args.simulate).resolve()) if args.simulate else []
    except Exception as exc:  # missing file, bad JSON or YAML, a missing key: the bundle is not usable
        say(f"bad bundle {bundle_path}: {type(exc).__name__}: {exc}")
        return 2
    bad = {k: v for k, v in layers.items() if v not in LAYER_TYPES}
    if bad:
        say(f"custom_quantize_layers values must be one of {LAYER_TYPES}: {bad}")
        return 2
    work = Path(args.work).resolve() if args.work else base / "_build"
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "rknn.log"
    log_path.write_bytes(b"")
    data_list = work / "dataset.txt"
    data_list.write_text("".join(f"{p}\n" for p in dataset))
    out_dir = Path(args.outputs).resolve() if args.outputs else None

    import numpy as np
    from rknn.api import RKNN

    manifest: dict = {"model": str(model), "config": config, "layers": len(layers), "seconds": {}}
    os.chdir(work)  # step1 writes <model stem>.{model,data,quantization.cfg} into the current folder
    with Quiet(log_path):
        rknn = RKNN(verbose=True)
    try:
        t0 = time.time()
        with Quiet(log_path):
            ret = rknn.config(**config)
            if ret == 0:
                ret = rknn.load_onnx(model=str(model))
        if ret != 0:
            return fail(log_path, f"config/load_onnx ({ret})")
        if not layers:
            say(f"build (do_quantization={quant}, {len(dataset)} calibration inputs)")
            with Quiet(log_path):
                ret = rknn.build(do_quantization=quant, dataset=str(data_list) if quant else None)
            if ret != 0:
                return fail(log_path, f"build ({ret})")
        else:
            stem = model.stem
            say(f"hybrid_quantization_step1 ({len(dataset)} calibration inputs)")
            with Quiet(log_path):
                ret = rknn.hybrid_quantization_step1(dataset=str(data_list), proposal=False)
            if ret != 0:
                return fail(log_path, f"hybrid_quantization_step1 ({ret})")
            step1 = Path(f"{stem}.quantization.cfg").read_text()
            known = set(load_yaml(step1)["quantize_parameters"])
            unknown = sorted(set(layers) - known)
            if unknown:
                say(f"{len(unknown)} of {len(layers)} custom_quantize_layers names in {cfg_path.name} are not tensors "
                    f"step1 wrote ({', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''}); step1's names are "
                    f"in {work / (stem + '.quantization.cfg')}")
                return 2
            hybrid = Path(f"{stem}.hybrid.cfg")
            hybrid.write_text(merged_cfg(step1, layers))
            say(f"hybrid_quantization_step2 ({len(layers)} layers: "
                + ", ".join(f"{sum(v == t for v in layers.values())} {t}" for t in LAYER_TYPES if t in layers.values())
                + ")")
            rknn.release()
            rknn = None
            with Quiet(log_path):
                rknn = RKNN(verbose=True)
                ret = rknn.hybrid_quantization_step2(model_input=f"{stem}.model", data_input=f"{stem}.data",
                                                     model_quantization_cfg=str(hybrid))
            if ret != 0:
                return fail(log_path, f"hybrid_quantization_step2 ({ret})")
        manifest["seconds"]["build"] = round(time.time() - t0, 2)
        with Quiet(log_path):
            ret = rknn.export_rknn(str(output))
        if ret != 0:
            return fail(log_path, f"export_rknn ({ret})")
        say(f"built {output} in {manifest['seconds']['build']} s")
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            with Quiet(log_path):
                ret = rknn.init_runtime()  # no target: the simulator (only for a model built in this process)
            if ret != 0:
                return fail(log_path, f"init_runtime ({ret})")
            t1 = time.time()
            step = max(1, len(inputs) // 20)
            for k, path in enumerate(inputs):
                x = np.load(path).astype(np.float32, copy=False)
                with Quiet(log_path):
                    outs = rknn.inference(inputs=[x if x.ndim == 4 else x[None]], data_format="nchw")
                if outs is None:
                    return fail(log_path, f"inference on {path}")
                for j, o in enumerate(outs):
                    np.save(out_dir / f"{k}_{j}.npy", np.asarray(o, np.float32))
                if (k + 1) % step == 0 or k + 1 == len(inputs):
                    say(f"simulate {k + 1}/{len(inputs)}")
            manifest["seconds"]["simulate_per_input"] = round((time.time() - t1) / max(1, len(inputs)), 4)
    except Exception as exc:  # RKNN reports most errors by raising after logging them
        return fail(log_path, "RKNN", exc)
    finally:
        if rknn is not None:
            rknn.release()
    log_text = log_path.read_text(errors="replace")
    manifest["layer_dtypes"] = layer_dtypes(log_text)
    manifest["hybrid_tensors"] = len(re.findall(r"Meet hybrid type, dtype: (\S+), tensor: (\S+)", log_text))
    (work / "manifest.json").write_text(json.dumps(manifest, indent=1))
    say("layer types: " + ", ".join(f"{n} {k}" for k, n in sorted(manifest["layer_dtypes"].items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
