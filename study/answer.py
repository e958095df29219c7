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

from study.mlflow_runs import children_of, download_artifact
from trainables import per_query
from trainables.mlflow_layout import COMPLETED, PER_QUERY_FILE



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


def trial_queries(client, experiment_id: str, parent_run_id: str, records: Sequence) -> list[TrialQueries]:
    """The per-query arrays of a study's completed trials (``records``: ``trial_id``, ``status``,
    ``params``), from their child runs' :data:`~trainables.mlflow_layout.PER_QUERY_FILE`; trials
    without the artifact (an older or a stand-in trial) are left out."""
    runs, out = children_of(client, experiment_id, parent_run_id), []
    with tempfile.TemporaryDirectory() as folder:
        for record in records:
            run = runs.get(record.trial_id)
            ratio, seed = record.params.get("ratio"), record.params.get("seed") or 0
            if record.status != COMPLETED or run is None or not isinstance(ratio, (int, float)):
                continue
            path = download_artifact(client, run.info.run_id, PER_QUERY_FILE, folder)
            if path is not None:
                out.append(load_trial_queries(path, record.trial_id, float(ratio), int(seed)))
    return out
