"""MLflow tracking of a study: one child run per trial under the study's parent run.

Only rank 0 of a trial writes, through :class:`TrialRun`. A trial that restarts (a worker
group restored by Ray Train, or a trial resumed by ``--resume``) re-attaches to its run,
found by the ``mlclip.trial_id`` tag under the parent, so there is never a second run per
trial. Everything here talks to MLflow through an explicit tracking URI: Ray workers run in
another working directory, so a relative ``sqlite:///mlflow.db`` must be made absolute by
the driver (:func:`resolve_tracking_uri`) before it is passed on.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow 3.x's own default

# Tags (MLflow's own nesting tag plus the project's).
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
TAG_ROLE = "mlclip.role"  # "study" (parent) or "trial" (child)
TAG_STUDY = "mlclip.study"
TAG_TRIAL_ID = "mlclip.trial_id"
TAG_REASON = "mlclip.failure_reason"
TAG_RESTARTED_AFTER = "mlclip.restarted_after"  # the failure an attempt of this trial restarted from
TAG_COMPLETED = "mlclip.completed"  # "true" once the trial's fit returned successfully
TAG_EARLY_STOPPED = "mlclip.early_stopped"

# The trial's per-query AP@100 of its final evaluation (an artifact of its child run; study.answer reads it).
PER_QUERY_FILE = "per_query_ap.npz"

# Never logged as metrics: bookkeeping, not measurements.
JUNK_KEYS = frozenset(
    {
        "epoch", "step", "pid", "timestamp", "time", "date", "hostname", "node_ip", "done",
        "training_iteration", "time_this_iter_s", "time_total_s", "time_since_restore",
        "iterations_since_restore", "checkpoint_path", "trial_id", "experiment_id",
        "world_rank", "world_size", "local_rank",
    }
)
_BAD_CHARS = re.compile(r"[^/\w.\- :]")
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 5000


class TrackingError(RuntimeError):
    """The tracking URI is unusable or MLflow refused an operation. One-line message."""


@dataclass(frozen=True)
class TrackingInfo:
    """Where a trial logs: picklable, passed from the study driver to rank 0 of the trial."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    trial_id: str
    run_name: str


# ---------------------------------------------------------------------------
# URIs
# ---------------------------------------------------------------------------
def resolve_tracking_uri(uri: Optional[str] = None, cwd: Optional[str] = None) -> str:
    """The explicit tracking URI: ``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``.

    A relative sqlite path (or a bare local path) is made absolute against ``cwd`` (default:
    the current directory), so that Ray workers, whose working directory differs, reach the
    same database.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    base = Path(cwd or os.getcwd())
    if uri.startswith("sqlite:///"):
        rest = uri[len("sqlite:///"):]
        path, sep, query = rest.partition("?")
        if path and not path.startswith("/") and path != ":memory:":
            path = str((base / path).resolve())
            return f"sqlite:///{path}{sep}{query}"
        return uri
    if "://" not in uri and not uri.startswith("file:"):
        return (base / uri).resolve().as_uri()  # a bare path: MLflow's file store (refused in 3.x)
    return uri


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of an absolute ``sqlite:////...`` URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].partition("?")[0]
    return Path(path) if path and path != ":memory:" else None


@contextmanager
def _quick_http(timeout_s: float) -> Iterator[None]:
    """Temporarily make MLflow's HTTP client fail fast (no retries, short timeout)."""
    keys = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(max(1, timeout_s)))}
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast with TrackingError when ``uri`` cannot be used (unreachable, unwritable)."""
    db = sqlite_path(uri)
    if db is not None:
        folder = db.parent
        if not folder.is_dir():
            raise TrackingError(f"MLflow tracking URI {uri}: folder {folder} does not exist")
        if not os.access(folder, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
            raise TrackingError(f"MLflow tracking URI {uri}: {db} is not writable")
        return
    from mlflow import MlflowClient

    try:
        with _quick_http(timeout_s):
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as err:  # noqa: BLE001 - any failure means unusable; say why in one line
        raise TrackingError(f"MLflow tracking URI {uri} is unusable: {_one_line(err)}") from None


def prepare_store(uri: str) -> None:
    """Create a missing sqlite tracking database whole, so nobody sees it half-built.

    MLflow builds a new sqlite store by running its schema migrations in place. A second
    process that opens the file meanwhile (``mlflow ui``, a script polling the study, a Ray
    worker) runs the same migrations at the same time, and one of them fails with
    ``table _alembic_tmp_... already exists``, leaving a broken database. Here the schema is
    built under a private name in the same folder and hard-linked into place only when
    complete; if another process got there first, its database is kept. Other stores, and a
    database that already exists, are left alone.
    """
    db = sqlite_path(uri)
    if db is None or db.exists():
        return
    tmp = db.with_name(f".{db.name}.building-{os.getpid()}")
    try:
        _build_sqlite_schema(f"sqlite:///{tmp}")
        try:
            os.link(tmp, db)  # atomic, and never replaces a database another process made
        except FileExistsError:
            pass
    except Exception as err:  # noqa: BLE001 - say why in one line
        raise TrackingError(f"MLflow tracking URI {uri}: cannot create the database: {_one_line(err)}") from None
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
            leftover.unlink(missing_ok=True)


def _build_sqlite_schema(uri: str) -> None:
    """Run MLflow's own store initialisation (schema migrations, default experiment) on ``uri``."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    client.search_experiments(max_results=1)
    engine = getattr(getattr(client._tracking_client, "store", None), "engine", None)
    if engine is not None:
        engine.dispose()  # close the pooled connections to the private file before it is unlinked


