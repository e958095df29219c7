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
Differences between two ratios (:func:`paired_difference`) use the bootstrap of the
difference under the same image resamples, Welch-style training variance var_a/n_a +
var_b/n_b and df = n_a + n_b - 2 (normal with one seed each). The best ratio's interval
(:func:`best_ratios`) is the set of tried ratios whose difference to the best has an
interval containing 0 (the plausible optimum set).
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


def _lang_order(langs) -> list[str]:
    return sorted(set(langs), key=lambda code: (LANGUAGES.index(code) if code in LANGUAGES else len(LANGUAGES), code))


def _query_arrays(arrays: dict) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, values float64 [Q], image index int [Q]) of every mean the metrics use.

    ``bias.ranks`` contributes one column per language, named ``bias.rank.{l}``.
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
            out.append((f"bias.rank.{lang}", ranks[:, j], image))
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
    """Per cell (setting, family, ratio): seed values [n] and bootstrap seed-means [n_resamples]."""

    seed_values: dict
    boot: dict

    def cell(self, setting: str, family: str, ratio: float) -> tuple[np.ndarray, np.ndarray]:
        key = (setting, family, _ratio_key(ratio))
        if key not in self.seed_values:
            raise KeyError(f"no trials for {setting}/{family} at ratio {ratio}")
        return self.seed_values[key], self.boot[key]

    def ratios(self, setting: str, family: str) -> list[float]:
        return sorted(r for s, f, r in self.seed_values if (s, f) == (setting, family))

    def metrics(self) -> list[tuple[str, str]]:
        return list(dict.fromkeys((s, f) for s, f, _ in sorted(self.seed_values, key=_sort_key)))


def _analyse(trials: Sequence[TrialQueries], n_resamples: int, seed: int) -> _Analysis:
    """Point values and the paired image bootstrap of every (setting, family, ratio) seed-mean."""
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

    def seed_means(images: np.ndarray, axis: int = -1) -> np.ndarray:
        # images: [B, N] resampled image indices -> per-image draw counts -> weights [B, N]
        images = np.moveaxis(np.atleast_2d(images), axis, -1).reshape(-1, n_images)
        b = images.shape[0]
        flat = (images + n_images * np.arange(b)[:, None]).ravel()
        weights = np.bincount(flat, minlength=b * n_images).reshape(b, n_images).astype(np.float64)
        per_trial = _weighted_metrics(designs, weights)
        return np.stack([_mean([per_trial[i][s, f] for i in members[s, f, r]]) for s, f, r in cells])

    with warnings.catch_warnings():  # a replicate that draws none of a key's images gives NaN; see _se
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(
            (np.arange(n_images),), seed_means, n_resamples=n_resamples, batch=min(n_resamples, 500),
            vectorized=True, method="percentile", rng=np.random.default_rng(seed),
        )
    dist = np.atleast_2d(result.bootstrap_distribution)
    seed_values = {c: np.array([points[i][c[0], c[1]] for i in members[c]]) for c in cells}
    return _Analysis(seed_values=seed_values, boot={c: dist[j] for j, c in enumerate(cells)})


def _interval(center: float, se_test: float, var_train: float, df: Optional[int], confidence: float) -> tuple[float, float]:
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
    analysis = _analyse(trials, n_resamples, seed)
    rows = []
    for (setting, family, ratio), values in analysis.seed_values.items():
        n, center = len(values), float(np.mean(values))
        se_test = _se(analysis.boot[setting, family, ratio])
        if n >= 2:
            low, high = _interval(center, se_test, float(np.var(values, ddof=1)) / n, n - 1, confidence)
        else:
            low, high = _interval(center, se_test, 0.0, None, confidence)
        rows.append({"setting": setting, "family": family, "ratio": ratio, "mean": center,
                     "ci_low": low, "ci_high": high, "n_seeds": n})
    return rows


def _difference(analysis: _Analysis, ratio_a: float, ratio_b: float, setting: str, family: str,
                confidence: float) -> tuple[float, float, float]:
    values_a, boot_a = analysis.cell(setting, family, ratio_a)
    values_b, boot_b = analysis.cell(setting, family, ratio_b)
    diff = float(np.mean(values_a) - np.mean(values_b))
    var_train = sum(float(np.var(v, ddof=1)) / len(v) for v in (values_a, values_b) if len(v) >= 2)
    # No seed spread to estimate (one seed each): test-set noise alone, normal quantile, as answer_rows
    df = len(values_a) + len(values_b) - 2 if len(values_a) + len(values_b) > 2 else None
    return (diff, *_interval(diff, _se(boot_a - boot_b), var_train, df, confidence))


