"""The MLflow layout of a study, in one place: what is written where, and how it is found again.

The workers (rank 0 of each trial, :class:`TrialRun`), the study driver (``study.execute``,
``study.trial``) and ``study.report`` all read and write MLflow through this module.

One MLflow experiment per study, described by the metric definitions (``mlflow.note.content``).
Its parent run ``study-NAME`` (tags ``mlclip.role=study``, ``mlclip.study``, ``mlclip.space``)
holds the search settings as params, ``study/space.json`` and ``study/base_config.json`` as
artifacts, and at the end the best trial (tags ``best.*``, metric ``best/METRIC``), the summary
files under ``summary/`` and the answer's markdown as its description.

Layout of a child run (names: :mod:`trainables.metric_names`):

* run name ``r=0.02 s=1 · 9925bc90`` (the searched values, then the Tune trial id), tags
  ``mlflow.parentRunId`` and ``mlclip.trial_id`` (restarts find the run by the tag, never the name);
* params: every set trial-config field (unset ones are left out, never ``"None"``);
* metrics: the ~45 headlines under short names, step = epoch, and the searched parameters
  (``ratio``, ``temperature``, ``batch_size``, ``seed``) as numbers at step 0, so the UI can sort,
  filter (``metrics.ratio < 0.1``) and plot them;
* artifacts: ``metrics_full.csv`` (every metric of every epoch, long format: step, name, value,
  under the source names of :mod:`trainables.evaluate`) and ``per_query_ap.npz``.

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
from typing import Any, Iterable, Iterator, Mapping, Optional

from trainables import metric_names as names

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
TAG_SPACE = "mlclip.space"
TAG_DESCRIPTION = "mlflow.note.content"  # MLflow's description of an experiment or run (rendered as markdown)

# What became of a trial, as the study reports it (Tune's outcome, reconciled into MLflow).
COMPLETED, FAILED, EARLY_STOPPED, UNFINISHED = "completed", "failed", "early-stopped", "unfinished"

# The trial's per-query AP@100 of its final evaluation (an artifact of its child run; study.answer reads it).
PER_QUERY_FILE = "per_query_ap.npz"
# Every metric of every logged epoch, long format (step, name, value): the breakdown beside the headlines.
FULL_METRICS_FILE = "metrics_full.csv"

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
    keep_metrics: tuple = ()  # objectives: logged even when they are no headline (study.report needs them)


def trial_run_name(trial_id: str, searched: Mapping[str, Any]) -> str:
    """A child run's name: the searched values, then the trial id: ``r=0.02 s=1 · 9925bc90``.

    Searched parameters come in :data:`~trainables.metric_names.SEARCHED_PARAMS` order, then the
    others; numbers get 2 significant digits (the exact values are params and metrics).
    """
    others = sorted(k for k in searched if k not in names.SEARCHED_PARAMS)
    order = [k for k in names.SEARCHED_PARAMS if k in searched] + others
    parts = [f"{names.PARAM_ABBREVIATIONS.get(k, k)}={_short(searched[k])}" for k in order]
    return " ".join(parts + ["·", trial_id]) if parts else f"trial {trial_id}"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


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


def child_runs_of(client, experiment_id: str, parent_run_id: str) -> list:
    """Every child run of ``parent_run_id`` (the one search for a study's trials)."""
    return client.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}'",
        max_results=10000,
    )


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
        tags = {TAG_PARENT: info.parent_run_id, TAG_ROLE: "trial", TAG_TRIAL_ID: info.trial_id}
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


def last_logged_step(client, run) -> int:
    """Highest epoch logged in ``run`` (-1 when none): a restarted trial does not log it again.

    Read from the loss, which every epoch logs (evaluation metrics exist only on evaluated epochs,
    and the numeric searched parameters sit at step 0); a run without it falls back to the
    alphabetically first of its other metrics.
    """
    loss = names.logged_name(names.LOSS_METRIC)
    keys = [loss] if loss in run.data.metrics else sorted(k for k in run.data.metrics if k not in names.SEARCHED_PARAMS)
    if not keys:
        return -1
    return max((m.step for m in client.get_metric_history(run.info.run_id, keys[0])), default=-1)


