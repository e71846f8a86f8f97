"""``autoq cost-model`` subcommands: fit a target to measurements, print a latency breakdown.

Wiring (in ``autoq/cli.py``'s ``build_parser``)::

    from autoq.app.cost_model import add_cost_model_parser
    add_cost_model_parser(sub)

Commands return an exit code and raise ``AutoqError`` for user mistakes (``main`` prints them).
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from autoq.config import load_config
from autoq.errors import ConfigError
from autoq.model.graph import load_model, node_table
from autoq.pipeline import Project
from autoq.plan import QuantConfig
from autoq.results.store import load_study
from autoq.surrogates.cost_model import estimate_latency, load_target
from autoq.surrogates.fit import fit_target, load_measurements, read_config
from autoq.trial_record import trial_config

__all__ = ["add_cost_model_parser", "cmd_cost_model_breakdown", "cmd_cost_model_fit"]


def add_cost_model_parser(subparsers) -> argparse.ArgumentParser:
    """Adds ``cost-model {fit,breakdown}`` to an argparse ``subparsers`` object."""
    p = subparsers.add_parser("cost-model", help="fit a hardware target to measurements, show latency breakdowns")
    sub = p.add_subparsers(dest="cost_model_command", required=True)

    f = sub.add_parser(
        "fit",
        help="fit a target's parameters to measured latencies and write the fitted target YAML",
        description="CSV columns: config (QuantConfig YAML/JSON) or trial (needs --config), ms, "
        "optional profile (Horizon profiler.log / RKNN eval_perf / ORT profile JSON) and format. "
        "A non-CSV file is read as one profile of the all-int8 model.",
    )
    f.add_argument("--target", required=True, help="built-in target name or target .yaml to start from")
    f.add_argument("--measurements", required=True, help="CSV of (config|trial, ms[, profile]) or one profiler file")
    f.add_argument("--config", help="autoq.yaml (model, and the study for trial numbers)")
    f.add_argument("--model", help="ONNX model (when no --config)")
    f.add_argument("--holdout", type=float, default=0.3, help="fraction held out for the before/after MAPE (0.3)")
    f.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    f.add_argument("--ridge", type=float, default=1e-3, help="pull towards the starting values (1e-3)")
    f.add_argument("-o", "--output", required=True, help="fitted target .yaml to write")
    f.set_defaults(func=cmd_cost_model_fit)

    b = sub.add_parser("breakdown", help="print the per-node/per-segment latency table of a config on a target")
    b.add_argument("--target", required=True, help="target name or .yaml")
    b.add_argument("--config", help="autoq.yaml (for the model)")
    b.add_argument("--model", help="ONNX model (when no --config)")
    b.add_argument("--quant", help="QuantConfig YAML/JSON (default: all int8)")
    b.add_argument("--segments", action="store_true", help="print only the segment summary")
    b.set_defaults(func=cmd_cost_model_breakdown)
    return p


def _model_and_study(args: argparse.Namespace):
    """(LoadedModel, config_for_trial or None) from --config or --model."""
    if getattr(args, "config", None):

        project = Project(load_config(args.config))

        def config_for_trial(number: int):
            study = load_study(project)
            trials = [t for t in study.get_trials(deepcopy=False) if t.number == number]
            if not trials:
                raise ConfigError(f"trial {number} is not in study {project.config.search.study_name}")
            return trial_config(trials[0])

        return project.model, config_for_trial
    if getattr(args, "model", None):
        return load_model(args.model), None
    raise ConfigError("give --config autoq.yaml or --model model.onnx (the node table comes from the model)")


def _nodes_at(model):
    @functools.lru_cache(maxsize=16)
    def nodes_at(resolution):
        if resolution is None:
            return model.nodes
        channels = model.input_shape[1] if len(model.input_shape) == 4 and isinstance(model.input_shape[1], int) else 3
        return node_table(model.proto, (1, channels, int(resolution[0]), int(resolution[1])))

    return nodes_at


def cmd_cost_model_fit(args: argparse.Namespace) -> int:
    if not 0 <= args.holdout < 1:
        raise ConfigError(f"--holdout must be in [0, 1), got {args.holdout}")
    target = load_target(args.target, key="--target")
    model, config_for_trial = _model_and_study(args)
    measurements = load_measurements(args.measurements, nodes_at=_nodes_at(model), config_for_trial=config_for_trial)
    try:
        result = fit_target(target, measurements, holdout=args.holdout, seed=args.seed, ridge=args.ridge)
    except ValueError as exc:
        raise ConfigError(f"{args.measurements}: {exc}") from None
    print(result.report())
    out = result.write(args.output)
    print(f"wrote {out} (use it as target.name: {out})")
    return 0


def cmd_cost_model_breakdown(args: argparse.Namespace) -> int:
    target = load_target(args.target, key="--target")
    model, _ = _model_and_study(args)
    cfg = read_config(Path(args.quant), "--quant") if args.quant else QuantConfig.uniform("int8")
    est = estimate_latency(_nodes_at(model)(cfg.resolution), cfg, target)
    if args.segments:
        for i, (dev, count, ms) in enumerate(est.segments):
            print(f"segment {i:3d}  {dev}  {count:4d} nodes  {ms:9.3f} ms")
        print(f"boundaries {est.boundaries} ({est.boundary_ms:.3f} ms), converts {est.converts} "
              f"({est.convert_ms:.3f} ms), fixed {est.fixed_ms:.3f} ms, total {est.total_ms:.3f} ms")
    else:
        print(est.table(), end="")
    return 0