def paired_difference(
    trials: Sequence[TrialQueries], ratio_a: float, ratio_b: float, setting: str, family: str,
    confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0,
) -> tuple[float, float, float]:
    """(diff, ci_low, ci_high) of mean(setting, family) at ``ratio_a`` minus at ``ratio_b``.

    Test-set noise: the bootstrap of the difference under the same image resamples for
    both ratios (paired on the same queries); training noise: var_a/n_a + var_b/n_b of the
    seed values (a ratio with one seed adds none); t quantile at df = n_a + n_b - 2, or the
    normal quantile when both have one seed (no training-noise estimate, as in answer_rows).
    Raises KeyError when either ratio has no value for that metric.
    """
    return _difference(_analyse(trials, n_resamples, seed), ratio_a, ratio_b, setting, family, confidence)


def _best(analysis: _Analysis, confidence: float) -> list[dict]:
    out = []
    for setting, family in analysis.metrics():
        ratios = analysis.ratios(setting, family)
        means = [float(np.mean(analysis.seed_values[setting, family, r])) for r in ratios]
        pick = int(np.argmin(means) if setting in LOWER_IS_BETTER else np.argmax(means))
        best = ratios[pick]
        plausible = []
        for r in ratios:
            _, low, high = _difference(analysis, r, best, setting, family, confidence)
            if low <= 0.0 <= high:
                plausible.append(r)
        out.append({"setting": setting, "family": family, "best_ratio": best, "best_mean": means[pick],
                    "set_low": min(plausible), "set_high": max(plausible), "plausible": plausible})
    return out


def best_ratios(
    trials: Sequence[TrialQueries], confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0,
) -> list[dict]:
    """Per (setting, family): the best tried ratio and its plausible optimum set.

    best_ratio = the ratio with the highest mean (the lowest for bias); plausible = every
    tried ratio whose :func:`paired_difference` to the best has an interval containing 0
    (the best itself included); set_low / set_high = its min / max. Returns dicts with
    keys setting, family, best_ratio, best_mean, set_low, set_high, plausible.
    """
    return _best(_analyse(trials, n_resamples, seed), confidence)


def _ends(analysis: _Analysis, confidence: float) -> str:
    setting, family = OBJECTIVE
    tried = analysis.ratios(setting, family)
    missing = [r for r in (0.0, 1.0) if r not in tried]
    if missing:
        which = " and ".join(f"ratio {r:g}" for r in missing)
        return f"The ends of the ratio range cannot be compared: {which} was not tried."
    diff, low, high = _difference(analysis, 1.0, 0.0, setting, family, confidence)
    beyond = not (low <= 0.0 <= high)
    families = []
    for fam in FAMILIES:
        if ("multilingual", fam, 1.0) in analysis.seed_values and ("multilingual", fam, 0.0) in analysis.seed_values:
            d, lo, hi = _difference(analysis, 1.0, 0.0, "multilingual", fam, confidence)
            if not lo <= 0.0 <= hi:
                families.append(f"{fam} ({d:+.3f})")
    pct = f"{100 * confidence:g}%"
    verdict = "differ beyond noise" if beyond else "do not differ beyond noise"
    tail = (f"the multilingual t2t difference excludes 0 for {', '.join(families)}" if families
            else "the multilingual t2t difference excludes 0 for no family")
    return (f"Ratio 1 and ratio 0 {verdict} on the objective (multilingual i2t+t2t mAP@100): "
            f"ratio 1 minus ratio 0 is {diff:+.3f} ({pct} CI {low:+.3f} to {high:+.3f}), and {tail}.")


def ends_sentence(
    trials: Sequence[TrialQueries], confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0,
) -> str:
    """One sentence: do ratio 0 and ratio 1 differ beyond noise on the objective?

    Gives the difference (ratio 1 minus ratio 0) with its interval and names the families
    whose multilingual t2t difference has an interval excluding 0; says so when ratio 0
    or 1 was not tried.
    """
    return _ends(_analyse(trials, n_resamples, seed), confidence)


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


def answer_markdown(rows: Sequence[dict], best: Sequence[dict], sentence: str) -> str:
    """A short markdown summary: best ratio per (setting, family) with its interval, then ``sentence``.

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
    return "\n".join(["## Answer", "", *lines, "", note, "", sentence, ""])


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
