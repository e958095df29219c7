"""The Tune function trainable: one call runs one trial.

Ray 2.60 (Train V2) pattern: the Tune function builds the trial's :class:`TrialConfig` (the
one validation of its settings) and calls the study's fit, by default
``trainables.driver.fit_trial``, which builds and fits a ``TorchTrainer`` with a
``TuneReportCallback`` in its run config; that forwards each ``ray.train.report`` of the
workers to Tune. The function itself holds no CPU (see :mod:`study.cluster`).

Around the fit it keeps MLflow consistent: it opens (or re-attaches to) the trial's child
run before the fit, so a failed trial is recorded with its params; it ends the run FAILED
with the reason when the fit raises; and it marks the run completed when the fit returns. A fit
that fails because a disk is full does not fail the trial: the trial asks the study to stop
(:mod:`study.stop`) and is continued by ``--resume``.
A trial that Tune restarts after ``--resume`` but that MLflow already records as completed
(the driver was killed between the trial's end and Tune's next state snapshot) is not
trained again: its final metrics are re-reported from MLflow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback

from study.mlflow_runs import read_trial_run
from study.parent_run import finish_if_running, mark_trial_completed
from study.stop import ask_study_to_stop
from trainables.config import TrialConfig
from trainables.errors import failure_reason, full_disk_line, is_out_of_space, one_line, out_of_space_line
from trainables.metric_names import source_name, with_logged_aliases
from trainables.mlflow_layout import TAG_COMPLETED, trial_run_name
from trainables.mlflow_store import client_for, store_place
from trainables.trial_run import TrackingInfo, end_trial_run, open_trial_run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a study shares; bound to the Tune function with ``tune.with_parameters``.

    ``fit`` fits one trial (contract of :func:`trainables.driver.fit_trial`, the default): it is
    called with the trial's :class:`~trainables.config.TrialConfig`, its Ray Train run name and
    storage, its MLflow :class:`~trainables.trial_run.TrackingInfo`, the Tune report callbacks,
    ``max_failures`` and the resources of each worker.
    """

    study_name: str
    base_config: dict
    fit: Callable
    train_storage: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    max_failures: int = 0
    resources_per_worker: dict = field(default_factory=dict)
    metrics_first: tuple = ()
    objectives: tuple = ()  # metrics every result forwarded to Tune must carry
    storage_path: str = ""  # the study's storage path, named when a trial finds it full


class OrderedTuneReportCallback(TuneReportCallback):
    """``TuneReportCallback`` that forwards only results carrying the objectives, key metrics first.

    Each headline metric is forwarded under its short MLflow name too
    (:func:`~trainables.metric_names.with_logged_aliases`), so an objective or a progress
    column may use either name. An epoch without evaluation (``eval_every`` > 1) has no
    objective; Tune, its searcher and its scheduler require the objective in every result, so
    such epochs are not forwarded (Ray Train still checkpoints them). Tune's progress table
    shows the first few metrics of a result: the objectives, bias and the loss come first.
    """

    def __init__(self, first: tuple = (), required: tuple = ()):
        super().__init__()
        self._first = tuple(first)
        self._required = tuple(required)

    def after_report(self, run_context, metrics, checkpoint):  # noqa: D102 - see base class
        if not metrics:
            return
        first = with_logged_aliases(metrics[0])
        if any(m not in first for m in self._required):
            return
        metrics = [order_metrics(first, self._first), *metrics[1:]]
        super().after_report(run_context, metrics, checkpoint)


def order_metrics(metrics: Mapping[str, Any], first: tuple) -> dict:
    """A copy of ``metrics`` with the keys of ``first`` (those present) at the front."""
    head = {k: metrics[k] for k in first if k in metrics}
    return {**head, **{k: v for k, v in metrics.items() if k not in head}}


