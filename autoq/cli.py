"""`autoq` command line. User errors (AutoqError) become one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoq.app.cost_model import add_cost_model_parser
from autoq.app.publish import finish_study
from autoq.app.search import run_search
from autoq.app.verify import TOOLCHAINS, verify
from autoq.config import TEMPLATE, load_config
from autoq.demo.project import write_demo_project
from autoq.errors import AutoqError, AutoqWarning, ConfigError
from autoq.export import formats_help
from autoq.export.run import export_pareto, export_trial
from autoq.pipeline import Project
from autoq.report.diagnose import run_diagnose
from autoq.report.fidelity import fidelity_report
from autoq.report.report import write_report
from autoq.results.front import format_pareto, pareto_rows, target_label
from autoq.results.store import load_study
from autoq.runtime.cores import (
    format_cores,
    parse_cores,
    pin_to_cores,
    pinned,
    split_cores,
)
from autoq.search.loop import prepare_study
from autoq.search.sensitivity import run_sensitivity, sensitivity_table, write_outputs
from autoq.surrogates.cost_model import TARGETS, load_target
from autoq.trial_record import FRONT_VIEW_ATTR

EXIT_USER_ERROR = 2
STORAGE_ENV = "AUTOQ_STORAGE"  # a worker's storage URL when --storage is not given (keeps passwords off argv)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _cores(text: str) -> tuple[int, ...]:
    try:
        return parse_cores(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _project(args: argparse.Namespace, log=_log):
    import dataclasses

    cfg = load_config(args.config)
    overrides = {k: getattr(args, k, None) for k in ("storage", "study_name")}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides:
        cfg = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, **overrides))
    return Project(cfg, log=log)


def cmd_init(args: argparse.Namespace) -> int:
    path = Path(args.output)
    if path.exists() and not args.force:
        raise ConfigError(f"{path} already exists; pass --force to overwrite it")
    path.write_text(TEMPLATE, encoding="utf-8")
    print(f"wrote {path}: edit model/data paths, then run `autoq search`")
    return 0


def _print_front(project, study) -> None:
    stored = study.user_attrs.get("float_map")  # the study's: no eval images preprocessed just to print
    if stored is None:
        base = project.baseline
        head = f"float mAP {100 * base.map:.2f} (AP50 {100 * base.map50:.2f})"
    else:
        head = f"float mAP {100 * float(stored):.2f}"
    print(f"\n{head}; Pareto front (mAP and drop in points, latency estimated by the {target_label(project)} cost model):")
    print(format_pareto(pareto_rows(study, project.quantizable_names, project), target_label(project)))


def _print_mlflow_hint(project, study=None) -> None:
    cfg = project.config
    view = study.user_attrs.get(FRONT_VIEW_ATTR) if study is not None else None
    print(
        f"\nOpen the runs:  mlflow ui --backend-store-uri {cfg.tracking_uri()}   (it lists the front: runs named '★ trial N ...')\n"
        + (f"Front table:    http://127.0.0.1:5000/{view}   (drop, interval, latency as columns)\n" if view else "")
        + f"Read the study: autoq report --config {cfg.file} -o report.html\n"
        f"Export a point: autoq export --config {cfg.file} --trial N -o bundle/   "
        f"(format {cfg.export.format or project.target.export_format}; autoq export --help lists the others)"
    )


def cmd_search(args: argparse.Namespace) -> int:
    project = _project(args)
    if args.workers > 1:
        study = _run_workers(project, args)
    else:
        study = run_search(project, budget=args.budget, timeout=args.timeout, seed=args.seed, log=_log)
    _print_front(project, study)
    _print_mlflow_hint(project, study)
    return 0


def _run_workers(project, args: argparse.Namespace):
    """Prepares the study here, then runs ``--workers`` `autoq worker` processes on it, each pinned to its
    own cores (`autoq.runtime.cores`) when there are at least as many cores as workers."""
    import subprocess

    cfg = project.config
    groups = split_cores(args.workers)
    if groups:
        with pinned(groups[0]):  # session settings measured (and recorded) on the cores a worker will have
            _ = project.session_settings
    prepared = prepare_study(project, seed=args.seed, log=_log)
    budget = args.budget or cfg.search.budget
    cmd = [sys.executable, "-m", "autoq", "worker", "--config", str(cfg.file), "--budget", str(budget)]
    cmd += ["--study-name", cfg.search.study_name]  # the storage URL (credentials) goes by environment, not argv
    if args.timeout:
        cmd += ["--timeout", str(args.timeout)]
    if args.seed is not None:
        cmd += ["--seed", str(args.seed)]
    cores = [["--cores", format_cores(g)] for g in groups] if groups else [[] for _ in range(args.workers)]
    _log(f"search: starting {args.workers} workers"
         + (f" on cores {' | '.join(format_cores(g) for g in groups)}" if groups else " sharing every core"))
    env = {**os.environ, STORAGE_ENV: cfg.storage_url()}
    procs = [subprocess.Popen([*cmd, "--worker-index", str(i), *cores[i]], env=env) for i in range(args.workers)]
    codes = [p.wait() for p in procs]
    if any(codes):
        _log(f"warning: worker exit codes {codes}; finished trials are kept, rerun to complete the budget")
    finish_study(project, prepared, log=_log)
    return prepared.study


def cmd_worker(args: argparse.Namespace) -> int:
    if args.storage is None and os.environ.get(STORAGE_ENV):  # set by `search --workers`: not visible in `ps`
        args.storage = os.environ[STORAGE_ENV]
    prefix = f"[worker {args.worker_index}] "
    if args.cores is not None and not pin_to_cores(args.cores):  # before ORT starts any thread
        _log(prefix + f"warning: could not pin to cores {format_cores(args.cores)}; running on every core")
    project = _project(args, log=lambda m: _log(prefix + m))
    run_search(
        project,
        budget=args.budget,
        timeout=args.timeout,
        seed=args.seed,
        worker=args.worker_index,
        log=lambda m: _log(prefix + m),
    )
    return 0


def cmd_pareto(args: argparse.Namespace) -> int:
    project = _project(args)
    study = load_study(project)
    _print_front(project, study)
    _print_mlflow_hint(project, study)
    return 0


def _export_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``-O KEY=VALUE`` flags -> options; values are read as YAML scalars (true, 2, bayes)."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"-O {pair!r}: write an exporter option as KEY=VALUE (see autoq export --help)")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def cmd_export(args: argparse.Namespace) -> int:
    project = _project(args)
    cfg = project.config
    fmt = args.format or cfg.export.format or project.target.export_format
    options = {**dict(cfg.export.options.get(fmt) or {}), **_export_options(args.option)}
    if args.pareto:
        paths = export_pareto(project, fmt=fmt, out_dir=Path(args.output), log=_log, **options)
    elif args.trial is not None:
        paths = export_trial(project, trial=args.trial, fmt=fmt, out=Path(args.output), **options)
    else:
        raise ConfigError("autoq export needs --trial N (see `autoq pareto`) or --pareto")
    folders = sorted({p.parent for p in paths})
    print(f"{fmt}: wrote {len(paths)} files into {', '.join(str(f) for f in folders[:4])}"
          + (f" ... ({len(folders)} folders)" if len(folders) > 4 else ""))
    for path in paths:
        if path.name == "run.sh" or path.parent in folders[:1] and path.suffix not in (".npy", ".npz", ".bin", ".png"):
            print(f"  {path}")
    runs = [p for p in paths if p.name == "run.sh"]
    if runs:
        print(f"next: bash {runs[0]}" + (f"  (and {len(runs) - 1} more run.sh)" if len(runs) > 1 else ""))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    verify(_project(args), trial=args.trial, pareto=args.pareto, toolchain=args.toolchain, python=args.python,
           log=_log, say=lambda line: print(line, flush=True))
    return 0


def cmd_check_fidelity(args: argparse.Namespace) -> int:
    print(fidelity_report(_project(args), args.trial))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    config_path = write_demo_project(Path(args.dir), log=_log)
    project = Project(load_config(config_path), log=_log)
    study = run_search(project, budget=args.budget, timeout=args.timeout, seed=args.seed, log=_log)
    _print_front(project, study)
    _print_mlflow_hint(project, study)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    project = _project(args)
    html, md = write_report(project, Path(args.output), trial=args.trial, log=_log)
    print(f"wrote {html} and {md}")
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    project = _project(args, log=_log)
    html, md = run_diagnose(project, Path(args.output), images=args.images, sens_images=args.sens_images,
                            top=args.top, log=_log)
    print(f"wrote {html} and {md}")
    return 0


def cmd_sensitivity(args: argparse.Namespace) -> int:
    project = _project(args, log=_log)
    sens = run_sensitivity(project, images=args.images, force=args.force, log=_log)
    print(sensitivity_table(sens, top=args.top))
    for path in write_outputs(sens, Path(args.output)):
        print(f"wrote {path}")
    return 0


def _default_formats() -> dict[str, list[str]]:
    """Export format -> the built-in targets it is the default of."""
    out: dict[str, list[str]] = {}
    for name in TARGETS.names():
        out.setdefault(load_target(name).export_format, []).append(name)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoq", description="Search how to quantize an ONNX detector for an edge NPU."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", "-c", default="autoq.yaml", help="project file (default ./autoq.yaml)")
        return p

    p = sub.add_parser("init", help="write a commented autoq.yaml template")
    p.add_argument("-o", "--output", default="autoq.yaml")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=cmd_init)

    def search_options(p: argparse.ArgumentParser, budget_default: int | None) -> None:
        p.add_argument("--budget", type=_positive_int, default=budget_default, metavar="N",
                       help="TOTAL trials the study should hold, not additional ones: a rerun continues up to N "
                            f"(default: search.budget in autoq.yaml, 30 when unset{', ' + str(budget_default) if budget_default else ''})")
        p.add_argument("--timeout", type=_positive_float, default=None, metavar="S",
                       help="stop this run after S seconds (default: search.timeout, none)")
        p.add_argument("--seed", type=int, default=None, help="sampler seed (default: search.seed, 0)")

    def storage_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--storage", help="Optuna storage URL (default: sqlite in .autoq/), e.g. postgresql://...")
        p.add_argument("--study-name", "--study", dest="study_name", help="study name (default: search.study_name)")

    p = with_config(sub.add_parser("search", help="run (or continue) the study"))
    search_options(p, None)
    storage_options(p)
    p.add_argument("--workers", type=_positive_int, default=1, help="local worker processes (default: 1)")
    p.set_defaults(func=cmd_search)

    p = with_config(sub.add_parser("worker", help="join an existing study as one more worker"))
    search_options(p, None)
    storage_options(p)
    p.add_argument("--worker-index", type=int, default=1, help="offsets the sampler seed")
    p.add_argument("--cores", type=_cores, default=None, metavar="LIST",
                   help="run on these cores only, e.g. 0 or 2-3 (set by search --workers)")
    p.set_defaults(func=cmd_worker)

    p = with_config(sub.add_parser("pareto", help="print the Pareto front of the study"))
    storage_options(p)
    p.set_defaults(func=cmd_pareto)

    p = with_config(sub.add_parser(
        "export", help="write a trial's bundle (config, model, calibration data, run.sh) for a compiler",
        epilog=formats_help(_default_formats()), formatter_class=argparse.RawDescriptionHelpFormatter))
    which = p.add_mutually_exclusive_group()
    which.add_argument("--trial", type=int, help="trial number (see `autoq pareto`)")
    which.add_argument("--pareto", action="store_true", help="export every Pareto-front trial into -o DIR/trial_<N>/")
    p.add_argument("--format", "-f", default=None,
                   help="export format (default: export.format, else the target's toolchain; list below)")
    p.add_argument("-O", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="an exporter option (repeatable; over export.options.<format> in autoq.yaml)")
    p.add_argument("-o", "--output", required=True, help="bundle folder (with --pareto: one subfolder per trial)")
    storage_options(p)
    p.set_defaults(func=cmd_export)

    p = with_config(sub.add_parser("verify", help="build trials with the vendor toolchain and compare its mAP"))
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", type=int, help="trial number (see `autoq pareto`)")
    which.add_argument("--pareto", action="store_true", help="every Pareto-front trial")
    p.add_argument("--toolchain", default="rknn", choices=sorted(TOOLCHAINS), help="vendor toolchain (default rknn)")
    p.add_argument("--python", help="the toolchain environment's python (default: toolchains.<name>.python)")
    storage_options(p)
    p.set_defaults(func=cmd_verify)

    p = with_config(sub.add_parser("check-fidelity", help="a trial's mAP with fake-quant vs integer kernels"))
    p.add_argument("--trial", type=int, required=True, help="trial number (see `autoq pareto`)")
    storage_options(p)
    p.set_defaults(func=cmd_check_fidelity)

    p = with_config(sub.add_parser("report", help="HTML + Markdown report: front, a trial's precision map, per-class AP, latency"))
    p.add_argument("--trial", type=int, default=None, help="trial to detail (default: the front member with the lowest drop)")
    p.add_argument("-o", "--output", default="report.html", help="HTML file (Markdown written next to it)")
    storage_options(p)
    p.set_defaults(func=cmd_report)

    p = with_config(sub.add_parser("diagnose", help="automated troubleshooting checklist as HTML + Markdown"))
    p.add_argument("--images", type=_positive_int, default=32, help="eval images for the mAP checks (default 32)")
    p.add_argument("--sens-images", type=_positive_int, default=8, help="images for the per-group sweep (default 8)")
    p.add_argument("--top", type=_positive_int, default=10, help="sensitive groups to report (default 10)")
    p.add_argument("-o", "--output", default="diagnose.html", help="HTML file (Markdown written next to it)")
    p.set_defaults(func=cmd_diagnose)

    p = with_config(sub.add_parser("sensitivity", help="rank node groups by the damage of int8 (cached; runs before a search)"))
    p.add_argument("--images", type=_positive_int, default=None, help="images of the sweep (default search.sensitivity_images)")
    p.add_argument("--top", type=_positive_int, default=20, help="units to print (default 20)")
    p.add_argument("--force", action="store_true", help="recompute even when cached")
    p.add_argument("-o", "--output", default="sensitivity.csv", help="CSV file (ranked bar chart PNG written next to it)")
    p.set_defaults(func=cmd_sensitivity)

    add_cost_model_parser(sub)

    p = sub.add_parser("demo", help="generate the demo project and run a search on it")
    p.add_argument("--dir", default="autoq-demo", help="where to write the demo project")
    search_options(p, 30)
    p.set_defaults(func=cmd_demo)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """autoq's own warnings as one line (no source line); other libraries' warnings as Python prints them."""
    if issubclass(category, AutoqWarning):
        print(f"autoq: warning: {message}", file=sys.stderr, flush=True)
    else:
        _PYTHON_SHOWWARNING(message, category, filename, lineno, file, line)


_PYTHON_SHOWWARNING = warnings.showwarning


def main(argv: Sequence[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except AutoqError as exc:
        print(f"autoq: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("autoq: interrupted; finished trials are saved, run the same command to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
