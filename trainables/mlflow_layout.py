"""The MLflow layout of a study, named in one place: what is written where, under which name.

Every name below is read by both sides: the workers write a trial's child run with them
(:mod:`trainables.trial_run`), the study driver writes the parent run and reads every run
back with them (:mod:`study.parent_run`, :mod:`study.mlflow_runs`, ``study.report``). The
store itself (tracking URIs, the sqlite database) is :mod:`trainables.mlflow_store`.

One MLflow experiment per study, described by the metric definitions (``mlflow.note.content``).
Its parent run ``study-NAME`` (:func:`parent_run_name`; tags ``mlclip.role=study``,
``mlclip.study``, ``mlclip.space``) holds the search settings as params (``PARAM_*``),
``study/space.json`` and ``study/base_config.json`` as artifacts, and at the end the best trial
(tags ``best.*``, metric ``best/METRIC``), the summary files under ``summary/`` and the answer's
markdown as its description.

Layout of a child run (metric names: :mod:`trainables.metric_names`):

* run name ``r=0.02 s=1 · 9925bc90`` (:func:`trial_run_name`: the searched values, then the Tune
  trial id), tags ``mlflow.parentRunId`` and ``mlclip.trial_id`` (restarts find the run by the
  tag, never the name);
* params: every set trial-config field (unset ones are left out, never ``"None"``);
* metrics: the ~45 headlines under short names (:func:`mlflow_metric_key`) after every epoch,
  step = the training step reached (epoch x steps per epoch; tag ``mlclip.epochs_done``), and the
  searched parameters (``ratio``, ``temperature``, ``batch_size``, ``seed``) as numbers at step 0,
  so the UI can sort, filter (``metrics.ratio < 0.1``) and plot them;
* artifacts: :data:`FULL_METRICS_FILE` (every metric of every epoch, long format: step (as above), name,
  value, under the source names of :mod:`trainables.evaluate`) and :data:`PER_QUERY_FILE`
  (written and read by :mod:`trainables.per_query` only).

The study's own summary files (in its output folder and under ``summary/`` of the parent run)
are named here too: :data:`CSV_NAME`, :data:`FIGURE_NAME`, :data:`ANSWER_CSV`,
:data:`ANSWER_MD`, :data:`PARETO_FIGURE_NAME`, :data:`BEST_NAME`.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from trainables import metric_names as names

# Tags (MLflow's own nesting tag plus the project's).
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
TAG_ROLE = "mlclip.role"  # ROLE_STUDY (parent) or ROLE_TRIAL (child)
TAG_STUDY = "mlclip.study"
TAG_TRIAL_ID = "mlclip.trial_id"
TAG_REASON = "mlclip.failure_reason"
TAG_RESTARTED_AFTER = "mlclip.restarted_after"  # the failure an attempt of this trial restarted from
TAG_COMPLETED = "mlclip.completed"  # "true" once the trial's fit returned successfully
TAG_EARLY_STOPPED = "mlclip.early_stopped"
TAG_EPOCHS_DONE = "mlclip.epochs_done"  # the epochs a trial's run has logged (its metrics' step is the training step)
TAG_INCOMPLETE = "mlclip.incomplete"  # why some of a trial's metrics or artifacts are missing from its run
TAG_SPACE = "mlclip.space"
# The experiment is model training, not GenAI: read by MLflow releases after 3.17 (3.17's UI takes the
# view from the browser's workflow switch, hence the ?workflowType=machine_learning of the printed URL).
TAG_EXPERIMENT_KIND, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
TAG_DESCRIPTION = "mlflow.note.content"  # MLflow's description of an experiment or run (rendered as markdown)
ROLE_STUDY, ROLE_TRIAL = "study", "trial"  # the values of TAG_ROLE

# What became of a trial, as the study reports it (Tune's outcome, reconciled into MLflow).
COMPLETED, FAILED, EARLY_STOPPED, UNFINISHED = "completed", "failed", "early-stopped", "unfinished"

# The trial's per-query AP@100 of its final evaluation (an artifact of its child run; study.answer reads it).
PER_QUERY_FILE = "per_query_ap.npz"
# Every metric of every logged epoch, long format (step, name, value): the breakdown beside the headlines.
FULL_METRICS_FILE = "metrics_full.csv"

# The parent run: its params (the search settings, study.state.describe), its artifacts under
# PARENT_ARTIFACT_DIR (the space and the base trial config, as JSON) and, at the end, the
# summary files under SUMMARY_ARTIFACT_DIR and the best trial's tags and metric.
PARAM_SPACE = "space"
PARAM_SPACE_SOURCE = "space_source"
PARAM_OBJECTIVES = "objectives"  # metric:mode;metric:mode (study.parent_run.objectives_param)
PARAM_NUM_TRIALS = "num_trials"
PARAM_NUM_SAMPLES = "num_samples"
PARAM_MAX_CONCURRENT = "max_concurrent"
PARAM_WORKERS_PER_TRIAL = "workers_per_trial"
PARAM_CPUS_PER_WORKER = "cpus_per_worker"
PARAM_GPUS_PER_WORKER = "gpus_per_worker"
PARAM_SCHEDULER = "scheduler"
PARAM_SEARCHER = "searcher"
PARAM_SEED = "seed"
PARAM_MAX_FAILURES = "max_failures"
PARAM_FIT = "fit"
PARAM_STORAGE_PATH = "storage_path"
PARENT_ARTIFACT_DIR = "study"
SPACE_FILE = "space.json"
BASE_CONFIG_FILE = "base_config.json"
SUMMARY_ARTIFACT_DIR = "summary"
TAG_BEST_SINGLE_RUN = "best_single_run.trial_id"  # the one run with the best value: one seed, not the answer

# The study's summary files (its output folder, and SUMMARY_ARTIFACT_DIR of the parent run).
CSV_NAME = "trials.csv"
FIGURE_NAME = "map100_by_family_vs_ratio.png"
ANSWER_CSV = "answer.csv"
ANSWER_MD = "answer.md"
PARETO_FIGURE_NAME = "pareto_front.png"
BEST_NAME = "best_config.json"

_BAD_CHARS = re.compile(r"[^/\w.\- :]")


def parent_run_name(study: str) -> str:
    """The parent run's name: ``study-NAME``."""
    return f"study-{study}"


