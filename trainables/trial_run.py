"""The MLflow child run of one trial, as rank 0 of the trial writes it (:class:`TrialRun`).

The names it writes under are :mod:`trainables.mlflow_layout`; the store it writes to is
:mod:`trainables.mlflow_store`; the per-query arrays go through :mod:`trainables.per_query`.
This is the worker's whole MLflow import path: the study's parent run, the reconciliation of
the trials' runs and the summary live on the study's side (:mod:`study.parent_run`,
:mod:`study.mlflow_runs`).

A trial that restarts (a worker group restored by Ray Train, or a trial resumed by
``--resume``) re-attaches to its run, found by the ``mlclip.trial_id`` tag under the parent,
so there is never a second run per trial.

``mlflow`` is imported inside the functions that log (its import cost:
docs/performance.md, "Start-up").
"""

from __future__ import annotations

import csv
import logging
import math
import numbers
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Optional

from trainables import metric_names as names
from trainables import per_query
from trainables.config import TrialConfig
from trainables.mlflow_layout import (
    FULL_METRICS_FILE,
    PER_QUERY_FILE,
    ROLE_TRIAL,
    TAG_PARENT,
    TAG_REASON,
    TAG_RESTARTED_AFTER,
    TAG_ROLE,
    TAG_INCOMPLETE,
    TAG_EPOCHS_DONE,
    TAG_TRIAL_ID,
    mlflow_metric_key,
)
from trainables.errors import naming_full, one_line
from trainables.mlflow_store import TrackingError, client_for, fetch_artifact, store_place

log = logging.getLogger(__name__)

# Never logged as metrics: bookkeeping, not measurements.
JUNK_KEYS = frozenset(
    {
        "epoch", "step", "pid", "timestamp", "time", "date", "hostname", "node_ip", "done",
        "training_iteration", "time_this_iter_s", "time_total_s", "time_since_restore",
        "iterations_since_restore", "checkpoint_path", "trial_id", "experiment_id",
        "world_rank", "world_size", "local_rank",
    }
)
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 5000


@dataclass(frozen=True)
class TrackingInfo:
    """Where a trial logs: picklable, passed from the study driver to rank 0 of the trial."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    trial_id: str
    run_name: str
    keep_metrics: tuple = ()  # objectives: logged even when they are no headline (study.report needs them)


def clean_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Finite real numbers only, under valid names; no bookkeeping keys or config values."""
    config_fields = {f.name for f in fields(TrialConfig)}
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if name in JUNK_KEYS or name in config_fields or isinstance(value, bool):
            continue
        if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
            value = value.item()  # numpy / torch scalars
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            continue
        value = float(value)
        if math.isfinite(value):
            out[mlflow_metric_key(name)] = value
    return out


def config_params(config: Any) -> dict[str, str]:
    """Every set TrialConfig field as an MLflow param string (lists joined with commas); fields that
    are None are left out (a ``"None"`` string would only break numeric comparisons in the UI)."""
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    out = {}
    for key, value in values.items():
        if value is None:
            continue
        text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        out[key] = text[:MAX_PARAM_LENGTH]
    return out


def param_metrics(config: Any) -> dict[str, float]:
    """The searched parameters (:data:`~trainables.metric_names.SEARCHED_PARAMS`) that ``config``
    holds as real numbers, for logging as MLflow metrics: params are strings in MLflow, so only a
    metric sorts, filters and plots numerically."""
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    out = {}
    for key in names.SEARCHED_PARAMS:
        value = values.get(key)
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


def find_trial_run(client, info: TrackingInfo):
    """The child run of ``info.trial_id`` under the parent run, or None."""
    runs = client.search_runs(
        experiment_ids=[info.experiment_id],
        filter_string=f"tags.`{TAG_TRIAL_ID}` = '{info.trial_id}' and tags.`{TAG_PARENT}` = '{info.parent_run_id}'",
        max_results=5,
        order_by=["attributes.start_time ASC"],
    )
    return runs[0] if runs else None


def open_trial_run(client, info: TrackingInfo, config: Any):
    """Find or create the trial's child run, set it RUNNING, log missing params and the numeric
    searched parameters. Returns the Run."""
    run = find_trial_run(client, info)
    if run is None:
        tags = {TAG_PARENT: info.parent_run_id, TAG_ROLE: ROLE_TRIAL, TAG_TRIAL_ID: info.trial_id}
        run = client.create_run(info.experiment_id, run_name=info.run_name, tags=tags)
    else:
        _clear_stale_reason(client, run)
        if run.info.status != "RUNNING":
            client.update_run(run.info.run_id, status="RUNNING")
    _log_missing_params(client, run, config)
    _log_param_metrics(client, run, config)
    return run


