"""The study's side of MLflow: its experiment, its parent run, and keeping child runs honest.

One MLflow experiment per study; one parent run holding the space, the search settings and,
at the end, the best config and the summary artifacts. Child runs (one per trial) are written
by the trials (:mod:`trainables.tracking`); the driver only reconciles them with Tune's view
at the end (early-stopped, failed, interrupted), so no run is left RUNNING.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional

from study.results import COMPLETED, EARLY_STOPPED, FAILED, TrialRecord
from study.state import StudyState, describe
from trainables.metric_names import SEARCHED_PARAMS, definitions_markdown
from trainables.tracking import (
    PER_QUERY_FILE,
    TAG_COMPLETED,
    TAG_EARLY_STOPPED,
    TAG_REASON,
    TAG_ROLE,
    TAG_STUDY,
    TAG_TRIAL_ID,
    TrackingError,
    TrackingInfo,
    child_runs_of,
    client_for,
    end_trial_run,
    open_trial_run,
    trial_run_name,
)

TAG_DESCRIPTION = "mlflow.note.content"  # MLflow's description of an experiment or run (rendered as markdown)


def ensure_experiment(client: Any, name: str) -> str:
    """The id of MLflow experiment ``name``, created (or restored from deleted) when needed, with
    the metric definitions as its description (what a UI user reads first)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        experiment_id = client.create_experiment(name)
    else:
        experiment_id = experiment.experiment_id
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment_id)
    client.set_experiment_tag(experiment_id, TAG_DESCRIPTION, definitions_markdown())
    return experiment_id


def start_parent_run(client: Any, state: StudyState) -> str:
    """Create the study's parent run with its space and search settings; returns the run id."""
    run = client.create_run(
        state.experiment_id,
        run_name=f"study-{state.name}",
        tags={TAG_ROLE: "study", TAG_STUDY: state.name, "mlclip.space": str(state.space.get("name"))},
    )
    run_id = run.info.run_id
    from mlflow.entities import Param

    params = [Param(k, str(v)[:6000]) for k, v in describe(state).items()]
    client.log_batch(run_id, params=params)
    with tempfile.TemporaryDirectory() as folder:
        _write(Path(folder) / "space.json", state.space.get("raw", {}))
        _write(Path(folder) / "base_config.json", state.base_config)
        client.log_artifacts(run_id, folder, artifact_path="study")
    return run_id


def reopen_parent_run(client: Any, run_id: str) -> None:
    """Mark a resumed study's parent run RUNNING again; TrackingError when it is gone."""
    try:
        run = client.get_run(run_id)
    except Exception as err:  # noqa: BLE001
        raise TrackingError(f"the study's parent MLflow run {run_id} is gone ({type(err).__name__})") from None
    if run.info.status != "RUNNING":
        client.update_run(run_id, status="RUNNING")


def child_runs(client: Any, state: StudyState) -> dict[str, Any]:
    """The study's child runs by trial id."""
    return children_of(client, state.experiment_id, state.parent_run_id)


def children_of(client: Any, experiment_id: str, parent_run_id: str) -> dict[str, Any]:
    """The child runs of ``parent_run_id`` by trial id."""
    return {r.data.tags.get(TAG_TRIAL_ID, r.info.run_id): r for r in child_runs_of(client, experiment_id, parent_run_id)}


def trial_queries(client: Any, runs: dict[str, Any], records: Iterable[TrialRecord]) -> list:
    """Per-query AP arrays (:class:`study.answer.TrialQueries`) of the completed trials whose child
    run holds the artifact :data:`PER_QUERY_FILE`; trials without it are left out."""
    from study.answer import load_trial_queries

    out = []
    with tempfile.TemporaryDirectory() as folder:
        for record in records:
            run = runs.get(record.trial_id)
            ratio, seed = record.params.get("ratio"), record.params.get("seed") or 0
            if record.status != COMPLETED or run is None or not isinstance(ratio, (int, float)):
                continue
            try:
                path = client.download_artifacts(run.info.run_id, PER_QUERY_FILE, folder)
            except Exception:  # noqa: BLE001 - no such artifact (e.g. an older or a stand-in trial)
                continue
            out.append(load_trial_queries(path, record.trial_id, float(ratio), int(seed)))
    return out