def end_trial_run(client, run_id: str, status: str, reason: Optional[str] = None) -> None:
    """Terminate a run with ``status`` (FINISHED, FAILED, KILLED); a reason goes into a tag."""
    if reason:
        client.set_tag(run_id, TAG_REASON, " ".join(str(reason).split())[:MAX_TAG_LENGTH])
    client.set_terminated(run_id, status=status)


class TrialRun:
    """The MLflow child run of one trial, written by rank 0 only; a no-op when ``info`` is None.

    Starts the trial's run, or re-attaches to it when the trial restarts, so a trial never
    has two runs. Logs every set config field as a param once, tags ``mlflow.parentRunId``,
    and logs per-epoch metrics with the epoch as step: the headlines as MLflow metrics, every
    metric into :data:`FULL_METRICS_FILE` (an epoch already logged by an earlier attempt is not
    logged twice).
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
        self._full_rows = self._logged_rows() if self._last_step >= 0 else []

    @property
    def active(self) -> bool:
        """Whether this object logs anything."""
        return self._client is not None and self.run_id is not None

    def log_epoch(self, metrics: Mapping[str, Any], epoch: int) -> None:
        """Log the finite float metrics of ``epoch`` (the step); junk and non-finite values are dropped.

        The headlines (and the objectives, :attr:`TrackingInfo.keep_metrics`) become MLflow metrics
        under their short names; all of them go into :data:`FULL_METRICS_FILE` under their source names.
        """
        if not self.active or epoch <= self._last_step:
            return
        from mlflow.entities import Metric

        values = clean_metrics(metrics)
        now = int(time.time() * 1000)
        shown = clean_metrics(names.headline_metrics(values, keep=self.info.keep_metrics))
        batch = [Metric(k, v, now, int(epoch)) for k, v in shown.items()]
        if batch:
            self._client.log_batch(self.run_id, metrics=batch)  # ~50: one batch (MLflow takes up to 1000)
        self._full_rows += [(int(epoch), k, v) for k, v in sorted(values.items())]
        self._log_full_metrics()
        self._last_step = int(epoch)

    def _log_full_metrics(self) -> None:
        """(Re)write :data:`FULL_METRICS_FILE` with every row so far: one small file, readable with pandas."""
        import csv
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / FULL_METRICS_FILE
            with path.open("w", newline="", encoding="utf-8") as out:
                writer = csv.writer(out)
                writer.writerow(["step", "name", "value"])
                writer.writerows((step, name, repr(value)) for step, name, value in self._full_rows)
            self._client.log_artifact(self.run_id, str(path))

    def _logged_rows(self) -> list[tuple[int, str, float]]:
        """The rows an earlier attempt of this trial wrote (a restarted trial continues the file)."""
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            try:
                path = self._client.download_artifacts(self.run_id, FULL_METRICS_FILE, folder)
            except Exception:  # noqa: BLE001 - no such artifact yet
                return []
            return [(step, name, value) for step, name, value in read_full_metrics(path) if step <= self._last_step]

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


def read_full_metrics(path: Any) -> list[tuple[int, str, float]]:
    """The rows (step, source name, value) of a :data:`FULL_METRICS_FILE`."""
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return [(int(row["step"]), row["name"], float(row["value"])) for row in csv.DictReader(f)]


# ---------------------------------------------------------------------------
# Reading a child run back
# ---------------------------------------------------------------------------
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
    epochs_done = max(last_logged_step(client, run), 0)
    params = {k: parse_param(v) for k, v in data.params.items()}
    metrics = {k: v for k, v in names.to_source_names(data.metrics).items() if k not in names.SEARCHED_PARAMS}
    return TrialRunRecord(tags.get(TAG_TRIAL_ID, run.info.run_id), run.info.run_id,
                          _status_of(run.info.status, tags, epochs_done, params.get("epochs")), params, metrics,
                          epochs_done, tags.get(TAG_REASON))


def trial_runs(client, experiment_id: str, parent_run_id: str) -> list[TrialRunRecord]:
    """Every trial's child run under ``parent_run_id``, read back."""
    return [read_trial_run(client, run) for run in child_runs_of(client, experiment_id, parent_run_id)
            if run.data.tags.get(TAG_ROLE) in (None, "trial")]


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


