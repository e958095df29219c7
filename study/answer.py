"""The answer's input: each completed trial's per-query arrays, read back from its MLflow run.

A trial's final evaluation saves the AP@100 of every query as the artifact ``per_query_ap.npz``
(written and read only by :mod:`trainables.per_query`, which lists its keys);
:func:`trial_queries` downloads those of a study's completed trials into :class:`TrialQueries`,
from which :mod:`study.answer_stats` computes the answer and :mod:`study.answer_text` words it.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

from study.mlflow_runs import children_of
from trainables.errors import one_line
from trainables import per_query
from trainables.mlflow_layout import COMPLETED, EARLY_STOPPED, PER_QUERY_FILE
from trainables.mlflow_store import TrackingError, fetch_artifact


@dataclass
class TrialQueries:
    """One trial's per-query arrays.

    trial_id: the trial's id; ratio: its batch-composition ratio; seed: its training seed;
    arrays: npz key -> np.ndarray, as :mod:`trainables.per_query` describes them.
    """

    trial_id: str
    ratio: float
    seed: int
    arrays: dict = field(repr=False)


def load_trial_queries(path: Union[str, Path], trial_id: str, ratio: float, seed: int) -> TrialQueries:
    """Read a trial's ``per_query_ap.npz`` (:func:`trainables.per_query.load`) into a :class:`TrialQueries`."""
    return TrialQueries(trial_id=str(trial_id), ratio=float(ratio), seed=int(seed), arrays=per_query.load(path))


@dataclass
class AnswerInput:
    """What the answer is computed from: ``trials``, the completed trials' per-query arrays, and
    ``left_out``, trial id -> why a completed (or early-stopped) trial is not among them (said with the answer)."""

    trials: list
    left_out: dict = field(default_factory=dict)


def trial_queries(client, experiment_id: str, parent_run_id: str, records: Sequence) -> AnswerInput:
    """The per-query arrays of a study's completed trials (``records``: ``trial_id``, ``status``,
    ``params``), from their child runs' :data:`~trainables.mlflow_layout.PER_QUERY_FILE`. A completed
    trial without the file (an older or a stand-in trial), or whose file cannot be read, is left
    out, with its reason."""
    runs, out = children_of(client, experiment_id, parent_run_id), AnswerInput([])
    with tempfile.TemporaryDirectory() as folder:
        for record in records:
            if record.status == EARLY_STOPPED:  # a survivor sample otherwise: said, never averaged in
                out.left_out[record.trial_id] = "stopped early by ASHA: the answer counts only trials trained in full"
                continue
            if record.status != COMPLETED:
                continue
            run = runs.get(record.trial_id)
            ratio, seed = record.params.get("ratio"), record.params.get("seed") or 0
            if run is None:
                out.left_out[record.trial_id] = "no MLflow run"
                continue
            if not isinstance(ratio, (int, float)):
                out.left_out[record.trial_id] = "no ratio param"
                continue
            try:
                path = fetch_artifact(client, run.info.run_id, PER_QUERY_FILE, folder)
                if path is None:
                    out.left_out[record.trial_id] = f"no {PER_QUERY_FILE} (an older or a stand-in trial)"
                    continue
                out.trials.append(load_trial_queries(path, record.trial_id, float(ratio), int(seed)))
            except (TrackingError, OSError, ValueError, KeyError) as err:  # unreadable: said, not dropped
                out.left_out[record.trial_id] = f"{PER_QUERY_FILE} unreadable: {one_line(err)}"
    return out


def left_out_line(left_out: dict) -> str:
    """``Left out of the answer: 2 trials: ab12 (reason); cd34 (reason).`` ('' for none)."""
    if not left_out:
        return ""
    items = "; ".join(f"{trial} ({why})" for trial, why in left_out.items())
    return f"Left out of the answer: {len(left_out)} trial{'s' if len(left_out) > 1 else ''}: {items}."
