"""Trials whose worker died: failed and re-queued once, whether it died inside the objective
(heartbeat) or before reaching it (inside ``study.ask()``)."""

from __future__ import annotations

from autoq.trial_record import STARTED_ATTR

__all__ = ["ORPHAN_SECONDS", "fail_stale_trials"]

ORPHAN_SECONDS = 120.0  # a RUNNING trial that never reached the objective after this long: its worker died


def fail_stale_trials(study) -> None:
    """Fails (and re-queues once) trials whose heartbeat stopped; a no-op without heartbeats.

    Also trials whose worker died inside ``study.ask()`` (the sampler runs there, before Optuna's
    heartbeat thread starts): RUNNING without a heartbeat, Optuna never calls them stale, and the
    exact-budget wait would wait for them forever. A trial that never reached the objective
    (no `STARTED_ATTR`) ``ORPHAN_SECONDS`` after it started is failed and re-queued the same way.
    """
    import copy
    from datetime import datetime

    import optuna
    from optuna.trial import TrialState

    optuna.storages.fail_stale_trials(study)
    storage = study._storage
    interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
    if not interval:
        return
    callback = storage.get_heartbeat_stale_trial_callback()
    now = datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        age = (now - t.datetime_start).total_seconds() if t.datetime_start else 0.0
        if t.user_attrs.get(STARTED_ATTR) == t.number or age < max(6 * interval, ORPHAN_SECONDS):
            continue
        try:
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        if callback is not None:
            callback(study, copy.deepcopy(storage.get_trial(t._trial_id)))