def reconcile_children(client: Any, state: StudyState, records: Iterable[TrialRecord]) -> None:
    """Make every child run's status match Tune's outcome; close runs no trial owns any more."""
    runs = child_runs(client, state)
    for record in records:
        run = runs.pop(record.trial_id, None)
        if record.status == FAILED:
            run = run or _record_failed_trial(client, state, record)
            if run.info.status != "FAILED" or not run.data.tags.get(TAG_REASON):
                end_trial_run(client, run.info.run_id, "FAILED", record.reason or "failed")
        elif run is None:
            continue
        elif record.status == EARLY_STOPPED:
            client.set_tag(run.info.run_id, TAG_EARLY_STOPPED, "true")
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, status="FINISHED")
        elif run.info.status != "RUNNING":
            continue
        elif record.status == COMPLETED:
            client.set_tag(run.info.run_id, TAG_COMPLETED, "true")
            client.set_terminated(run.info.run_id, status="FINISHED")
        else:  # unfinished (interrupted): --resume re-opens it
            client.set_terminated(run.info.run_id, status="KILLED")
    for run in runs.values():  # runs of trials Tune no longer knows: never leave them RUNNING
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status="KILLED")


def _record_failed_trial(client: Any, state: StudyState, record: TrialRecord) -> Any:
    """A child run for a trial that failed before it could open one (so it is still listed)."""
    from trainables.config import ConfigError, TrialConfig

    shown = {k: record.params[k] for k in SEARCHED_PARAMS if record.params.get(k) is not None}
    info = TrackingInfo(state.tracking_uri, state.experiment_id, state.parent_run_id, record.trial_id,
                        trial_run_name(record.trial_id, shown))
    try:
        config: Any = TrialConfig.from_dict(record.params)
    except ConfigError:
        config = {k: v for k, v in record.params.items()}
    return open_trial_run(client, info, config)


def failure_reasons(client: Any, state: StudyState) -> dict[str, str]:
    """Failure reasons recorded on child runs (set in-process, so more precise than Tune's)."""
    return {tid: r.data.tags[TAG_REASON] for tid, r in child_runs(client, state).items() if r.data.tags.get(TAG_REASON)}


def log_summary(client: Any, run_id: str, best: Optional[TrialRecord], metric: str, files: Iterable[Path],
                markdown: str = "") -> None:
    """Best config (tags, metric, JSON), the summary files as parent-run artifacts, and the answer's
    markdown as the parent run's description (MLflow renders it on the run page)."""
    if markdown:
        client.set_tag(run_id, TAG_DESCRIPTION, markdown)
    if best is not None:
        shown = {k: v for k, v in best.params.items() if not isinstance(v, (list, tuple))}
        client.set_tag(run_id, "best.trial_id", best.trial_id)
        for key in SEARCHED_PARAMS:
            if key in shown:
                client.set_tag(run_id, f"best.{key}", str(shown[key]))
        if math.isfinite(best.value(metric)):  # by either name: best.value resolves short names
            client.log_metric(run_id, f"best/{metric}", best.value(metric))
    for path in files:
        if path and Path(path).is_file():
            client.log_artifact(run_id, str(path), artifact_path="summary")


def close_parent_run(client: Any, run_id: str, status: str) -> None:
    """FINISHED, FAILED or KILLED (interrupted: ``--resume`` re-opens it)."""
    client.set_terminated(run_id, status=status)


def find_parent_run(client: Any, experiment_id: str, parent_run_id: Optional[str] = None) -> Any:
    """The given parent run, or the latest study parent run of the experiment, or None."""
    if parent_run_id:
        return client.get_run(parent_run_id)
    runs = client.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{TAG_ROLE}` = 'study'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def _write(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str), encoding="utf-8")


__all__ = ["client_for", "ensure_experiment", "start_parent_run", "reconcile_children", "log_summary"]
