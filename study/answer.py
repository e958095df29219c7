"""The study's answer with its uncertainty, from each trial's per-query AP@100 arrays.

Input (one ``per_query_ap.npz`` per trial, written by :func:`trainables.per_query.write`):
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
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from scipy import stats

from study.mlflow_runs import children_of, download_artifact
from trainables import per_query
from trainables.languages import FAMILIES, LANGUAGES, family_of
from trainables.mlflow_layout import COMPLETED, PER_QUERY_FILE
from trainables.per_query import IMAGE_SUFFIX

SETTINGS = ("monolingual", "crosslingual", "multilingual", "bias")
OBJECTIVE = ("multilingual", "i2t+t2t")
COLUMNS = ("setting", "family", "ratio", "mean", "ci_low", "ci_high", "n_seeds")
LOWER_IS_BETTER = frozenset({"bias"})
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
    """Read a trial's ``per_query_ap.npz`` (:func:`trainables.per_query.load`) into a :class:`TrialQueries`."""
    return TrialQueries(trial_id=str(trial_id), ratio=float(ratio), seed=int(seed), arrays=per_query.load(path))


# ---------------------------------------------------------------------------
# Metrics of one trial (optionally under image weights)
# ---------------------------------------------------------------------------
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


def _lang_order(langs) -> list[str]:
    return sorted(set(langs), key=lambda code: (LANGUAGES.index(code) if code in LANGUAGES else len(LANGUAGES), code))


