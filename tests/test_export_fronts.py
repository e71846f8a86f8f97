"""Every front member of a small study on each vendor target, exported in every format but rknn (which runs
its own toolchain, tests/test_rknn.py): each bundle passes its format's strict checker, or the exporter refuses
the trial with one line (e.g. int16 for vamc); the target's own format never refuses (issue 20)."""

from __future__ import annotations

from pathlib import Path

import pytest
from checkers import CHECKERS
from tiny_project import make_tiny_project

from autoq.app.search import run_search
from autoq.config import load_config
from autoq.errors import ExportError
from autoq.export import export_config
from autoq.export.run import trial_context
from autoq.pipeline import Project
from autoq.results.front import front_trials
from autoq.results.store import load_study

TARGETS = ("horizon-x3", "horizon-j5", "axera-ax620a", "axera-ax650", "vastai-va1", "ascend-310p")


@pytest.mark.parametrize("target", TARGETS)
def test_every_front_member_passes_every_checker(tmp_path: Path, target: str) -> None:
    cfg = make_tiny_project(tmp_path / "p", rich=True, extra=f"target: {{name: {target}}}\nspace: {{per_node_top_k: 0}}\n")
    project = Project(load_config(cfg))
    run_search(project, budget=8, log=lambda _: None)
    study = load_study(project)
    front = front_trials(study, project)
    assert front
    own = project.target.export_format
    for t in front:
        ctx = trial_context(project, study, t)
        for fmt, check in CHECKERS.items():
            out = tmp_path / "out" / f"{t.number}-{fmt}"
            try:
                export_config(ctx, fmt, out)
            except ExportError as exc:
                assert fmt != own, f"{target} trial {t.number}: its own format {fmt} refused: {exc}"
                assert "\n" not in str(exc)
                continue
            problems = check(out)
            assert not problems, f"{target} trial {t.number} {fmt}: {problems[:5]}"
