"""Screenshot of the MLflow UI showing a study's Pareto front (headless Chromium, loopback only).

Usage: python experiments/mlflow_ui_screenshot.py [--config experiments/_work/shared_yolox/autoq.yaml]
       [--filter "tags.pareto = 'true'"] [-o experiments/results/mlflow_ui.png]
Starts `mlflow ui` on a free 127.0.0.1 port, opens the experiment's runs table with the filter,
expands the study runs (nested trials) and saves a PNG (re-encoded smaller if over 300 KB).
"""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "experiments/_work/shared_yolox/autoq.yaml"))
    ap.add_argument("--filter", default="tags.pareto = 'true'")
    ap.add_argument("-o", "--output", default=str(ROOT / "experiments/results/mlflow_ui.png"))
    args = ap.parse_args()

    import cv2

    from autoq.config import load_config
    from autoq.pipeline import Project
    from autoq.report.ui_shot import serve_mlflow_ui, webdriver_screenshot
    from autoq.results.store import make_tracker

    project = Project(load_config(args.config))
    tracker = make_tracker(project)  # also tags the experiment so the UI opens on its runs
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    query = urllib.parse.quote(args.filter)
    with serve_mlflow_ui(project.config.tracking_uri()) as base:
        url = f"{base}/#/experiments/{tracker.experiment_id}/runs?searchFilter={query}"
        print(url)
        webdriver_screenshot(url, out, size=(1600, 1000))
    if out.stat().st_size > 300_000:
        img = cv2.imread(str(out))
        cv2.imwrite(str(out), cv2.resize(img, None, fx=0.75, fy=0.75, interpolation=cv2.INTER_AREA),
                    [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