def _query_arrays(arrays: dict) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, values float64 [Q], image index int [Q]) of every mean the metrics use.

    ``bias.ranks`` contributes one column per language, named ``bias.rank.{l}``, over the images
    that have a caption in it (rank 0 marks a missing one, as the trial leaves those out too).
    """
    out = []
    for key, value in arrays.items():
        if key.endswith(IMAGE_SUFFIX) or key in ("bias.languages", "bias.ranks"):
            continue
        out.append((key, np.asarray(value, dtype=np.float64), np.asarray(arrays[key + IMAGE_SUFFIX])))
    if "bias.ranks" in arrays:
        ranks = np.asarray(arrays["bias.ranks"], dtype=np.float64)
        image = np.asarray(arrays["bias.ranks" + IMAGE_SUFFIX])
        for j, lang in enumerate(np.asarray(arrays["bias.languages"]).astype(str)):
            present = ranks[:, j] > 0
            out.append((f"bias.rank.{lang}", ranks[present, j], image[present]))
    return out


def _mean(values: Sequence[Value]) -> Value:
    return sum(values) / len(values)


def _by_family(per_lang: dict[str, Value], setting: str) -> dict[tuple[str, str], Value]:
    out = {}
    for family in FAMILIES:
        members = [v for lang, v in per_lang.items() if family_of(lang) == family]
        if members:
            out[setting, family] = _mean(members)
    return out


def _combine(means: dict[str, Value]) -> dict[tuple[str, str], Value]:
    """Metrics ``{(setting, family): value}`` from the per-key query means (floats or [R] arrays)."""
    out: dict[tuple[str, str], Value] = {}
    # monolingual
    mono = {}
    for lang in _lang_order(k.split(".")[2] for k in means if k.startswith(("monolingual.t2i.", "monolingual.i2t."))):
        mono[lang] = _mean([means[k] for k in (f"monolingual.t2i.{lang}", f"monolingual.i2t.{lang}") if k in means])
    if mono:
        out.update(_by_family(mono, "monolingual"))
        out["monolingual", "all"] = _mean(list(mono.values()))
    # crosslingual
    pairs = {tuple(k[len("crosslingual."):].split("-")): v for k, v in means.items() if k.startswith("crosslingual.")}
    if pairs:
        cross = {a: _mean([v for (qa, _), v in pairs.items() if qa == a]) for a in _lang_order(a for a, _ in pairs)}
        out.update(_by_family(cross, "crosslingual"))
        out["crosslingual", "all"] = _mean(list(pairs.values()))
    # multilingual
    t2t = {lang: means[f"multilingual.t2t.{lang}"]
           for lang in _lang_order(k.split(".")[2] for k in means if k.startswith("multilingual.t2t."))}
    if t2t:
        out.update(_by_family(t2t, "multilingual"))
        out["multilingual", "all"] = _mean(list(t2t.values()))
    if "multilingual.i2t" in means:
        i2t = means["multilingual.i2t"]
        out[OBJECTIVE] = _mean([i2t, out["multilingual", "all"]]) if t2t else i2t
    # bias
    ranks = [v for k, v in means.items() if k.startswith("bias.rank.")]
    if ranks:
        out["bias", "all"] = np.max(ranks, axis=0) - np.min(ranks, axis=0)
        if np.ndim(out["bias", "all"]) == 0:
            out["bias", "all"] = float(out["bias", "all"])
    return out


class _Design:
    """A trial's per-image sums, so that weighted query means are one matrix product.

    For every query mean ``name``: sums[:, k] = sum over queries of image n of the values,
    counts[:, u] = number of queries of image n (columns shared between keys with the same
    image index). With image weights W [R, N], the weighted mean is
    (W @ sums[:, k]) / (W @ counts[:, u]).
    """

    def __init__(self, arrays: dict, n_images: int):
        items = _query_arrays(arrays)
        self.names = [name for name, _, _ in items]
        sums = np.zeros((n_images, len(items)))
        count_cols: dict[bytes, int] = {}
        counts, self.count_of = [], []
        for k, (_, values, image) in enumerate(items):
            sums[:, k] = np.bincount(image, weights=values, minlength=n_images)
            tag = image.tobytes()
            if tag not in count_cols:
                count_cols[tag] = len(counts)
                counts.append(np.bincount(image, minlength=n_images).astype(np.float64))
            self.count_of.append(count_cols[tag])
        self.matrix = np.column_stack([sums, *counts]) if items else np.zeros((n_images, 0))

    def means(self, products: np.ndarray) -> dict[str, np.ndarray]:
        """Query means per name from ``products = W @ self.matrix`` ([R, columns])."""
        k = len(self.names)
        with np.errstate(invalid="ignore", divide="ignore"):
            return {name: products[:, j] / products[:, k + self.count_of[j]] for j, name in enumerate(self.names)}


def _n_images(arrays: dict) -> int:
    return max((int(np.max(v)) + 1 for k, v in arrays.items() if k.endswith(IMAGE_SUFFIX) and len(v)), default=0)


def _weighted_metrics(designs: Sequence[_Design], weights: np.ndarray) -> list[dict]:
    """Each design's metrics ({(setting, family): [R]}) under image weights [R, N] (one product)."""
    products = weights @ np.hstack([d.matrix for d in designs])
    out, start = [], 0
    for d in designs:
        width = d.matrix.shape[1]
        out.append(_combine(d.means(products[:, start:start + width])))
        start += width
    return out


def metric_values(arrays: dict, weights: Optional[np.ndarray] = None) -> dict[tuple[str, str], Value]:
    """One trial's metrics ``{(setting, family): value}`` (definitions: module docstring).

    arrays: the trial's npz arrays. weights: optional float [R, N] of per-image weights
    (row r = replicate r, e.g. how many times each image was drawn); every mean over
    queries then weighs each query by its image's weight and each value is an [R] array.
    Without weights the values are plain floats (plain means over queries).
    """
    if weights is None:
        means = {name: float(np.mean(values)) for name, values, _ in _query_arrays(arrays)}
        return _combine(means)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if weights.shape[1] < _n_images(arrays):
        raise ValueError(f"weights cover {weights.shape[1]} images, the arrays {_n_images(arrays)}")
    return _weighted_metrics([_Design(arrays, weights.shape[1])], weights)[0]


# ---------------------------------------------------------------------------
# The study's bootstrap
# ---------------------------------------------------------------------------
def _ratio_key(ratio: float) -> float:
    return round(float(ratio), 9)


def _sort_key(cell: tuple[str, str, float]) -> tuple:
    setting, family, ratio = cell
    return SETTINGS.index(setting), _FAMILY_ORDER.index(family) if family in _FAMILY_ORDER else 99, family, ratio