def best_tag(param: str) -> str:
    """The parent run's tag holding the answer's best value of searched parameter ``param``
    (``best.ratio``: the ratio with the best mean over seeds on the objective)."""
    return f"best.{param}"


def best_metric(metric: str, part: str = "mean") -> str:
    """The parent run's metric holding the answer's best ratio's ``part`` of ``metric``: its ``mean``
    over seeds and its interval's ``ci_low`` and ``ci_high`` (``best/map100/multilingual/mean``)."""
    return f"best/{metric}/{part}"


RATIO_STEP = 1000  # an answer-by-ratio metric's step is the ratio in thousandths: the UI draws it against the ratio


def answer_by_ratio_metric(setting: str, family: str, part: str) -> str:
    """The parent run's metric whose history is the answer against the ratio (step: ratio x
    :data:`RATIO_STEP`): ``part`` (``mean``, ``ci_low``, ``ci_high``) of (setting, family), e.g.
    ``by_ratio/multilingual/germanic/mean``; the objective is ``by_ratio/objective/mean``."""
    cell = "objective" if (setting, family) == ("multilingual", "i2t+t2t") else f"{setting}/{family}"
    return f"by_ratio/{cell}/{part}"


def ratio_effect_metric(metric: str, part: str) -> str:
    """The parent run's metric holding the ratio's effect on ``metric`` with the other searched
    parameters held fixed (a study that searches more than the ratio; :mod:`study.answer_conditional`):
    ratio 1 minus ratio 0, its ``estimate``, ``ci_low`` and ``ci_high`` (``ratio_effect/map100/multilingual/estimate``)."""
    return f"ratio_effect/{metric}/{part}"


TAG_RATIO_EFFECT_MODEL = "ratio_effect.model"  # the parent run's tag: how that effect's model takes the other parameters


def importance_metric(metric: str, param: str) -> str:
    """The parent run's metric holding searched parameter ``param``'s share of the variance of
    ``metric`` over the Optuna study's trials (fANOVA): ``importance/map100/multilingual/ratio``."""
    return f"importance/{metric}/{param}"


def single_run_tag(param: str) -> str:
    """The parent run's tag holding the best single run's value of ``param``."""
    return f"best_single_run.{param}"


def single_run_metric(metric: str) -> str:
    """The parent run's metric holding the best single run's value of ``metric`` (one seed)."""
    return f"best_single_run/{metric}"


def ratio_label(ratio: Any) -> str:
    """The one way a ratio is written for people: 3 significant digits (``0.549``, ``0``, ``1``)."""
    return f"{float(ratio):.3g}" if isinstance(ratio, (int, float)) and not isinstance(ratio, bool) else str(ratio)


def trial_run_name(trial_id: str, searched: Mapping[str, Any]) -> str:
    """A child run's name: the searched values, then the trial id: ``r=0.02 s=1 · 9925bc90``.

    Searched parameters come in :data:`~trainables.metric_names.SEARCHED_PARAMS` order, then the
    others; the ratio as :func:`ratio_label` writes it, other numbers with 2 significant digits
    (the exact values are params and metrics).
    """
    others = sorted(k for k in searched if k not in names.SEARCHED_PARAMS)
    order = [k for k in names.SEARCHED_PARAMS if k in searched] + others
    parts = [f"{names.PARAM_ABBREVIATIONS.get(k, k)}={ratio_label(searched[k]) if k == 'ratio' else _short(searched[k])}"
             for k in order]
    return " ".join(parts + ["·", trial_id]) if parts else f"trial {trial_id}"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def mlflow_metric_key(name: str) -> str:
    """An MLflow-valid metric name: ``@`` dropped (``map@100`` -> ``map100``), other bad characters -> ``_``."""
    key = _BAD_CHARS.sub("_", str(name).replace("@", ""))
    key = re.sub(r"/+", "/", key).strip("/")
    return key or "_"