def mark_trial_completed(client, run_id: str) -> None:
    """The trial's fit returned: tag it completed (a resumed study does not train it again) and finish it."""
    client.set_tag(run_id, TAG_COMPLETED, "true")
    finish_if_running(client, run_id)


def finish_if_running(client, run_id: str) -> None:
    """End run ``run_id`` FINISHED unless it has ended already."""
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_terminated(run_id, status="FINISHED")


def download_artifact(client, run_id: str, path: str, folder: str) -> Optional[str]:
    """The local copy of artifact ``path`` of run ``run_id`` in ``folder``, or None when there is none."""
    try:
        return client.download_artifacts(run_id, path, folder)
    except Exception:  # noqa: BLE001 - no such artifact (e.g. an older or a stand-in trial)
        return None


# ---------------------------------------------------------------------------
# The study: experiment and parent run
# ---------------------------------------------------------------------------
def ensure_experiment(client, name: str) -> str:
    """The id of MLflow experiment ``name``, created (or restored from deleted) when needed, with
    the metric definitions as its description (what a UI user reads first)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        experiment_id = client.create_experiment(name)
    else:
        experiment_id = experiment.experiment_id
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment_id)
    client.set_experiment_tag(experiment_id, TAG_DESCRIPTION, names.definitions_markdown())
    return experiment_id


def start_parent_run(client, experiment_id: str, study: str, space: str, params: Mapping[str, Any],
                     files: Mapping[str, Any]) -> str:
    """Create the parent run of study ``study`` (searching space ``space``): ``params`` as params,
    each of ``files`` (name -> JSON-able data) as an artifact under ``study/``; returns its id."""
    import json
    import tempfile

    from mlflow.entities import Param

    run = client.create_run(experiment_id, run_name=f"study-{study}",
                            tags={TAG_ROLE: "study", TAG_STUDY: study, TAG_SPACE: str(space)})
    run_id = run.info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()])
    with tempfile.TemporaryDirectory() as folder:
        for name, data in files.items():
            (Path(folder) / name).write_text(json.dumps(data, indent=2, sort_keys=True, default=str), encoding="utf-8")
        client.log_artifacts(run_id, folder, artifact_path="study")
    return run_id


def objectives_param(objectives: Iterable[Mapping[str, str]]) -> str:
    """The parent run's ``objectives`` param: ``metric:mode;metric:mode``."""
    return ";".join(f"{o['metric']}:{o['mode']}" for o in objectives)


def objectives_from_param(text: str) -> list[dict]:
    """The objectives (``[{"metric", "mode"}]``) read back from :func:`objectives_param`'s text."""
    out = []
    for item in filter(None, text.split(";")):
        metric, _, mode = item.rpartition(":")
        out.append({"metric": metric, "mode": mode if mode in ("max", "min") else "max"})
    return out


def reopen_parent_run(client, run_id: str) -> None:
    """Mark a resumed study's parent run RUNNING again; TrackingError when it is gone."""
    try:
        run = client.get_run(run_id)
    except Exception as err:  # noqa: BLE001
        raise TrackingError(f"the study's parent MLflow run {run_id} is gone ({type(err).__name__})") from None
    if run.info.status != "RUNNING":
        client.update_run(run_id, status="RUNNING")


