"""Screenshots of what a person opens the morning after a search, from the demo study (headless Chromium,
loopback only): the MLflow experiment as it opens, the saved front view, the front chart run, a front
member's run page, the HTML report and optuna-dashboard (skipped when it is not installed).

Usage: python experiments/mlflow_ui_screenshot.py [--dir DEMO_DIR] [--budget 12] [--out experiments/results]
Without --dir it runs `autoq demo --budget B` in a temporary folder first. Writes issue17_*.png (each
re-encoded smaller if over 300 KB).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import cv2

from autoq.cli import main as autoq
from autoq.report.ui_shot import (
    CLOSE_ASSISTANT,
    chromium_screenshot,
    free_port,
    serve_mlflow_ui,
    webdriver_screenshot,
)
from autoq.trial_record import FRONT_VIEW_ATTR, PARENT_ATTR

ROOT = Path(__file__).resolve().parents[1]
METRICS_WAIT = "canvas, svg.main-svg, .js-plotly-plot"


def _shrink(out: Path) -> None:
    if out.stat().st_size > 300_000:
        img = cv2.imread(str(out))
        cv2.imwrite(str(out), cv2.resize(img, None, fx=0.75, fy=0.75, interpolation=cv2.INTER_AREA),
                    [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")


@contextlib.contextmanager
def _optuna_dashboard(storage: str):
    port = free_port()
    proc = subprocess.Popen([shutil.which("optuna-dashboard"), storage, "--port", str(port), "--host", "127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(base + "/api/studies", timeout=2).read()  # noqa: S310 (loopback)
                break
            time.sleep(0.5)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", help="an `autoq demo` folder (default: a new one in a temporary folder)")
    ap.add_argument("--budget", type=int, default=12)
    ap.add_argument("--out", default=str(ROOT / "experiments/results"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        demo = Path(args.dir) if args.dir else Path(tmp) / "demo"
        if not args.dir:
            assert autoq(["demo", "--budget", str(args.budget), "--dir", str(demo)]) == 0
        cfg = demo / "autoq.yaml"

        import optuna
        from mlflow.tracking import MlflowClient

        study = optuna.load_study(study_name="demo", storage=f"sqlite:///{demo / '.autoq/study.db'}")
        client = MlflowClient(f"sqlite:///{demo / 'mlflow.db'}")
        exp = client.get_experiment_by_name("autoq-demo").experiment_id
        parent = study.user_attrs[PARENT_ATTR]
        chart = client.search_runs([exp], "tags.`autoq.kind` = 'front'")[0].info.run_id
        members = sorted(study.best_trials, key=lambda t: t.values[1])
        member = min(members[1:] or members, key=lambda t: t.values[0] + t.values[1] / 100)  # a useful trade-off
        shots = {
            "issue17_mlflow_opens.png": (f"#/experiments/{exp}/runs", {}),
            "issue17_mlflow_front_view.png": (study.user_attrs[FRONT_VIEW_ATTR], {}),
            "issue17_mlflow_front_chart.png": (f"#/experiments/{exp}/runs/{chart}/model-metrics", {"wait_selector": METRICS_WAIT}),
            "issue17_mlflow_front_member_run.png": (f"#/experiments/{exp}/runs/{member.user_attrs['mlflow_run_id']}",
                                                    {"wait_selector": "h2, h1"}),
            "issue17_mlflow_study_run.png": (f"#/experiments/{exp}/runs/{parent}", {"wait_selector": "h2, h1"}),
        }
        with serve_mlflow_ui(f"sqlite:///{demo / 'mlflow.db'}") as base:
            for name, (path, kw) in shots.items():
                webdriver_screenshot(f"{base}/{path}", out / name, size=(1600, 1000), expand_runs=False,
                                     scripts=(CLOSE_ASSISTANT,), **kw)
                _shrink(out / name)

        report = demo / "report.html"
        assert autoq(["report", "-c", str(cfg), "-o", str(report)]) == 0
        chromium_screenshot(report.resolve().as_uri(), out / "issue17_report.png", size=(1400, 2200), budget_ms=3000)
        _shrink(out / "issue17_report.png")

        if shutil.which("optuna-dashboard") is None:
            print("optuna-dashboard not installed (pip install optuna-dashboard): its screenshot skipped")
            return 0
        with _optuna_dashboard(f"sqlite:///{demo / '.autoq/study.db'}") as base:
            study_id = study._study_id
            webdriver_screenshot(f"{base}/dashboard/studies/{study_id}", out / "issue17_optuna_dashboard.png",
                                 size=(1600, 1100), expand_runs=False, wait_selector="svg.main-svg, .js-plotly-plot")
            _shrink(out / "issue17_optuna_dashboard.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