def _one_line(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------
# Metrics and params
# ---------------------------------------------------------------------------
def mlflow_metric_key(name: str) -> str:
    """An MLflow-valid metric name: ``@`` dropped (``map@100`` -> ``map100``), other bad characters -> ``_``."""
    key = _BAD_CHARS.sub("_", str(name).replace("@", ""))
    key = re.sub(r"/+", "/", key).strip("/")
    return key or "_"


def clean_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Finite real numbers only, under valid names; no bookkeeping keys or config values."""
    from trainables.config import TrialConfig

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
    """Every TrialConfig field as an MLflow param string (lists joined with commas)."""
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    out = {}
    for key, value in values.items():
        text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        out[key] = text[:MAX_PARAM_LENGTH]
    return out


# ---------------------------------------------------------------------------
# Child runs
# ---------------------------------------------------------------------------
def client_for(uri: str):
    """An MlflowClient bound to ``uri`` (never the process-global tracking URI).

    MLflow opens the store as the client is made; a missing sqlite database is first built
    aside and linked into place (:func:`prepare_store`).
    """
    from mlflow import MlflowClient

    prepare_store(uri)
    return MlflowClient(tracking_uri=uri)


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
    """Find or create the trial's child run, set it RUNNING, log missing params. Returns the Run."""
    run = find_trial_run(client, info)
    if run is None:
        tags = {TAG_PARENT: info.parent_run_id, TAG_ROLE: "trial", TAG_TRIAL_ID: info.trial_id}
        run = client.create_run(info.experiment_id, run_name=info.run_name, tags=tags)
    else:
        _clear_stale_reason(client, run)
        if run.info.status != "RUNNING":
            client.update_run(run.info.run_id, status="RUNNING")
    _log_missing_params(client, run, config)
    return run


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


def last_logged_step(client, run) -> int:
    """Highest step logged in ``run`` (-1 when none): a restarted trial does not log it again."""
    keys = sorted(run.data.metrics)
    if not keys:
        return -1
    history = client.get_metric_history(run.info.run_id, keys[0])
    return max((m.step for m in history), default=-1)


def end_trial_run(client, run_id: str, status: str, reason: Optional[str] = None) -> None:
    """Terminate a run with ``status`` (FINISHED, FAILED, KILLED); a reason goes into a tag."""
    if reason:
        client.set_tag(run_id, TAG_REASON, " ".join(str(reason).split())[:MAX_TAG_LENGTH])
    client.set_terminated(run_id, status=status)


class TrialRun:
    """The MLflow child run of one trial, written by rank 0 only; a no-op when ``info`` is None.

    Starts the trial's run, or re-attaches to it when the trial restarts, so a trial never
    has two runs. Logs every config field as a param once, tags ``mlflow.parentRunId``, and
    logs per-epoch metrics with the epoch as step (an epoch already logged by an earlier
    attempt is not logged twice).
    """

    def __init__(self, info: Optional[TrackingInfo], config: Any):
        self.info = info
        self.run_id: Optional[str] = None
        self._client = None
        self._last_step = -1
        if info is None:
            return
        try:
            self._client = client_for(info.tracking_uri)
            run = open_trial_run(self._client, info, config)
        except Exception as err:  # noqa: BLE001
            raise TrackingError(f"cannot open the MLflow run of trial {info.trial_id}: {_one_line(err)}") from err
        self.run_id = run.info.run_id
        self._last_step = last_logged_step(self._client, run)

    @property
    def active(self) -> bool:
        """Whether this object logs anything."""
        return self._client is not None and self.run_id is not None

    def log_epoch(self, metrics: Mapping[str, Any], epoch: int) -> None:
        """Log the finite float metrics of ``epoch`` (the step); junk and non-finite values are dropped."""
        if not self.active or epoch <= self._last_step:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, int(epoch)) for k, v in clean_metrics(metrics).items()]
        for start in range(0, len(batch), 500):
            self._client.log_batch(self.run_id, metrics=batch[start : start + 500])
        self._last_step = int(epoch)

    def log_per_query(self, arrays: Mapping[str, Any]) -> None:
        """Save the final evaluation's per-query AP arrays as the run's artifact :data:`PER_QUERY_FILE`
        (numpy ``.npz``, keys as in :func:`trainables.evaluate.evaluate_embeddings`)."""
        if not self.active or not arrays:
            return
        import tempfile

        import numpy as np

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / PER_QUERY_FILE
            np.savez_compressed(path, **dict(arrays))
            self._client.log_artifact(self.run_id, str(path))

    def finish(self, status: str = "FINISHED", reason: Optional[str] = None) -> None:
        """End the run: FINISHED, or FAILED/KILLED with ``reason`` as the ``mlclip.failure_reason`` tag."""
        if not self.active:
            return
        end_trial_run(self._client, self.run_id, status, reason)
        self._client = None


__all__ = [
    "TrackingInfo",
    "TrialRun",
    "TrackingError",
    "resolve_tracking_uri",
    "check_tracking_uri",
    "prepare_store",
    "clean_metrics",
    "mlflow_metric_key",
    "find_trial_run",
    "open_trial_run",
    "end_trial_run",
]