def find_parent_run(client, experiment_id: str, parent_run_id: Optional[str] = None) -> Any:
    """The given parent run, or the latest study parent run of the experiment, or None."""
    if parent_run_id:
        return client.get_run(parent_run_id)
    runs = client.search_runs(experiment_ids=[experiment_id], filter_string=f"tags.`{TAG_ROLE}` = 'study'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def children_of(client, experiment_id: str, parent_run_id: str) -> dict[str, Any]:
    """The child runs of ``parent_run_id`` by trial id."""
    return {r.data.tags.get(TAG_TRIAL_ID, r.info.run_id): r for r in child_runs_of(client, experiment_id, parent_run_id)}


def failure_reasons(client, experiment_id: str, parent_run_id: str) -> dict[str, str]:
    """Failure reasons recorded on child runs by trial id (set in-process, so more precise than Tune's)."""
    return {tid: r.data.tags[TAG_REASON] for tid, r in children_of(client, experiment_id, parent_run_id).items()
            if r.data.tags.get(TAG_REASON)}


def reconcile_children(client, parent: TrackingInfo, outcomes: Iterable[Any]) -> None:
    """Make every child run's status match the trials' ``outcomes``; close runs no trial owns any more.

    ``parent`` names the store, experiment and parent run (its trial fields are unused); each
    outcome has ``trial_id``, ``status`` (COMPLETED, FAILED, EARLY_STOPPED, UNFINISHED), ``params``
    and ``reason``. A failed trial that never opened a run gets one, so it is still listed.
    """
    runs = children_of(client, parent.experiment_id, parent.parent_run_id)
    for outcome in outcomes:
        run = runs.pop(outcome.trial_id, None)
        if outcome.status == FAILED:
            run = run or _open_failed_trial_run(client, parent, outcome)
            if run.info.status != "FAILED" or not run.data.tags.get(TAG_REASON):
                end_trial_run(client, run.info.run_id, "FAILED", outcome.reason or "failed")
        elif run is None:
            continue
        elif outcome.status == EARLY_STOPPED:
            client.set_tag(run.info.run_id, TAG_EARLY_STOPPED, "true")
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, status="FINISHED")
        elif run.info.status != "RUNNING":
            continue
        elif outcome.status == COMPLETED:
            mark_trial_completed(client, run.info.run_id)
        else:  # unfinished (interrupted): --resume re-opens it
            client.set_terminated(run.info.run_id, status="KILLED")
    for run in runs.values():  # runs of trials Tune no longer knows: never leave them RUNNING
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status="KILLED")


def _open_failed_trial_run(client, parent: TrackingInfo, outcome: Any) -> Any:
    from trainables.config import ConfigError, TrialConfig

    shown = {k: outcome.params[k] for k in names.SEARCHED_PARAMS if outcome.params.get(k) is not None}
    info = TrackingInfo(parent.tracking_uri, parent.experiment_id, parent.parent_run_id, outcome.trial_id,
                        trial_run_name(outcome.trial_id, shown))
    try:
        config: Any = TrialConfig.from_dict(outcome.params)
    except ConfigError:
        config = dict(outcome.params)
    return open_trial_run(client, info, config)


def log_summary(client, run_id: str, best: Any, metric: str, files: Iterable[Any], markdown: str = "") -> None:
    """On the parent run: the best trial (``best``: ``trial_id``, ``params``, ``value(metric)``; or None)
    as tags and a metric, the summary ``files`` as artifacts under ``summary/``, and the answer's
    ``markdown`` as the run's description (MLflow renders it on the run page)."""
    if markdown:
        client.set_tag(run_id, TAG_DESCRIPTION, markdown)
    if best is not None:
        shown = {k: v for k, v in best.params.items() if not isinstance(v, (list, tuple))}
        client.set_tag(run_id, "best.trial_id", best.trial_id)
        for key in names.SEARCHED_PARAMS:
            if key in shown:
                client.set_tag(run_id, f"best.{key}", str(shown[key]))
        if math.isfinite(best.value(metric)):  # by either name: best.value resolves short names
            client.log_metric(run_id, f"best/{metric}", best.value(metric))
    for path in files:
        if path and Path(path).is_file():
            client.log_artifact(run_id, str(path), artifact_path="summary")


def close_parent_run(client, run_id: str, status: str) -> None:
    """FINISHED, FAILED or KILLED (interrupted: ``--resume`` re-opens it)."""
    client.set_terminated(run_id, status=status)


__all__ = [
    "TrackingInfo",
    "trial_run_name",
    "child_runs_of",
    "read_full_metrics",
    "FULL_METRICS_FILE",
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
    "read_trial_run",
    "trial_runs",
    "TrialRunRecord",
    "parse_param",
    "mark_trial_completed",
    "finish_if_running",
    "download_artifact",
    "ensure_experiment",
    "start_parent_run",
    "objectives_param",
    "objectives_from_param",
    "reopen_parent_run",
    "find_parent_run",
    "children_of",
    "failure_reasons",
    "reconcile_children",
    "log_summary",
    "close_parent_run",
    "COMPLETED",
    "FAILED",
    "EARLY_STOPPED",
    "UNFINISHED",
]
