"""MLflow mirror of the Optuna study: a run per study, a run per trial, a front chart run.

What `mlflow ui` opens on is the front: a trial run is nested under its study's run (collapsed)
while it is off the front and a top-level run while it is on it, so the experiment's table lists
the front members (named ``★ trial N · drop ...``), the front chart and the study run. Every trial
run keeps tags ``autoq.study_run`` (the study run's id) and ``autoq.study`` (the study's name),
which is how readers find a study's runs; ``mlflow.parentRunId`` only says what is collapsed.

Optuna's storage is the source of truth. MLflow is written through an explicit client and each
run id is stored on the Optuna trial (``user_attrs["mlflow_run_id"]``) and study, so a resumed
study reopens the same runs instead of duplicating them.
"""

from __future__ import annotations

import json
import logging
import re
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from autoq.plan import QuantConfig, TrialResult
from autoq.trial_record import FAIL_ATTR, RUN_ATTR

EXPERIMENT_KIND = "mlflow.experimentKind"
NOTE = "mlflow.note.content"  # a run's description (markdown) in the MLflow UI
PARENT_TAG = "mlflow.parentRunId"  # nests a run under another in the UI (collapsed until expanded)
STUDY_RUN_TAG = "autoq.study_run"  # the study run's id, on every trial and front chart run
STUDY_TAG = "autoq.study"  # the study's name, on every run of the study
VIEW_TAG = "mlflow.sharedViewState."  # + key: a runs-table view the UI opens from ``?viewStateShareKey=key``
#: Columns of the front view: the drop with its interval, the estimate, mAP (all in points but latency).
VIEW_COLUMNS = ("map_drop_pt", "map_drop_pt_lo", "map_drop_pt_hi", "latency_ms", "map_pt")


def study_run_of(run) -> str | None:
    """The id of the study run ``run`` belongs to (runs logged before ``autoq.study_run``: their parent)."""
    tags = run.data.tags
    return tags.get(STUDY_RUN_TAG) or tags.get(PARENT_TAG)

#: Trial metrics on the 0..1 scale, logged to MLflow in mAP points under these names (what people
#: filter and chart: ``metrics.map_drop_pt < 1``); Optuna keeps the 0..1 values.
POINT_METRICS = {
    "map": "map_pt", "map50": "map50_pt", "map_small": "map_small_pt", "map_medium": "map_medium_pt",
    "map_large": "map_large_pt", "map_drop": "map_drop_pt", "map_drop_lo": "map_drop_pt_lo",
    "map_drop_hi": "map_drop_pt_hi",
}


def mlflow_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """A trial's metrics as MLflow shows them: mAP values in points, every value rounded to 4 decimals."""
    out = {}
    for k, v in metrics.items():
        v = float(v)
        if k in POINT_METRICS:
            k, v = POINT_METRICS[k], 100.0 * v
        out[k] = round(v, 4) if v == v else v
    return out


