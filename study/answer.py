"""The study's answer with its uncertainty, from each trial's per-query AP@100 arrays.

Input (one ``per_query_ap.npz`` per trial, written with :func:`save_trial_queries`):
``monolingual.t2i.{l}``, ``monolingual.i2t.{l}``, ``crosslingual.{a}-{b}``,
``multilingual.i2t``, ``multilingual.t2t.{l}`` (float [Q], AP@100 of each query),
``bias.ranks`` (int [Q, L], rank of image q's caption in language j over the whole
pool) with ``bias.languages`` (str [L], the column order), and for every array key K
``K@image`` (int [Q], the test image 0..N-1 each query belongs to). Only the languages
whose keys are present count.

Metrics (:func:`metric_values`, keyed ``(setting, family)``; the same definitions as the
trial's own, :mod:`trainables.evaluate`):

* ``monolingual``: lang value of l = mean(mean t2i_l, mean i2t_l); family f = mean of f's
  lang values; ``all`` = mean over languages.
* ``crosslingual``: lang value of a = mean over b of mean(pair a-b); family over lang
  values; ``all`` = mean over all pairs.
* ``multilingual``: family f = mean over f's languages of mean(t2t_l); ``all`` = mean over
  languages of mean(t2t_l) (caption -> caption only, like the families); ``i2t+t2t`` (the
  study's objective) = mean(mean i2t, ``all``), or mean i2t alone with one language.
* ``bias``: ``all`` = max minus min over languages of the mean over images of
  ``bias.ranks[:, j]`` (lower is better).

Uncertainty (:func:`answer_rows`, :func:`paired_difference`, :func:`best_ratios`). A ratio's
value is the mean over its seeds, and it is uncertain for two independent reasons:

1. Test-set noise: the test images are a sample; a different sample would give other
   values. ``scipy.stats.bootstrap`` resamples the *images* (not queries: an image's
   captions in all languages, hence its queries across settings, are correlated, so the
   image is the independent unit). One resample of images is applied to every trial of
   the study at once (paired), because every trial is evaluated on the same test set:
   differences between ratios are then judged on the same queries, so the test-set
   noise they share cancels instead of inflating their intervals. A resample becomes a
   per-image count weight, so every "mean over queries" is a weighted mean and all
   replicates are computed with one matrix product (fast). Its statistic is the
   seed-mean; the bootstrap standard error is ``se_test``.
2. Training noise: the same test set scored after training with another seed gives
   another value; the image bootstrap cannot see this, so it comes from the spread of
   the seed values, ``se_train = std(ddof=1) / sqrt(n)`` (n >= 2 seeds).

The two are independent, so their variances add; the interval is mean ± q·sqrt(se_test²
+ se_train²), with q the Student t quantile at df = n - 1 when n >= 2 (few seeds: the
spread is itself uncertain, and t widens the interval accordingly) and the normal
quantile with se_test alone when n = 1 (no training-noise estimate exists; the interval
then covers test-set noise only). A normal-theory interval built from standard errors
(rather than bootstrap percentiles) is what allows adding the two variance components.
Differences between two ratios (:func:`paired_difference`) are **paired by seed** where the
two ratios share at least 2 seeds (a study gives every ratio the same seeds, in the same
order: ``study.race``). A seed fixes the initial weights, the image order and every per-step
draw of the composition rule at every ratio, so the trials of one seed share what is not the
ratio's doing: the training noise of the difference is the spread of the per-seed
differences (a blocked design with the seed as the block; t at df = pairs - 1), and its
test-set noise the bootstrap of the mean per-seed difference under the same image
resamples. Where the seeds are not shared, it falls back to unpaired: Welch's
var_a/n_a + var_b/n_b with the Welch-Satterthwaite df (normal with one seed each). The best
ratio's interval (:func:`best_ratios`) is the set of tried ratios whose difference to the
best has an interval containing 0 (the plausible optimum set).
"""

from __future__ import annotations

import csv
import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from scipy import stats

from trainables.languages import FAMILIES, LANGUAGES, family_of

SETTINGS = ("monolingual", "crosslingual", "multilingual", "bias")
OBJECTIVE = ("multilingual", "i2t+t2t")
COLUMNS = ("setting", "family", "ratio", "mean", "ci_low", "ci_high", "n_seeds")
LOWER_IS_BETTER = frozenset({"bias"})
IMAGE_SUFFIX = "@image"
_FAMILY_ORDER = (*FAMILIES, "all", "i2t+t2t")

Value = Union[float, np.ndarray]


@dataclass
class TrialQueries:
    """One trial's per-query arrays.

    trial_id: the trial's id; ratio: its batch-composition ratio; seed: its training seed;
    arrays: npz key -> np.ndarray, as described in the module docstring.
    """

    trial_id: str
    ratio: float
    seed: int
    arrays: dict = field(repr=False)


def load_trial_queries(path: Union[str, Path], trial_id: str, ratio: float, seed: int) -> TrialQueries:
    """Read a trial's ``per_query_ap.npz`` (no pickles) into a :class:`TrialQueries`."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    return TrialQueries(trial_id=str(trial_id), ratio=float(ratio), seed=int(seed), arrays=arrays)


def save_trial_queries(path: Union[str, Path], arrays: dict) -> Path:
    """Write ``arrays`` (key -> array, the layout above) to ``path`` as an npz, atomically.

    The file is written to a temporary file in the same folder and moved into place with
    ``os.replace``, so a reader never sees a partial file. Raises ValueError when an
    array key lacks its ``@image`` companion or their lengths differ.
    """
    for key, value in arrays.items():
        if key.endswith(IMAGE_SUFFIX) or key == "bias.languages":
            continue
        image = arrays.get(key + IMAGE_SUFFIX)
        if image is None or len(image) != len(value):
            raise ValueError(f"{key!r} needs an {key + IMAGE_SUFFIX!r} array of the same length")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


# ---------------------------------------------------------------------------
# Metrics of one trial (optionally under image weights)
# ---------------------------------------------------------------------------
def trial_queries(client, experiment_id: str, parent_run_id: str, records: Sequence) -> list[TrialQueries]:
    """The per-query arrays of a study's completed trials (``records``: ``trial_id``, ``status``,
    ``params``), from their child runs' :data:`~trainables.tracking.PER_QUERY_FILE`; trials
    without the artifact (an older or a stand-in trial) are left out."""
    from trainables.tracking import COMPLETED, PER_QUERY_FILE, children_of, download_artifact

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


