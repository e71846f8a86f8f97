"""The study a search process runs trials in: the project's Optuna study with its sampler.

``worker`` offsets the sampler seed so parallel workers do not propose the same trials.
"""

from __future__ import annotations

from autoq.pipeline import Project
from autoq.results.store import load_study
from autoq.search.sampler import make_sampler

__all__ = ["open_study"]


def open_study(project: Project, *, seed: int | None = None, create: bool = True, worker: int = 0):
    """Opens (or creates) the project's study with the sampler of ``search.sampler``."""
    cfg = project.config
    seed = cfg.search.seed if seed is None else seed
    return load_study(project, sampler=make_sampler(cfg, seed + worker, compile_limits=bool(project.target.onchip_bytes)), create=create)
