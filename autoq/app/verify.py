"""`autoq verify`: build a trial with the vendor's own toolchain, run its simulator on the evaluation
images, and score the outputs with the project's adapter and metric: the toolchain's mAP next to
the one autoq predicted.

The toolchain lives in its own environment and is driven through files and a subprocess: the
trial is exported as the format's bundle (`autoq.export`), the bundle's build script runs under
the toolchain's interpreter (``--python``, ``toolchains.<name>.python`` in autoq.yaml, or
``AUTOQ_<NAME>_PYTHON``) and writes one ``.npy`` per image and output; autoq reads them back. The
result goes to the trial's MLflow run (``toolchain_map``, ``toolchain_map50``,
``toolchain_map_drop`` on the 0..1 scale like ``map``; ``toolchain_delta_pt`` = toolchain minus
predicted, in mAP points).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoq.cache import content_key
from autoq.errors import ConfigError, SearchError, ToolchainError
from autoq.export import export_config
from autoq.export.rknn import write_inputs
from autoq.export.run import trial_context
from autoq.objectives.metrics import drop
from autoq.pipeline import Project
from autoq.results.front import front_trials
from autoq.results.store import load_study, make_tracker
from autoq.results.trials import get_trial
from autoq.trial_record import RUN_ATTR, trial_config

__all__ = ["TOOLCHAINS", "Verified", "verify"]

Log = Callable[[str], None]


@dataclass(frozen=True)
class Toolchain:
    """How to build and simulate one vendor's bundle: the export format, and the bundle's script
    with its arguments (inputs list and outputs folder are appended)."""

    format: str
    script: str
    describe: str  # names the toolchain in lines and MLflow tags


TOOLCHAINS: dict[str, Toolchain] = {
    "rknn": Toolchain(format="rknn", script="build_rknn.py", describe="RKNN-Toolkit2 simulator"),
}


@dataclass(frozen=True)
class Verified:
    """One trial built and simulated by a toolchain (mAP on the 0..1 scale)."""

    trial: int
    predicted_map: float
    toolchain_map: float
    toolchain_map50: float
    toolchain_map_drop: float
    seconds: float

    @property
    def delta_pt(self) -> float:
        """Toolchain mAP minus predicted mAP, in points."""
        return 100.0 * (self.toolchain_map - self.predicted_map)


def toolchain_python(project: Project, name: str, python: str | None) -> Path:
    """The toolchain's interpreter: the flag, else autoq.yaml, else ``AUTOQ_<NAME>_PYTHON``."""
    cfg = project.config
    env = f"AUTOQ_{name.upper()}_PYTHON"
    path = Path(python) if python else cfg.toolchains.python(name, cfg.root)
    if path is None and os.environ.get(env):
        path = Path(os.environ[env])
    if path is None:
        raise ConfigError(
            f"{cfg.file}: toolchains.{name}.python is not set: install the toolchain in its own environment "
            f"(scripts/install-rknn-toolkit.sh VENV) and set toolchains: {{{name}: {{python: VENV/bin/python}}}}, "
            f"or pass --python, or set {env}"
        )
    if not path.is_file():
        raise ConfigError(f"toolchain python {path} not found; install it with scripts/install-rknn-toolkit.sh VENV")
    return path


def verify(
    project: Project,
    *,
    trial: int | None = None,
    pareto: bool = False,
    toolchain: str = "rknn",
    python: str | None = None,
    log: Log = print,
    say: Log = print,
) -> list[Verified]:
    """Builds and simulates trial ``trial`` (or every front member) with ``toolchain``; logs to MLflow.

    ``log`` gets the progress, ``say`` one result line per trial (and the worst delta of several)."""
    if toolchain not in TOOLCHAINS:
        raise ConfigError(f"unknown toolchain {toolchain!r}; known: {', '.join(TOOLCHAINS)}")
    chain = TOOLCHAINS[toolchain]
    exe = toolchain_python(project, toolchain, python)
    study = load_study(project)
    if pareto:
        trials = sorted(front_trials(study, project), key=lambda t: (t.values[1], t.number))
        if not trials:
            raise SearchError(f"study {study.study_name!r} has no completed trials yet; run `autoq search` first")
    elif trial is not None:
        trials = [get_trial(study, trial)]
    else:
        raise ConfigError("autoq verify needs --trial N (see `autoq pareto`) or --pareto")
    if not project.target.name.startswith(("rk", "rv")) and chain.format == "rknn":
        log(f"warning: the study's target is {project.target.name}, not a Rockchip chip: its predictions did not "
            "simulate RKNN's fusions (target.name: rk3588)")
    results = []
    for i, t in enumerate(trials, 1):
        log(f"verify {i}/{len(trials)}: trial {t.number} with {chain.describe}")
        r = _verify_trial(project, study, t, chain, exe, log)
        run_id = t.user_attrs.get(RUN_ATTR)
        if run_id:
            try:
                make_tracker(project).log_to_run(
                    run_id,
                    metrics={"toolchain_map": r.toolchain_map, "toolchain_map50": r.toolchain_map50,
                             "toolchain_map_drop": r.toolchain_map_drop, "toolchain_delta_pt": r.delta_pt},
                    tags={"toolchain": chain.describe},
                )
            except Exception as exc:  # tracking never loses a measured result
                log(f"warning: MLflow run {run_id} not updated: {type(exc).__name__}: {exc}")
        say(f"trial {t.number}: predicted mAP {100 * r.predicted_map:.2f}, {chain.describe} mAP "
            f"{100 * r.toolchain_map:.2f} (AP50 {100 * r.toolchain_map50:.2f}, drop {100 * r.toolchain_map_drop:.2f} pt) "
            f"in {r.seconds:.0f} s, delta_pt={r.delta_pt:+.2f}")
        results.append(r)
    if len(results) > 1:
        worst = max(results, key=lambda r: abs(r.delta_pt))
        say(f"{len(results)} trials built with {chain.describe}; worst |delta| trial {worst.trial}: "
            f"delta_pt={worst.delta_pt:+.2f}")
    return results