def _log_param_metrics(client, run, config: Any) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    missing = [Metric(k, v, now, 0) for k, v in param_metrics(config).items() if k not in run.data.metrics]
    if missing:
        client.log_batch(run.info.run_id, metrics=missing)


def _clear_stale_reason(client, run) -> None:
    """A re-attached run is live again: its last failure reason moves to ``mlclip.restarted_after``.

    An attempt that failed (e.g. the surviving rank of a worker group that lost a worker) left
    ``mlclip.failure_reason``; kept on a run that then finishes, it would mislead the analysis.
    """
    reason = run.data.tags.get(TAG_REASON)
    if reason:
        client.set_tag(run.info.run_id, TAG_RESTARTED_AFTER, reason)
        client.delete_tag(run.info.run_id, TAG_REASON)


def _log_missing_params(client, run, config: Any) -> None:
    from mlflow.entities import Param

    existing = run.data.params
    missing = [Param(k, v) for k, v in config_params(config).items() if k not in existing]
    for start in range(0, len(missing), 100):
        client.log_batch(run.info.run_id, params=missing[start : start + 100])


def last_logged_epoch(client, run) -> int:
    """Highest epoch logged in ``run`` (-1 when none): a restarted trial does not log it again.

    Read from the tag :data:`~trainables.mlflow_layout.TAG_EPOCHS_DONE`, written with every
    epoch's metrics. A run without it (written before the tag existed, when the step was the
    epoch) falls back to the highest step of the loss, which every epoch logs (evaluation metrics
    exist only on evaluated epochs, and the numeric searched parameters sit at step 0), or of the
    alphabetically first of its other metrics.
    """
    tag = run.data.tags.get(TAG_EPOCHS_DONE)
    if tag is not None and tag.isdigit():
        return int(tag)
    loss = names.logged_name(names.LOSS_METRIC)
    keys = [loss] if loss in run.data.metrics else sorted(k for k in run.data.metrics if k not in names.SEARCHED_PARAMS)
    if not keys:
        return -1
    return max((m.step for m in client.get_metric_history(run.info.run_id, keys[0])), default=-1)


def end_trial_run(client, run_id: str, status: str, reason: Optional[str] = None) -> None:
    """Terminate a run with ``status`` (FINISHED, FAILED, KILLED); a reason goes into a tag."""
    if reason:
        client.set_tag(run_id, TAG_REASON, one_line(reason, MAX_TAG_LENGTH))
    client.set_terminated(run_id, status=status)