def run_trial(config: dict, ctx: TrialContext) -> None:
    """The Tune function: build the trial config, fit it, keep its MLflow run consistent."""
    trial_id = ray.tune.get_context().get_trial_id()
    info = TrackingInfo(
        tracking_uri=ctx.tracking_uri,
        experiment_id=ctx.experiment_id,
        parent_run_id=ctx.parent_run_id,
        trial_id=trial_id,
        run_name=trial_run_name(trial_id, config),
        keep_metrics=tuple(ctx.objectives),
    )
    client = client_for(ctx.tracking_uri)
    trial_config = TrialConfig.from_dict({**ctx.base_config, **config})
    try:
        run = open_trial_run(client, info, trial_config)
    except Exception as err:
        if is_out_of_space(err):  # the MLflow store's disk is full: the study stops (a resume opens the run)
            ask_study_to_stop(out_of_space_line("MLflow store", store_place(ctx.tracking_uri), err))
        raise
    run_id = run.info.run_id
    if run.data.tags.get(TAG_COMPLETED) == "true":
        _replay_completed(client, run_id, ctx)
        return
    try:
        result = ctx.fit(
            trial_config,
            name=f"trial_{trial_id}",
            storage_path=ctx.train_storage,
            tracking=info,
            callbacks=[OrderedTuneReportCallback(ctx.metrics_first, ctx.objectives)],
            max_failures=ctx.max_failures,
            resources_per_worker=dict(ctx.resources_per_worker) or None,
        )
        check_final_metrics(result, ctx.objectives)
    except Exception as err:  # not SystemExit: that is Tune stopping the trial (ASHA, Ctrl-C)
        reason = failure_reason(err)
        full = full_disk_line(err, ctx.storage_path or ctx.train_storage)
        if full is not None:  # not the trial's fault: the study stops, and --resume continues it
            reason = full
            # interrupted, as by Ctrl-C (a resume re-opens it); the store may sit on the full disk, and
            # the driver marks a run left RUNNING KILLED when it stops (study.execute.stop_on_full_disk)
            _end_run_if_possible(client, run_id, "KILLED", reason)
            ask_study_to_stop(reason)  # returns only if the study did not end this trial meanwhile
        _end_run_if_possible(client, run_id, "FAILED", reason)
        raise
    mark_trial_completed(client, run_id)


def _end_run_if_possible(client: Any, run_id: str, status: str, reason: str) -> None:
    """End the trial's run; where the store cannot take it (its disk full, the server down), say so
    in the log and go on: the trial's own error, raised next, is what Tune must see."""
    try:
        end_trial_run(client, run_id, status, reason)
    except Exception as err:  # noqa: BLE001 - logged; the driver closes runs left RUNNING
        log.warning("could not mark MLflow run %s %s: %s", run_id, status, one_line(str(err)))


class MissingObjective(RuntimeError):
    """The trial's final report lacks an objective (a misspelt --metric, say)."""


def check_final_metrics(result: Any, objectives: tuple) -> None:
    """Raise MissingObjective when the last report (a ``ray.train.Result`` or a dict) lacks an objective."""
    metrics = getattr(result, "metrics", result)
    if not isinstance(metrics, Mapping):
        return  # nothing to check against
    missing = [m for m in objectives if m not in metrics and source_name(m) not in metrics]
    if missing:
        known = ", ".join(sorted(k for k in metrics if k.startswith(("map", "bias")))[:8])
        raise MissingObjective(f"the trial reported no {', '.join(missing)} (it reports e.g. {known})")


def _replay_completed(client, run_id: str, ctx: TrialContext) -> None:
    """Report a completed trial's final metrics (from MLflow) to Tune instead of re-training it.

    MLflow holds the headlines under their short names: they are reported under both names, as
    live trials report them (see :class:`OrderedTuneReportCallback`)."""
    import ray.tune

    trial = read_trial_run(client, client.get_run(run_id))
    metrics = {**with_logged_aliases(trial.metrics), "epoch": float(trial.epochs_done)}
    ray.tune.report(order_metrics(metrics, ctx.metrics_first))
    finish_if_running(client, run_id)
