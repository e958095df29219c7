"""Reading a study's runs back from MLflow: every trial's child run as a :class:`TrialRunRecord`,
and a run's artifacts.

The names read are :mod:`trainables.mlflow_layout`'s, the ones the workers wrote
(:mod:`trainables.trial_run`). ``study.results`` (records from MLflow), ``study.trial`` (a
completed trial's record), ``study.answer`` (the per-query arrays) and :mod:`study.parent_run`
(reconciliation) read through here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from trainables import metric_names as names
from trainables.mlflow_layout import (
    COMPLETED,
    EARLY_STOPPED,
    FAILED,
    ROLE_TRIAL,
    TAG_COMPLETED,
    TAG_EARLY_STOPPED,
    TAG_PARENT,
    TAG_REASON,
    TAG_ROLE,
    TAG_TRIAL_ID,
    UNFINISHED,
)
from trainables.trial_run import last_logged_epoch

def child_runs_of(client, experiment_id: str, parent_run_id: str) -> list:
    """Every child run of ``parent_run_id`` (the one search for a study's trials)."""
    return client.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}'",
        max_results=10000,
    )


def children_of(client, experiment_id: str, parent_run_id: str) -> dict[str, Any]:
    """The child runs of ``parent_run_id`` by trial id."""
    return {r.data.tags.get(TAG_TRIAL_ID, r.info.run_id): r for r in child_runs_of(client, experiment_id, parent_run_id)}


@dataclass(frozen=True)
class TrialRunRecord:
    """What a child run says of its trial: ``metrics`` under their source names (the numeric
    copies of the searched parameters left out: the params hold them), ``params`` parsed back
    to numbers, ``epochs_done`` the last logged epoch."""

    trial_id: str
    run_id: str
    status: str  # COMPLETED, FAILED, EARLY_STOPPED or UNFINISHED
    params: dict
    metrics: dict
    epochs_done: int
    reason: Optional[str]


def read_trial_run(client, run) -> TrialRunRecord:
    """The :class:`TrialRunRecord` of child run ``run``."""
    tags, data = run.data.tags, run.data
    epochs_done = max(last_logged_epoch(client, run), 0)
    params = {k: parse_param(v) for k, v in data.params.items()}
    metrics = {k: v for k, v in names.to_source_names(data.metrics).items() if k not in names.SEARCHED_PARAMS}
    return TrialRunRecord(tags.get(TAG_TRIAL_ID, run.info.run_id), run.info.run_id,
                          _status_of(run.info.status, tags, epochs_done, params.get("epochs")), params, metrics,
                          epochs_done, tags.get(TAG_REASON))


def trial_runs(client, experiment_id: str, parent_run_id: str) -> list[TrialRunRecord]:
    """Every trial's child run under ``parent_run_id``, read back."""
    return [read_trial_run(client, run) for run in child_runs_of(client, experiment_id, parent_run_id)
            if run.data.tags.get(TAG_ROLE) in (None, ROLE_TRIAL)]


def _status_of(mlflow_status: str, tags: Mapping[str, str], epochs_done: int, epochs: Any) -> str:
    if mlflow_status == "FAILED":
        return FAILED
    if tags.get(TAG_EARLY_STOPPED) == "true":
        return EARLY_STOPPED
    if mlflow_status == "FINISHED" and (tags.get(TAG_COMPLETED) == "true" or epochs_done >= (epochs or 0)):
        return COMPLETED
    return UNFINISHED


def parse_param(text: Optional[str]) -> Any:
    """An MLflow param string back to int/float/None/bool where it looks like one."""
    if text is None or text == "None":
        return None
    if text in ("True", "False"):
        return text == "True"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


__all__ = [
    "child_runs_of",
    "children_of",
    "TrialRunRecord",
    "read_trial_run",
    "trial_runs",
    "parse_param",
]