class TrialRun:
    """The MLflow child run of one trial, written by rank 0 only; a no-op when ``info`` is None.

    Starts the trial's run, or re-attaches to it when the trial restarts, so a trial never
    has two runs. Logs every set config field as a param once, tags ``mlflow.parentRunId``,
    and logs per-epoch metrics: the headlines as MLflow metrics, every metric into
    :data:`FULL_METRICS_FILE` (an epoch already logged by an earlier attempt is not logged
    twice). Their step is the training step reached at the end of the epoch (epoch x
    ``steps_per_epoch``, the global optimiser steps of an epoch), so MLflow's charts are learning
    curves over training steps; the epochs done are the tag :data:`TAG_EPOCHS_DONE`.
    """

    def __init__(self, info: Optional[TrackingInfo], config: Any, steps_per_epoch: int = 1):
        self.info = info
        self.run_id: Optional[str] = None
        self._client = None
        self._last_epoch = -1
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        if info is None:
            return
        try:
            self._client = client_for(info.tracking_uri)
            run = open_trial_run(self._client, info, config)
        except Exception as err:  # noqa: BLE001 - any store failure fails the trial with this one line as its reason
            raise TrackingError(f"cannot open the MLflow run of trial {info.trial_id}: {one_line(err)}") from err
        self.run_id = run.info.run_id
        self._last_epoch = last_logged_epoch(self._client, run)
        self._full_rows = self._logged_rows() if self._last_epoch >= 0 else []

    @property
    def active(self) -> bool:
        """Whether this object logs anything."""
        return self._client is not None and self.run_id is not None

    def log_epoch(self, metrics: Mapping[str, Any], epoch: int) -> None:
        """Log the finite float metrics of ``epoch`` (1-based) at step epoch x ``steps_per_epoch``;
        junk and non-finite values are dropped.

        The headlines (and the objectives, :attr:`TrackingInfo.keep_metrics`) become MLflow metrics
        under their short names; all of them go into :data:`FULL_METRICS_FILE` under their source names.
        """
        if not self.active or epoch <= self._last_epoch:
            return
        from mlflow.entities import Metric, RunTag

        values = clean_metrics(metrics)
        now, step = int(time.time() * 1000), int(epoch) * self.steps_per_epoch
        shown = clean_metrics(names.headline_metrics(values, keep=self.info.keep_metrics))
        batch = [Metric(k, v, now, step) for k, v in shown.items()]
        # ~50 metrics and the epochs-done tag: one batch (MLflow takes up to 1000)
        with self._naming_full():
            self._client.log_batch(self.run_id, metrics=batch, tags=[RunTag(TAG_EPOCHS_DONE, str(int(epoch)))])
        self._full_rows += [(step, k, v) for k, v in sorted(values.items())]
        self._log_full_metrics()
        self._last_epoch = int(epoch)

    def _naming_full(self):
        """A full disk met while logging names the MLflow store (its sqlite file, else its URI), not the
        study's storage path (:func:`trainables.errors.naming_full`)."""
        return naming_full("MLflow store", store_place(self.info.tracking_uri))

    def _log_full_metrics(self) -> None:
        """(Re)write :data:`FULL_METRICS_FILE` with every row so far: one small file, readable with pandas."""
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / FULL_METRICS_FILE
            with path.open("w", newline="", encoding="utf-8") as out:
                writer = csv.writer(out)
                writer.writerow(["step", "name", "value"])
                writer.writerows((step, name, repr(value)) for step, name, value in self._full_rows)
            with self._naming_full():
                self._client.log_artifact(self.run_id, str(path))

    def _logged_rows(self) -> list[tuple[int, str, float]]:
        """The rows an earlier attempt of this trial wrote (a restarted trial continues the file).

        None written yet: no rows. Written but unreadable: the trial goes on, and its run says
        so (tag :data:`~trainables.mlflow_layout.TAG_INCOMPLETE`, and a warning), since the
        earlier rows will then be missing from the file it rewrites."""
        with tempfile.TemporaryDirectory() as folder:
            try:
                path = fetch_artifact(self._client, self.run_id, FULL_METRICS_FILE, folder)
                rows = read_full_metrics(path) if path is not None else []
            except (TrackingError, OSError, ValueError, KeyError) as err:  # KeyError: a column missing
                reason = f"the rows of {FULL_METRICS_FILE} before this restart are lost: {one_line(err)}"
                log.warning("trial %s: %s", self.info.trial_id, reason)
                self._client.set_tag(self.run_id, TAG_INCOMPLETE, reason)
                return []
            last_step = self._last_epoch * self.steps_per_epoch
            return [(step, name, value) for step, name, value in rows if step <= last_step]

    def log_per_query(self, arrays: Mapping[str, Any]) -> None:
        """Save the final evaluation's per-query AP arrays as the run's artifact :data:`PER_QUERY_FILE`
        (keys as in :func:`trainables.evaluate.evaluate_embeddings`), through the one writer
        :func:`trainables.per_query.write`, which checks them first (ValueError)."""
        if not self.active or not arrays:
            return
        with tempfile.TemporaryDirectory() as folder:
            path = per_query.write(Path(folder) / PER_QUERY_FILE, arrays)
            with self._naming_full():
                self._client.log_artifact(self.run_id, str(path))

    def finish(self, status: str = "FINISHED", reason: Optional[str] = None) -> None:
        """End the run: FINISHED, or FAILED/KILLED with ``reason`` as the ``mlclip.failure_reason`` tag."""
        if not self.active:
            return
        end_trial_run(self._client, self.run_id, status, reason)
        self._client = None


def read_full_metrics(path: Any) -> list[tuple[int, str, float]]:
    """The rows (step, source name, value) of a :data:`FULL_METRICS_FILE`."""
    with open(path, newline="", encoding="utf-8") as f:
        return [(int(row["step"]), row["name"], float(row["value"])) for row in csv.DictReader(f)]


__all__ = [
    "TrackingInfo",
    "TrialRun",
    "clean_metrics",
    "config_params",
    "param_metrics",
    "find_trial_run",
    "open_trial_run",
    "last_logged_epoch",
    "end_trial_run",
    "read_full_metrics",
]
