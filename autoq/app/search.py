"""`run_search`: prepare the study, run trials until the budget is done, publish the front."""

from __future__ import annotations

from collections.abc import Callable

from autoq.app.publish import finish_study
from autoq.errors import SearchError
from autoq.pipeline import Project
from autoq.search.loop import optimize, prepare_study

__all__ = ["run_search"]


def run_search(
    project: Project,
    *,
    budget: int | None = None,
    timeout: float | None = None,
    seed: int | None = None,
    worker: int = 0,
    log: Callable[[str], None] = print,
):
    """Runs trials until the study holds ``budget`` finished trials (or ``timeout`` seconds pass).

    Running it again with the same project continues the same study; several processes
    (``autoq worker``) may run it at once against one storage.
    """
    cfg = project.config
    budget = cfg.search.budget if budget is None else budget
    timeout = cfg.search.timeout if timeout is None else timeout
    if budget <= 0:
        raise SearchError("--budget must be > 0 (number of trials)")
    prepared = prepare_study(project, seed=seed, worker=worker, log=log)
    study = optimize(project, prepared, budget=budget, timeout=timeout, log=log)
    finish_study(project, prepared, log=log)
    return study