def _quiet() -> None:
    for name in ("mlflow", "alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)


class Tracker:
    """Writes study and trial runs to one MLflow experiment."""

    def __init__(self, *, uri: str, experiment: str, artifact_root: Path) -> None:
        _quiet()
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.study_name = ""  # set by `parent_run`: tag ``autoq.study`` of the runs this tracker opens
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            artifact_root.mkdir(parents=True, exist_ok=True)
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=artifact_root.resolve().as_uri(), tags={EXPERIMENT_KIND: "custom_model_development"}
            )
        else:
            self.experiment_id = exp.experiment_id
            if EXPERIMENT_KIND not in (exp.tags or {}):
                # MLflow 3 UI opens an experiment without this tag on its GenAI overview, not on the runs
                self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND, "custom_model_development")

    @staticmethod
    def _now() -> int:
        return int(time.time() * 1000)

    def parent_run(self, study_name: str, existing: str | None, params: Mapping[str, Any]) -> str:
        """The study's parent run: reopened when ``existing`` (from the study's user attrs) is given."""
        self.study_name = study_name
        if existing:
            self.client.update_run(existing, status="RUNNING")
            return existing
        run = self.client.create_run(self.experiment_id, run_name=f"study {study_name}",
                                     tags={"autoq.kind": "study", STUDY_TAG: study_name})
        self._log_params(run.info.run_id, params)
        return run.info.run_id

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def start_trial(self, *, parent_id: str, number: int, params: Mapping[str, Any]) -> str:
        """Opens the run of trial ``number``, nested under the study run until it joins the front (the
        caller stores its id on the trial at once)."""
        tags = {PARENT_TAG: parent_id, STUDY_RUN_TAG: parent_id, "autoq.trial": str(number), "pareto": "false",
                "state": "running"}
        if self.study_name:
            tags[STUDY_TAG] = self.study_name
        run = self.client.create_run(self.experiment_id, run_name=f"trial {number}", tags=tags)
        self._log_params(run.info.run_id, params)
        return run.info.run_id

    def finish_trial(
        self, run_id: str, *, config: QuantConfig, result: TrialResult | None, failure: str | None = None,
        traceback: str | None = None,
    ) -> None:
        """Logs the trial's metrics and QuantConfig YAML and closes its run."""
        from mlflow.entities import Metric, RunTag

        ts = self._now()
        metrics: dict[str, float] = {}
        if result is not None:
            metrics.update(mlflow_metrics(result.metrics()))
            metrics.update({f"latency.{k}": round(float(v), 4) for k, v in result.latency_breakdown.items()})
            metrics.update({f"seconds.{k}": float(v) for k, v in result.seconds.items()})
        partial = result is not None and result.partial
        tags = [RunTag("state", "failed" if failure else ("pruned" if partial else "complete")),
                RunTag("partial", "true" if partial else "false")]
        if failure:
            tags.append(RunTag("failure_reason", failure[:5000]))
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()], tags=tags)
        self.client.log_text(run_id, yaml.safe_dump(config.to_dict(), sort_keys=False), "quant_config.yaml")
        if traceback:  # a failed trial's traceback: kept here, not printed in the search log
            self.client.log_text(run_id, traceback, "traceback.txt")
        if result is not None and result.latency_table:
            self.client.log_text(run_id, result.latency_table, "latency_breakdown.csv")
        if result is not None and result.per_class_ap:
            lines = ["class,ap_pt"] + [f"{k},{100 * v:.2f}" for k, v in result.per_class_ap.items()]
            self.client.log_text(run_id, "\n".join(lines) + "\n", "per_class_ap.csv")
        self.client.set_terminated(run_id, status="FAILED" if failure else "FINISHED")

    def close_stale(self, run_id: str, reason: str, *, retried: bool = False) -> None:
        """Marks the run of a trial whose worker died as failed (it never finished).

        ``retried``: the trial runs again as another trial. A run the dead worker had already
        finished (it died between logging and the study recording the result) is then closed as
        KILLED too, so the study's counted trials and the FINISHED runs stay one to one.
        """
        try:
            run = self.client.get_run(run_id)
        except Exception:  # the run was never created or was deleted
            return
        if run.info.status == "RUNNING" or (retried and run.info.status == "FINISHED"):
            self.client.set_tag(run_id, "state", "failed")
            self.client.set_tag(run_id, "failure_reason", reason)
            self.client.set_terminated(run_id, status="FAILED" if run.info.status == "RUNNING" else "KILLED")

    def mark_stale_runs(self, study) -> None:
        """Closes the runs of trials the heartbeat failed (their worker died mid-trial)."""
        from optuna.trial import TrialState

        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if RUN_ATTR in t.user_attrs and FAIL_ATTR not in t.user_attrs:
                self.close_stale(t.user_attrs[RUN_ATTR], f"worker stopped during trial {t.number}")

    def _runs(self, filter_string: str, parent_id: str) -> dict[str, Any]:
        """The experiment's runs matching ``filter_string`` that belong to study run ``parent_id``."""
        found: dict[str, Any] = {}
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string, max_results=1000, page_token=token)
            found.update((r.info.run_id, r) for r in page if study_run_of(r) == parent_id)
            token = page.token
            if not token:
                return found

    def _nest(self, run_id: str, parent_id: str, nested: bool) -> None:
        """Nests the run under the study run (off the front) or lifts it to the top level (on it)."""
        from mlflow.exceptions import MlflowException

        self.client.set_tag(run_id, STUDY_RUN_TAG, parent_id)  # runs logged before the tag existed
        if self.study_name:
            self.client.set_tag(run_id, STUDY_TAG, self.study_name)
        if nested:
            self.client.set_tag(run_id, PARENT_TAG, parent_id)
        else:
            try:
                self.client.delete_tag(run_id, PARENT_TAG)
            except MlflowException:  # already top level (another worker lifted it)
                pass

    def update_pareto(self, parent_id: str, members: Iterable[str] | Mapping[str, tuple[str, str]]) -> int:
        """Makes tag ``pareto`` match ``members`` among the study's trial runs, writing only the runs
        whose membership changed (one search for the runs tagged true now); returns how many changed.
        Exact across workers: it compares with what MLflow holds, not with what this process wrote.
        A run joining the front becomes a top-level run (what the UI lists when it opens); a run
        leaving it is nested under the study run again.

        ``members`` may map each run id to its (run name, description): front members are then named
        and described so they read at a glance in the runs table (written only when they differ), and
        a run that leaves the front gets its plain name ``trial N`` back."""
        labels = dict(members) if isinstance(members, Mapping) else {}
        front = {m for m in members if m}
        now = self._runs("tags.pareto = 'true'", parent_id)
        changed = (front - set(now)) | (set(now) - front)
        for run_id in sorted(changed):
            self.client.set_tag(run_id, "pareto", "true" if run_id in front else "false")
            self._nest(run_id, parent_id, nested=run_id not in front)
            if run_id not in front and labels:
                run = now[run_id]
                self.client.update_run(run_id, name=f"trial {run.data.tags.get('autoq.trial', '?')}")
                self.client.set_tag(run_id, NOTE, "")
        for run_id, (name, note) in labels.items():
            run = now.get(run_id)
            if run is None or run.info.run_name != name:
                self.client.update_run(run_id, name=name)
            if run is None or run.data.tags.get(NOTE) != note:
                self.client.set_tag(run_id, NOTE, note)
        return len(changed)

    def set_description(self, run_id: str, markdown: str) -> None:
        """The run's description in the MLflow UI (tag ``mlflow.note.content``)."""
        self.client.set_tag(run_id, NOTE, markdown)

    def front_chart(self, parent_id: str, points: Iterable[tuple[float, float]], *, name: str) -> str:
        """A top-level run holding the front as one metric history, ``drop_pt_vs_step_latency_us`` (drop in points at step = latency in µs):
        its chart in the MLflow UI is the front, every member on it (the runs chart shows only the
        first 10 runs). Replaces the one an earlier finish of the study wrote."""
        from mlflow.entities import Metric

        for run_id in self._runs("tags.`autoq.kind` = 'front'", parent_id):
            self.client.delete_run(run_id)
        tags = {"autoq.kind": "front", STUDY_RUN_TAG: parent_id}
        if self.study_name:
            tags[STUDY_TAG] = self.study_name
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        ts = self._now()
        metrics = [Metric("drop_pt_vs_step_latency_us", round(100 * drop, 4), ts, int(round(1000 * lat))) for drop, lat in points]
        for i in range(0, len(metrics), 900):
            self.client.log_batch(run.info.run_id, metrics=metrics[i : i + 900])
        self.client.set_terminated(run.info.run_id)
        return run.info.run_id

    def front_view(self) -> str:
        """Saves the runs-table view of this study's front in the experiment (filter ``pareto = true``,
        sorted by latency, metric columns shown: MLflow opens runs with no metric column) and returns
        its address in ``mlflow ui``, relative to the UI's root (``#/experiments/...``)."""
        key = "front-" + re.sub(r"[^A-Za-z0-9_.-]", "_", self.study_name or "study")
        study = (self.study_name or "").replace("'", "\\'")
        state = {
            "searchFilter": f"tags.pareto = 'true' and tags.`{STUDY_TAG}` = '{study}'",
            "orderByKey": "metrics.`latency_ms`", "orderByAsc": True,
            "selectedColumns": [f"metrics.`{m}`" for m in VIEW_COLUMNS],
        }
        self.client.set_experiment_tag(self.experiment_id, VIEW_TAG + key, json.dumps(state))
        return f"#/experiments/{self.experiment_id}/runs?viewStateShareKey={urllib.parse.quote(key)}"

    def log_dir(self, run_id: str, local_dir: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def finish_parent(self, parent_id: str, *, metrics: Mapping[str, float], texts: Mapping[str, str]) -> None:
        from mlflow.entities import Metric

        ts = self._now()
        self.client.log_batch(parent_id, metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()])
        for name, text in texts.items():
            self.client.log_text(parent_id, text, name)
        self.client.set_terminated(parent_id, status="FINISHED")

    def log_to_run(self, run_id: str, *, metrics: Mapping[str, float], tags: Mapping[str, str] = {}) -> None:
        """Adds metrics and tags to a finished run (e.g. `autoq verify`'s toolchain results)."""
        from mlflow.entities import Metric, RunTag

        ts = self._now()
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()],
                              tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, run_id: str, path: Path) -> None:
        self.client.log_artifact(run_id, str(path))