def _verify_trial(project: Project, study, t, chain: Toolchain, exe: Path, log: Log) -> Verified:
    start = time.perf_counter()
    config = trial_config(t)
    state = project.variant(config.resolution, config.variant)
    work = project.config.ensure_work_dir() / "verify" / chain.format / f"trial_{t.number}"  # one verify at a time
    if work.exists():
        shutil.rmtree(work)
    bundle = work / "bundle"
    export_config(trial_context(project, study, t), chain.format, bundle)
    inputs = _eval_inputs(state, project.cache_dir)
    outputs = work / "outputs"
    _run(exe, [str(bundle / chain.script), "--simulate", str(inputs), "--outputs", str(outputs)], log)
    n_out = len(state.model.output_names)
    count = len(state.eval_set.metas)
    try:
        batches = [[np.load(outputs / f"{k}_{j}.npy") for j in range(n_out)] for k in range(count)]
    except (OSError, ValueError) as exc:
        raise ToolchainError(f"{chain.describe}: missing or unreadable outputs in {outputs} ({exc})") from None
    try:
        metrics = state.score(batches)
    except Exception as exc:  # outputs the adapter cannot read: the toolchain changed their shape or type
        shapes = [list(a.shape) for a in batches[0]] if batches else []
        raise ToolchainError(f"{chain.describe} outputs (first image: shapes {shapes}) cannot be scored: "
                             f"{type(exc).__name__}: {exc}") from None
    base = project.root.baseline
    return Verified(
        trial=t.number,
        predicted_map=float(t.user_attrs.get("map", float("nan"))),
        toolchain_map=float(metrics.value),
        toolchain_map50=float(metrics.map50),
        toolchain_map_drop=drop(base.map, metrics.value, higher_is_better=project.metric.higher_is_better),
        seconds=time.perf_counter() - start,
    )


def _eval_inputs(state: Project, cache: Path) -> Path:
    """The evaluation images as float32 NCHW raw-pixel ``.npy`` files (the toolchain applies mean/std),
    written once per image content; returns the list file."""
    images = state.eval_set.images
    key = content_key(list(images.shape), hashlib.sha256(images.tobytes()).hexdigest())
    folder = cache / f"toolchain-inputs-{key}"
    listing = folder / "inputs.txt"
    if listing.is_file():
        return listing
    tmp = cache / f".toolchain-inputs-{key}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    write_inputs(images, tmp / "inputs.txt")
    try:
        os.replace(tmp, folder)
    except OSError:  # another process wrote it first
        shutil.rmtree(tmp, ignore_errors=True)
    return listing


def _run(exe: Path, args: list[str], log: Log) -> None:
    """Runs the bundle script under the toolchain's python, relaying its lines with an ETA on the simulation."""
    try:
        proc = subprocess.Popen([str(exe), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as exc:
        raise ToolchainError(f"cannot run the toolchain python {exe}: {exc}") from None
    lines: list[str] = []
    sim_start = None
    try:
        for raw in proc.stdout or ():
            line = raw.rstrip()
            lines.append(line)
            text = line.removeprefix("[build_rknn] ")
            if text.startswith("built "):
                sim_start = time.perf_counter()
            progress = re.fullmatch(r"simulate (\d+)/(\d+)", text)
            if progress and sim_start is not None:
                done, total = int(progress.group(1)), int(progress.group(2))
                el = time.perf_counter() - sim_start
                log(f"  {text} ({el:.0f} s, ETA {el / max(done, 1) * (total - done):.0f} s)")
            else:
                log(f"  {text}")
        proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: do not leave the toolchain running
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        tail = " | ".join(x.removeprefix("[build_rknn] ").strip() for x in lines[-4:])
        raise ToolchainError(f"{Path(args[0]).name} under {exe} exited with {proc.returncode}: {tail}")
