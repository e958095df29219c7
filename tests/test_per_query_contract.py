"""The per-query contract: the arrays a trial writes (``per_query_ap.npz``) hold the trial's own metrics.

The same embeddings go through the product's path end to end: :func:`trainables.evaluate.evaluate_embeddings`
fills the per-query dict as ``trainables.train.evaluate`` asks it to, rank 0's
:meth:`trainables.trial_run.TrialRun.log_per_query` writes it (through the one writer,
:func:`trainables.per_query.write`) as an artifact of the trial's child run, and the study reads it back
(:func:`study.answer.trial_queries`, the reader :func:`trainables.per_query.load`) and recomputes the metrics
(:func:`study.answer_metrics.metric_values`). Every (setting, family) of the answer must equal the trial's own value
of the same metric to 1e-6, and the negative controls show the comparison notices one changed query.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from study.answer import trial_queries
from study.answer_metrics import SETTINGS, metric_values
from trainables.config import TrialConfig
from trainables.evaluate import evaluate_embeddings
from trainables.languages import family_of
from trainables.mlflow_layout import COMPLETED
from trainables.mlflow_store import client_for
from trainables.trial_run import TrackingInfo, TrialRun

TOL = 1e-6
K = 10  # below the pool sizes, so the AP cut-off matters
N, DIM = 40, 16
LANGS = ("en", "de", "fr", "zh")  # germanic x2, romance, sinitic


def trial_metric(setting: str, family: str) -> str:
    """The trial's metric (``trainables.evaluate``'s name) of the answer's (setting, family)."""
    if setting == "bias":
        return "bias/multilingual"
    if (setting, family) == ("multilingual", "i2t+t2t"):
        return f"map{K}/multilingual"
    if (setting, family) == ("multilingual", "all"):
        return f"map{K}/multilingual/t2t"  # caption -> caption only, like the families
    return f"map{K}/{setting}" if family == "all" else f"map{K}/{setting}/family/{family}"


def expected_cells(langs) -> set[tuple[str, str]]:
    families = {family_of(lang) for lang in langs}
    cells = {(s, f) for s in ("monolingual", "crosslingual", "multilingual") for f in (*families, "all")}
    return cells | {("multilingual", "i2t+t2t"), ("bias", "all")}


def disagreements(metrics: dict, arrays: dict) -> dict[tuple[str, str], tuple[float, float]]:
    """The cells whose answer value differs from the trial's own by more than TOL: cell -> (answer, trial)."""
    answer = metric_values(arrays)
    return {cell: (value, metrics[trial_metric(*cell)]) for cell, value in answer.items()
            if not abs(value - metrics[trial_metric(*cell)]) <= TOL}


def embeddings(seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Images and captions that share a signal plus noise: retrieval is neither perfect nor random."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(N, DIM, generator=gen)
    return images, {lang: images + 0.8 * torch.randn(N, DIM, generator=gen) for lang in LANGS}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One trial through the product's path: (its metrics, the arrays the study reads back from MLflow)."""
    images, texts = embeddings()
    per_query: dict = {}  # as trainables.train.train_worker passes it to evaluate() for the final evaluation
    metrics = evaluate_embeddings(images.float(), {k: v.float() for k, v in texts.items()}, k=K, per_query=per_query)
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder}/mlflow.db"
    client = client_for(uri)
    experiment_id = client.create_experiment("per-query-contract", artifact_location=(folder / "artifacts").as_uri())
    parent = client.create_run(experiment_id, run_name="study-contract").info.run_id
    run = TrialRun(TrackingInfo(uri, experiment_id, parent, "t1", "r=0.5 s=1 · t1"), TrialConfig(ratio=0.5, seed=1))
    run.log_per_query(per_query)
    run.finish("FINISHED")
    record = SimpleNamespace(trial_id="t1", status=COMPLETED, params={"ratio": 0.5, "seed": 1})
    (trial,) = trial_queries(client, experiment_id, parent, [record]).trials
    assert (trial.trial_id, trial.ratio, trial.seed) == ("t1", 0.5, 1)
    assert trial.arrays.keys() == per_query.keys()
    return metrics, trial.arrays


def test_every_setting_and_family_of_the_answer_equals_the_trials_own_value(written):
    metrics, arrays = written
    assert set(metric_values(arrays)) == expected_cells(LANGS)
    assert {s for s, _ in expected_cells(LANGS)} == set(SETTINGS)
    assert disagreements(metrics, arrays) == {}


@pytest.mark.parametrize("key, cells", [
    ("crosslingual.en-de", {("crosslingual", "germanic"), ("crosslingual", "all")}),
    ("monolingual.t2i.fr", {("monolingual", "romance"), ("monolingual", "all")}),
    ("multilingual.t2t.zh", {("multilingual", "sinitic"), ("multilingual", "all"), ("multilingual", "i2t+t2t")}),
    ("multilingual.i2t", {("multilingual", "i2t+t2t")}),
])
def test_negative_control_one_changed_query_is_a_disagreement(written, key, cells):
    metrics, arrays = written
    changed = {k: v.copy() for k, v in arrays.items()}
    changed[key][0] = changed[key][0] + 0.25 if changed[key][0] < 0.5 else changed[key][0] - 0.25
    assert set(disagreements(metrics, changed)) == cells


def test_negative_control_a_changed_bias_rank_is_a_disagreement(written):
    metrics, arrays = written
    changed = {k: v.copy() for k, v in arrays.items()}
    worst = int(np.argmax(changed["bias.ranks"].mean(axis=0)))  # the language ranked last on average
    changed["bias.ranks"][0, worst] += 10 * N  # ranked lower still: the max - min gap grows
    assert set(disagreements(metrics, changed)) == {("bias", "all")}


def test_missing_captions_agree_outside_bias():
    """Captions missing in some languages: every mAP cell still agrees."""
    images, texts = embeddings(seed=1)
    texts["de"][3] = texts["fr"][7] = texts["zh"][3] = float("nan")
    per_query: dict = {}
    metrics = evaluate_embeddings(images, texts, k=K, per_query=per_query)
    assert set(disagreements(metrics, per_query)) <= {("bias", "all")}


def test_missing_captions_bias_agrees():
    """A missing caption's rank is marked 0 in the file, and the answer leaves it out as the trial does."""
    images, texts = embeddings(seed=1)
    texts["de"][3] = texts["fr"][7] = texts["zh"][3] = float("nan")
    per_query: dict = {}
    metrics = evaluate_embeddings(images, texts, k=K, per_query=per_query)
    assert disagreements(metrics, per_query) == {}