@dataclass
class _Analysis:
    """Per cell (setting, family, ratio): the trials' values [n], their seeds [n], and each trial's
    bootstrap replicates [n, n_resamples] (one row per trial, the same image resamples for all)."""

    seed_values: dict
    seeds: dict
    boot_rows: dict

    @property
    def boot(self) -> dict:
        """Per cell: the bootstrap replicates of the seed-mean [n_resamples]."""
        return {c: rows.mean(axis=0) for c, rows in self.boot_rows.items()}

    def cell(self, setting: str, family: str, ratio: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        key = (setting, family, _ratio_key(ratio))
        if key not in self.seed_values:
            raise KeyError(f"no trials for {setting}/{family} at ratio {ratio}")
        return self.seed_values[key], self.seeds[key], self.boot_rows[key]

    def ratios(self, setting: str, family: str) -> list[float]:
        return sorted(r for s, f, r in self.seed_values if (s, f) == (setting, family))

    def metrics(self) -> list[tuple[str, str]]:
        return list(dict.fromkeys((s, f) for s, f, _ in sorted(self.seed_values, key=_sort_key)))

    def best(self, setting: str, family: str, among: Optional[Sequence[float]] = None) -> tuple[float, float]:
        """(ratio, mean) of the best seed-mean of (setting, family) among ``among`` (default: every
        tried ratio): the highest, or the lowest for a lower-is-better setting."""
        ratios = self.ratios(setting, family) if among is None else list(among)
        means = [float(np.mean(self.seed_values[setting, family, _ratio_key(r)])) for r in ratios]
        pick = int(np.argmin(means) if setting in LOWER_IS_BETTER else np.argmax(means))
        return ratios[pick], means[pick]


def _analyse(trials: Sequence[TrialQueries], n_resamples: int, seed: int) -> _Analysis:
    """Point values and the paired image bootstrap of every trial's value in every (setting, family)."""
    if not trials:
        raise ValueError("no trials")
    n_images = max(_n_images(t.arrays) for t in trials)
    designs = [_Design(t.arrays, n_images) for t in trials]
    points = [metric_values(t.arrays) for t in trials]
    members: dict[tuple[str, str, float], list[int]] = {}
    for i, (trial, values) in enumerate(zip(trials, points)):
        for setting, family in values:
            members.setdefault((setting, family, _ratio_key(trial.ratio)), []).append(i)
    cells = sorted(members, key=_sort_key)
    rows = [(c, i) for c in cells for i in members[c]]

    def trial_values(images: np.ndarray, axis: int = -1) -> np.ndarray:
        # images: [B, N] resampled image indices -> per-image draw counts -> weights [B, N]
        images = np.moveaxis(np.atleast_2d(images), axis, -1).reshape(-1, n_images)
        b = images.shape[0]
        flat = (images + n_images * np.arange(b)[:, None]).ravel()
        weights = np.bincount(flat, minlength=b * n_images).reshape(b, n_images).astype(np.float64)
        per_trial = _weighted_metrics(designs, weights)
        return np.stack([np.broadcast_to(per_trial[i][c[0], c[1]], (b,)) for c, i in rows])

    with warnings.catch_warnings():  # a replicate that draws none of a key's images gives NaN; see _se
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(
            (np.arange(n_images),), trial_values, n_resamples=n_resamples, batch=min(n_resamples, 500),
            vectorized=True, method="percentile", rng=np.random.default_rng(seed),
        )
    dist = np.atleast_2d(result.bootstrap_distribution)
    boot_rows, start = {}, 0
    for c in cells:
        boot_rows[c] = dist[start:start + len(members[c])]
        start += len(members[c])
    seed_values = {c: np.array([points[i][c[0], c[1]] for i in members[c]]) for c in cells}
    seeds = {c: np.array([trials[i].seed for i in members[c]]) for c in cells}
    return _Analysis(seed_values=seed_values, seeds=seeds, boot_rows=boot_rows)


def _interval(center: float, se_test: float, var_train: float, df: Optional[float], confidence: float) -> tuple[float, float]:
    q = stats.norm.ppf((1 + confidence) / 2) if df is None else stats.t.ppf((1 + confidence) / 2, df)
    half = float(q * math.sqrt(se_test ** 2 + var_train))
    return center - half, center + half


def _se(dist: np.ndarray) -> float:
    """Bootstrap standard error: std (ddof=1) of the finite replicate values (NaN: no query drawn)."""
    dist = dist[np.isfinite(dist)]
    return float(np.std(dist, ddof=1)) if len(dist) > 1 else 0.0


def answer_rows(
    trials: Sequence[TrialQueries], confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0,
) -> list[dict]:
    """The answer: one row per (setting, family, ratio) with columns :data:`COLUMNS`.

    mean = mean over the ratio's seeds of the trial values; [ci_low, ci_high] the
    ``confidence`` interval of that mean from test-set and training noise (module
    docstring); n_seeds = the number of trials averaged. Trials are grouped by ratio
    rounded to 1e-9. ``n_resamples`` and ``seed`` drive the image bootstrap.
    """
    return _rows(_analyse(trials, n_resamples, seed), confidence)


def _rows(analysis: _Analysis, confidence: float) -> list[dict]:
    rows = []
    for (setting, family, ratio), values in analysis.seed_values.items():
        n, center = len(values), float(np.mean(values))
        se_test = _se(analysis.boot_rows[setting, family, ratio].mean(axis=0))
        if n >= 2:
            low, high = _interval(center, se_test, float(np.var(values, ddof=1)) / n, n - 1, confidence)
        else:
            low, high = _interval(center, se_test, 0.0, None, confidence)
        rows.append({"setting": setting, "family": family, "ratio": ratio, "mean": center,
                     "ci_low": low, "ci_high": high, "n_seeds": n})
    return rows


@dataclass(frozen=True)
class Difference:
    """mean(a) - mean(b) on one metric with its interval.

    paired: True when judged over the seeds both ratios share (``n`` pairs; the per-seed
    differences give the training noise, df = n - 1); False for the unpaired fallback (Welch:
    var_a/n_a + var_b/n_b, Welch-Satterthwaite df; ``n`` = n_a + n_b). sd_train: the sd of the
    per-seed differences (paired) or sqrt(var_a + var_b) (unpaired; a side with one seed
    borrows the other's variance), NaN without a spread;
    se_test: the image bootstrap's standard error of the difference.
    """

    diff: float
    low: float
    high: float
    paired: bool
    n: int
    sd_train: float
    se_test: float

    @property
    def halfwidth(self) -> float:
        return (self.high - self.low) / 2

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0.0 or self.high < 0.0  # a NaN interval excludes nothing


def _by_seed(values: np.ndarray, seeds: np.ndarray, boot: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One value per distinct seed: trials of the same ratio and seed (a repeated grid point, a
    ratio proposed twice) are the same training run up to what the ratio leaves equal, so they are
    averaged, not counted as independent seeds. Returns (values [k], seeds [k], boot rows [k, R])."""
    unique = np.unique(seeds)
    if len(unique) == len(seeds):
        return values, seeds, boot
    pick = [seeds == s for s in unique]
    return (np.array([values[m].mean() for m in pick]), unique, np.stack([boot[m].mean(axis=0) for m in pick]))


def _difference(analysis: _Analysis, ratio_a: float, ratio_b: float, setting: str, family: str,
                confidence: float) -> Difference:
    values_a, seeds_a, boot_a = _by_seed(*analysis.cell(setting, family, ratio_a))
    values_b, seeds_b, boot_b = _by_seed(*analysis.cell(setting, family, ratio_b))
    shared = sorted(set(seeds_a.tolist()) & set(seeds_b.tolist()))
    if len(shared) >= 2:
        # blocked by seed: a seed fixes the initial weights, image order and composition draws at every
        # ratio, so what the two trials of one seed share cancels in their difference
        ia = [int(np.flatnonzero(seeds_a == s)[0]) for s in shared]
        ib = [int(np.flatnonzero(seeds_b == s)[0]) for s in shared]
        d = values_a[ia] - values_b[ib]
        n, center, var_d = len(d), float(np.mean(d)), float(np.var(d, ddof=1))
        se_test = _se(boot_a[ia].mean(axis=0) - boot_b[ib].mean(axis=0))
        low, high = _interval(center, se_test, var_d / n, n - 1, confidence)
        return Difference(center, low, high, True, n, math.sqrt(var_d), se_test)
    center = float(np.mean(values_a) - np.mean(values_b))
    n_a, n_b = len(values_a), len(values_b)
    var_a = float(np.var(values_a, ddof=1)) if n_a >= 2 else None
    var_b = float(np.var(values_b, ddof=1)) if n_b >= 2 else None
    if var_a is not None and var_b is not None:  # Welch, with the Welch-Satterthwaite df
        parts = (var_a / n_a, var_b / n_b)
        var_train = sum(parts)
        df = var_train ** 2 / (parts[0] ** 2 / (n_a - 1) + parts[1] ** 2 / (n_b - 1)) if var_train > 0 else n_a + n_b - 2
    elif var_a is not None or var_b is not None:
        # one side has a single seed: its training noise is not zero but unknown, so the other side's
        # seed variance stands in for it (var * (1 + 1/n), df = n - 1)
        var, n = (var_a, n_a) if var_a is not None else (var_b, n_b)
        var_train, df = var * (1 + 1 / n), n - 1
    else:  # one seed each: no training-noise estimate, test-set noise alone (normal), as answer_rows
        var_train, df = 0.0, None
    se_test = _se(boot_a.mean(axis=0) - boot_b.mean(axis=0))
    low, high = _interval(center, se_test, var_train, df, confidence)
    known = [v for v in (var_a, var_b) if v is not None]  # a single-seed side borrows the other's variance
    sd = math.sqrt(known[0] + known[-1]) if known else math.nan
    return Difference(center, low, high, False, n_a + n_b, sd, se_test)


def paired_difference(
    trials: Sequence[TrialQueries], ratio_a: float, ratio_b: float, setting: str, family: str,
    confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0,
) -> tuple[float, float, float]:
    """(diff, ci_low, ci_high) of mean(setting, family) at ``ratio_a`` minus at ``ratio_b``.

    Trials of one ratio with the same seed are averaged first. Paired where the two ratios share
    >= 2 seeds: the difference is the mean over those seeds of the per-seed differences, whose
    spread is the training noise (t at df = pairs - 1). Otherwise unpaired: Welch (var_a/n_a +
    var_b/n_b, Welch-Satterthwaite df); when one ratio has a single seed, the other's seed
    variance stands in for its unknown one (var (1 + 1/n), df = n - 1); with one seed each, the
    normal quantile covers test-set noise alone (as in answer_rows). Test-set noise: the bootstrap of the difference under the
    same image resamples for both ratios. Raises KeyError when either ratio has no value.
    """
    d = _difference(_analyse(trials, n_resamples, seed), ratio_a, ratio_b, setting, family, confidence)
    return d.diff, d.low, d.high


def _best(analysis: _Analysis, confidence: float) -> list[dict]:
    out = []
    for setting, family in analysis.metrics():
        ratios = analysis.ratios(setting, family)
        best, best_mean = analysis.best(setting, family)
        plausible = [r for r in ratios if r == best or not _difference(analysis, r, best, setting, family, confidence).excludes_zero]
        out.append({"setting": setting, "family": family, "best_ratio": best, "best_mean": best_mean,
                    "set_low": min(plausible), "set_high": max(plausible), "plausible": plausible})
    return out


def best_ratios(
    trials: Sequence[TrialQueries], confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0,
) -> list[dict]:
    """Per (setting, family): the best tried ratio and its plausible optimum set.

    best_ratio = the ratio with the highest mean (the lowest for bias); plausible = the best and
    every tried ratio whose :func:`paired_difference` to it has an interval containing 0 (each
    comparison at ``confidence``: the set is built to cover the true optimum, tested in
    simulation; it is not a simultaneous statement about every ratio); set_low / set_high = its
    min / max. Returns dicts with keys setting, family, best_ratio, best_mean, set_low, set_high,
    plausible.
    """
    return _best(_analyse(trials, n_resamples, seed), confidence)


def _not_tried(missing: Sequence[float]) -> str:
    names = " and ".join(f"ratio {r:g}" for r in missing)
    return f"{names} {'were' if len(missing) > 1 else 'was'} not tried"


def _ruled_out(d: Difference) -> str:
    return f"it rules out a difference below {d.low:+.3f} or above {d.high:+.3f}"


def _ends(analysis: _Analysis, confidence: float) -> str:
    setting, family = OBJECTIVE
    tried = analysis.ratios(setting, family)
    missing = [r for r in (0.0, 1.0) if r not in tried]
    if missing:
        return f"The ends of the ratio range cannot be compared: {_not_tried(missing)}."
    d = _difference(analysis, 1.0, 0.0, setting, family, confidence)
    families = []
    for fam in FAMILIES:
        if ("multilingual", fam, 1.0) in analysis.seed_values and ("multilingual", fam, 0.0) in analysis.seed_values:
            f = _difference(analysis, 1.0, 0.0, "multilingual", fam, confidence)
            if f.excludes_zero:
                families.append(f"{fam} ({f.diff:+.3f})")
    pct = f"{100 * confidence:g}%"
    verdict = "differ beyond noise" if d.excludes_zero else "do not differ beyond noise"
    how = f"paired over {d.n} seeds" if d.paired else "unpaired"
    tail = (f"the multilingual t2t difference excludes 0 for {', '.join(families)}" if families
            else "the multilingual t2t difference excludes 0 for no family")
    ruled = "" if d.excludes_zero else f"; {_ruled_out(d)}"
    return (f"Ratio 1 and ratio 0 {verdict} on the objective (multilingual i2t+t2t mAP@100): "
            f"ratio 1 minus ratio 0 is {d.diff:+.3f} ({pct} CI {d.low:+.3f} to {d.high:+.3f}, half-width "
            f"{d.halfwidth:.3f}, {how}){ruled}, and {tail}.")


def ends_sentence(
    trials: Sequence[TrialQueries], confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0,
) -> str:
    """One sentence: do ratio 0 and ratio 1 differ beyond noise on the objective?

    Gives the difference (ratio 1 minus ratio 0) with its interval, half-width and how it was
    judged (paired over shared seeds, or unpaired); when it does not exclude 0, the differences
    it rules out; and names the families whose multilingual t2t difference has an interval
    excluding 0. Says so when ratio 0 or 1 was not tried.
    """
    return _ends(_analyse(trials, n_resamples, seed), confidence)


def seeds_needed(sd_train: float, se_test: float, target: float, confidence: float = 0.95,
                 most: int = 1000) -> Optional[int]:
    """The fewest paired seeds n whose expected half-width ``t(n - 1) * sqrt(sd_train**2 / n +
    se_test**2)`` is within ``target``; None when no number of seeds gets there (the test-set
    part alone is wider: a larger test split is needed) or beyond ``most``."""
    z = stats.norm.ppf(0.5 + confidence / 2)
    if not math.isfinite(sd_train) or z * se_test >= target:
        return None
    for n in range(2, most + 1):
        if stats.t.ppf(0.5 + confidence / 2, n - 1) * math.sqrt(sd_train ** 2 / n + se_test ** 2) <= target:
            return n
    return None


def _resolution(analysis: _Analysis, confidence: float, target: float) -> list[str]:
    """Per comparison on the objective (the ends; each ratio against the best): its half-width,
    i.e. the smallest difference it could resolve, and for an unresolved one the seeds a
    half-width of ``target`` would need."""
    setting, family = OBJECTIVE
    ratios = analysis.ratios(setting, family)
    if len(ratios) < 2:
        return []
    best, _ = analysis.best(setting, family)
    pairs = [(1.0, 0.0)] if {0.0, 1.0} <= set(ratios) else []
    pairs += [(best, r) for r in ratios if r != best and {best, r} != {0.0, 1.0}]
    lines = []
    for a, b in pairs:
        d = _difference(analysis, a, b, setting, family, confidence)
        what = "resolved" if d.excludes_zero else "unresolved"
        line = (f"  ratio {a:.3g} - ratio {b:.3g}: {d.diff:+.3f} ± {d.halfwidth:.3f} ({what}; "
                f"{'paired over ' + str(d.n) + ' seeds' if d.paired else 'unpaired'})")
        if not d.excludes_zero and d.halfwidth > target:
            need = seeds_needed(d.sd_train, d.se_test, target, confidence)
            line += (f"; ± {target:g} would take ~{need} paired seeds" if need is not None else
                     f"; ± {target:g} is out of reach of seeds (test-set noise alone is "
                     f"± {stats.norm.ppf(0.5 + confidence / 2) * d.se_test:.3f})")
        lines.append(line)
    pct = f"{100 * confidence:g}%"
    return [f"Resolution on the objective ({pct} half-widths: the smallest difference each comparison could resolve):",
            *lines]


def _hypotheses(analysis: _Analysis, confidence: float) -> list[str]:
    """The seed paper's two claims, each as a tested hypothesis with its interval.

    (a) a hybrid ratio (strictly between 0 and 1) gives better multilingual retrieval (the
        objective) than both ends; (b) hybrid batches give less language bias than monolingual
        training (ratio 1). The hybrid ratio tested is the best interior one (highest objective,
        lowest bias), picked from the data, so its intervals are at a Bonferroni level over the
        k interior ratios tried. Supported: every needed interval excludes 0 in the claimed
        direction; contradicted: one excludes 0 against it; otherwise unresolved, with the
        differences it rules out.
    """
    lines = ["Hypotheses of the hybrid-batch paper (Elmahdy et al. 2024), tested:"]
    setting, family = OBJECTIVE
    ratios = analysis.ratios(setting, family)
    interior = [r for r in ratios if 0.0 < r < 1.0]
    missing = [r for r in (0.0, 1.0) if r not in ratios]
    if not interior or missing:
        why = _not_tried(missing) if missing else "no ratio strictly between 0 and 1 was tried"
        return [*lines, f"  (a) hybrid beats both ends on the objective: not testable ({why}).",
                f"  (b) hybrid has less language bias than ratio 1: not testable ({why})."]
    level = 1 - (1 - confidence) / len(interior)
    h, _ = analysis.best(setting, family, among=interior)
    vs0, vs1 = (_difference(analysis, h, end, setting, family, level) for end in (0.0, 1.0))
    if vs0.low > 0 and vs1.low > 0:
        verdict = "supported"
    elif vs0.high < 0 or vs1.high < 0:
        verdict = "contradicted"
    else:
        verdict = "unresolved"
    lines.append(f"  (a) hybrid beats both ends on the objective: {verdict}: best hybrid ratio {h:.3g} minus ratio 0 "
                 f"{vs0.diff:+.3f} [{vs0.low:+.3f}, {vs0.high:+.3f}], minus ratio 1 {vs1.diff:+.3f} "
                 f"[{vs1.low:+.3f}, {vs1.high:+.3f}] ({100 * level:.3g}% intervals).")
    if ("bias", "all", 1.0) in analysis.seed_values and all(("bias", "all", r) in analysis.seed_values for r in interior):
        b, _ = analysis.best("bias", "all", among=interior)  # the least biased
        d = _difference(analysis, b, 1.0, "bias", "all", level)
        verdict = "supported" if d.high < 0 else "contradicted" if d.low > 0 else "unresolved"
        lines.append(f"  (b) hybrid has less language bias than ratio 1: {verdict}: least-biased hybrid ratio {b:.3g} "
                     f"minus ratio 1 {d.diff:+.1f} [{d.low:+.1f}, {d.high:+.1f}] mean-rank gap "
                     f"({100 * level:.3g}% interval; lower is less bias).")
    return lines


@dataclass
class Answer:
    """The whole answer of one study, from one analysis (see :func:`study_answer`)."""

    rows: list
    best: list
    sentence: str
    resolution: list
    hypotheses: list


def study_answer(trials: Sequence[TrialQueries], confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0,
                 target: float = 0.02) -> Answer:
    """:func:`answer_rows`, :func:`best_ratios`, :func:`ends_sentence`, the resolution lines (each
    comparison's half-width, and the seeds a half-width of ``target`` would need) and the two
    hypotheses, all from one image bootstrap."""
    analysis = _analyse(trials, n_resamples, seed)
    return Answer(rows=_rows(analysis, confidence), best=_best(analysis, confidence),
                  sentence=_ends(analysis, confidence), resolution=_resolution(analysis, confidence, target),
                  hypotheses=_hypotheses(analysis, confidence))


# ---------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------
def write_answer_csv(rows: Sequence[dict], path: Union[str, Path]) -> Path:
    """Write :func:`answer_rows` rows to ``path`` with exactly the columns :data:`COLUMNS`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def answer_markdown(rows: Sequence[dict], best: Sequence[dict], sentence: str, notes: Sequence[str] = ()) -> str:
    """A short markdown summary: best ratio per (setting, family) with its interval, then ``sentence``
    and ``notes`` (lines: the resolution and hypotheses of :func:`study_answer`).

    rows: :func:`answer_rows`; best: :func:`best_ratios`; sentence: :func:`ends_sentence`.
    """
    by_cell = {(r["setting"], r["family"], _ratio_key(r["ratio"])): r for r in rows}
    lines = [
        "| setting | family | best ratio | plausible optimum | mean at best (CI) | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for b in best:
        row = by_cell.get((b["setting"], b["family"], _ratio_key(b["best_ratio"])))
        ci = f"{row['mean']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]" if row else f"{b['best_mean']:.3f}"
        seeds = row["n_seeds"] if row else ""
        lines.append(f"| {b['setting']} | {b['family']} | {b['best_ratio']:g} | "
                     f"{b['set_low']:g} – {b['set_high']:g} | {ci} | {seeds} |")
    note = "Bias: lower is better. The plausible optimum is every tried ratio not distinguishable from the best."
    extra = ["", *(line.strip() if line.startswith("  ") else line for line in notes)] if notes else []
    extra = [f"- {line}" if i and not line.endswith(":") and line else line for i, line in enumerate(extra)]
    return "\n".join(["## Answer", "", *lines, "", note, "", sentence, *extra, ""])


def plot_answer(rows: Sequence[dict], path: Union[str, Path], title: str = "") -> Optional[Path]:
    """PNG of the answer: 4 panels (monolingual, crosslingual, multilingual, bias) vs ratio.

    Each family is a line of the mean with its interval shaded. The multilingual panel
    shows caption -> caption (t2t) quantities only (families and their ``all`` mean),
    not the i2t+t2t objective; the bias panel has one line. Returns None without rows.
    """
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    for ax, setting in zip(axes.ravel(), SETTINGS):
        families = list(dict.fromkeys(r["family"] for r in rows if r["setting"] == setting and r["family"] != OBJECTIVE[1]))
        for family in families:
            pts = sorted((r["ratio"], r["mean"], r["ci_low"], r["ci_high"]) for r in rows
                         if r["setting"] == setting and r["family"] == family)
            xs, means, lows, highs = (list(c) for c in zip(*pts))
            style = "k--" if family == "all" and setting != "bias" else "-"
            line = ax.plot(xs, means, style, marker="o", markersize=3, label=family)[0]
            ax.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.15, linewidth=0)
        # the multilingual panel says what it shows in its title (a note inside the axes met the legend)
        ax.set_title(f"{setting}\ncaption -> caption only; 'all' = mean over languages" if setting == "multilingual"
                     else setting, fontsize=10)
        ax.set_xlabel("monolingual ratio")
        ax.set_ylabel("mean rank gap (max - min over languages)" if setting == "bias" else "mAP@100")
        ax.set_xlim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if families:
            ax.legend(fontsize=7, ncol=2)
    fig.suptitle(title or "Answer per setting and family vs ratio (mean over seeds, shaded: CI)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
