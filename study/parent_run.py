"""The study's side of MLflow: its experiment and parent run, the reconciliation of the trials'
child runs with Tune's outcomes, and the summary logged at the end.

The names written are :mod:`trainables.mlflow_layout`'s; the runs are read back through
:mod:`study.mlflow_runs`. The workers never import this module (``trainables`` never imports
``study``): they write their child runs with :mod:`trainables.trial_run`.

``mlflow`` is imported inside the functions that need its entities (its import cost:
docs/performance.md, "Start-up").
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from study.mlflow_runs import children_of
from trainables import metric_names as names
from trainables.config import ConfigError, TrialConfig
from trainables.errors import one_line
from trainables.mlflow_layout import (
    COMPLETED,
    EARLY_STOPPED,
    EXPERIMENT_KIND,
    FAILED,
    PARENT_ARTIFACT_DIR,
    ROLE_STUDY,
    SUMMARY_ARTIFACT_DIR,
    TAG_BEST_SINGLE_RUN,
    TAG_COMPLETED,
    TAG_DESCRIPTION,
    TAG_EARLY_STOPPED,
    TAG_EXPERIMENT_KIND,
    TAG_RATIO_EFFECT_MODEL,
    TAG_REASON,
    TAG_ROLE,
    TAG_SPACE,
    TAG_STUDY,
    RATIO_STEP,
    answer_by_ratio_metric,
    best_metric,
    best_tag,
    importance_metric,
    ratio_effect_metric,
    parent_run_name,
    ratio_label,
    single_run_metric,
    single_run_tag,
    trial_run_name,
)
from trainables.mlflow_store import TrackingError
from trainables.trial_run import MAX_PARAM_LENGTH, TrackingInfo, end_trial_run, open_trial_run

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
    client.set_experiment_tag(experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
    return experiment_id


def describe_experiment(client, experiment_id: str, study: str, headline: str, overview: str) -> None:
    """The experiment's description, which its page shows above the runs (one line folded, the rest
    on a click): a heading with the study's answer in one line (``headline``:
    :func:`study.answer_text.answer_headline`), the answer in brief (``overview``:
    :attr:`study.console.Summary.overview`), where the full answer is, then how to read the runs."""
    parts = [f"## Study {study}: {headline}", overview,
             f"The full answer (every setting, the resolution of each comparison, the seed paper's hypotheses) is "
             f"the description of the parent run `{parent_run_name(study)}` and its `summary/answer.md`.",
             names.definitions_markdown()]
    client.set_experiment_tag(experiment_id, TAG_DESCRIPTION, "\n\n".join(p.strip() for p in parts if p.strip()))


def start_parent_run(client, experiment_id: str, study: str, space: str, params: Mapping[str, Any],
                     files: Mapping[str, Any]) -> str:
    """Create the parent run of study ``study`` (searching space ``space``): ``params`` as params,
    each of ``files`` (name -> JSON-able data) as an artifact under ``study/``; returns its id."""
    from mlflow.entities import Param

    run = client.create_run(experiment_id, run_name=parent_run_name(study),
                            tags={TAG_ROLE: ROLE_STUDY, TAG_STUDY: study, TAG_SPACE: str(space)})
    run_id = run.info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()])
    with tempfile.TemporaryDirectory() as folder:
        for name, data in files.items():
            (Path(folder) / name).write_text(json.dumps(data, indent=2, sort_keys=True, default=str), encoding="utf-8")
        client.log_artifacts(run_id, folder, artifact_path=PARENT_ARTIFACT_DIR)
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
    except Exception as err:  # noqa: BLE001 - any store error is one line; a missing run is told apart
        if getattr(err, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            raise TrackingError(f"the study's parent MLflow run {run_id} is gone") from None
        raise TrackingError(f"cannot read the study's parent MLflow run {run_id}: {one_line(err)}") from None
    if run.info.status != "RUNNING":
        client.update_run(run_id, status="RUNNING")


def find_parent_run(client, experiment_id: str, parent_run_id: Optional[str] = None) -> Any:
    """The given parent run, or the latest study parent run of the experiment, or None."""
    if parent_run_id:
        return client.get_run(parent_run_id)
    runs = client.search_runs(experiment_ids=[experiment_id], filter_string=f"tags.`{TAG_ROLE}` = '{ROLE_STUDY}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


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
    shown = {k: outcome.params[k] for k in names.SEARCHED_PARAMS if outcome.params.get(k) is not None}
    info = TrackingInfo(parent.tracking_uri, parent.experiment_id, parent.parent_run_id, outcome.trial_id,
                        trial_run_name(outcome.trial_id, shown))
    try:
        config: Any = TrialConfig.from_dict(outcome.params)
    except ConfigError:
        config = dict(outcome.params)
    return open_trial_run(client, info, config)


def log_answer_by_ratio(client, run_id: str, rows: Iterable[Mapping[str, Any]]) -> None:
    """The answer against the ratio, as metric histories of the parent run that MLflow's run page
    charts without setup: per (setting, family) of multilingual retrieval and the objective, the
    mean over seeds and its interval bounds at step = ratio x :data:`RATIO_STEP` (``rows``:
    :func:`study.answer_stats.answer_rows`)."""
    from mlflow.entities import Metric  # see module docstring

    now = int(time.time() * 1000)
    metrics = [Metric(answer_by_ratio_metric(r["setting"], r["family"], part), float(r[part]), now,
                      int(round(float(r["ratio"]) * RATIO_STEP)))
               for r in rows if r["setting"] == "multilingual" for part in ("mean", "ci_low", "ci_high")
               if math.isfinite(r[part])]
    for start in range(0, len(metrics), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=metrics[start:start + 1000])


def log_importance(client, run_id: str, importance: Mapping[str, Mapping[str, float]]) -> None:
    """Parameter importance (:func:`study.tuning.parameter_importance`) as parent-run metrics
    ``importance/METRIC/PARAM`` (shares of the objective's variance, summing to 1 per metric)."""
    for metric, shares in importance.items():
        for param, share in shares.items():
            client.log_metric(run_id, importance_metric(metric, param), float(share))


def log_summary(client, run_id: str, best: Any, metric: str, files: Iterable[Any], markdown: str = "",
                best_ratio: Optional[Mapping[str, Any]] = None, ratio_effect: Any = None) -> None:
    """On the parent run: the study's best, the summary ``files`` as artifacts under ``summary/``, and
    the answer's ``markdown`` as the run's description (MLflow renders it on the run page).

    The best is the answer's (``best_ratio``: :attr:`study.outputs.Answer.best_ratio`): tag
    ``best.ratio`` and the metrics ``best/METRIC/mean``, ``/ci_low``, ``/ci_high``. The best single
    run (``best``: ``trial_id``, ``params``, ``value(metric)``; or None) is logged apart, under
    ``best_single_run.*``: one seed, never called the best. A study that searched more than the ratio
    names no best; its ``ratio_effect`` (:class:`study.answer_conditional.ConditionalEffect`) is logged
    as ``ratio_effect/METRIC/{estimate,ci_low,ci_high}`` with its model in a tag."""
    if markdown:
        client.set_tag(run_id, TAG_DESCRIPTION, markdown)
    if ratio_effect is not None:
        client.set_tag(run_id, TAG_RATIO_EFFECT_MODEL, "linear in the ratio, " + ", ".join(ratio_effect.terms))
        for part, value in (("estimate", ratio_effect.estimate), ("ci_low", ratio_effect.low), ("ci_high", ratio_effect.high)):
            client.log_metric(run_id, ratio_effect_metric(metric, part), float(value))
    if best_ratio is not None:
        client.set_tag(run_id, best_tag("ratio"), ratio_label(best_ratio["ratio"]))
        for part in ("mean", "ci_low", "ci_high"):
            if math.isfinite(best_ratio[part]):
                client.log_metric(run_id, best_metric(metric, part), float(best_ratio[part]))
    if best is not None:
        shown = {k: v for k, v in best.params.items() if not isinstance(v, (list, tuple))}
        client.set_tag(run_id, TAG_BEST_SINGLE_RUN, best.trial_id)
        for key in names.SEARCHED_PARAMS:
            if key in shown:
                client.set_tag(run_id, single_run_tag(key), ratio_label(shown[key]) if key == "ratio" else str(shown[key]))
        if math.isfinite(best.value(metric)):  # by either name: best.value resolves short names
            client.log_metric(run_id, single_run_metric(metric), best.value(metric))
    for path in files:
        if path and Path(path).is_file():
            client.log_artifact(run_id, str(path), artifact_path=SUMMARY_ARTIFACT_DIR)


def close_parent_run(client, run_id: str, status: str) -> None:
    """FINISHED, FAILED or KILLED (interrupted: ``--resume`` re-opens it)."""
    client.set_terminated(run_id, status=status)


def mark_trial_completed(client, run_id: str) -> None:
    """The trial's fit returned: tag it completed (a resumed study does not train it again) and finish it."""
    client.set_tag(run_id, TAG_COMPLETED, "true")
    finish_if_running(client, run_id)


def finish_if_running(client, run_id: str) -> None:
    """End run ``run_id`` FINISHED unless it has ended already."""
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_terminated(run_id, status="FINISHED")


__all__ = [
    "ensure_experiment",
    "describe_experiment",
    "start_parent_run",
    "objectives_param",
    "objectives_from_param",
    "reopen_parent_run",
    "find_parent_run",
    "failure_reasons",
    "reconcile_children",
    "log_summary",
    "close_parent_run",
    "mark_trial_completed",
    "finish_if_running",
]
