"""The answer's statistics, without I/O or text: the study's answer with its uncertainty, from
each trial's per-query AP@100 arrays (read by :mod:`study.answer`; its metrics recomputed by
:mod:`study.answer_metrics`; worded by :mod:`study.answer_text`).

Uncertainty (:func:`answer_rows`, :func:`paired_difference`, :func:`best_ratios`; the method in
docs/answer.md). A ratio's value is the mean over its seeds, uncertain for two independent
reasons whose variances add: test-set noise, ``se_test``, from ``scipy.stats.bootstrap`` over
test *images* (an image's queries are correlated across settings), one resample applied to
every trial at once (a per-image count weight, so replicates are one matrix product); and
training noise, ``se_train = std(ddof=1) / sqrt(n)`` over n >= 2 seeds. The interval is
mean ± q·sqrt(se_test² + se_train²), q the Student t quantile at n - 1 df (the normal one,
with se_test alone, for one seed). A difference between two ratios is paired by seed where
they share >= 2 seeds (a blocked design: the spread of the per-seed differences, t at
pairs - 1 df), else unpaired (Welch, Welch-Satterthwaite df). The plausible optimum set holds
every tried ratio whose difference to the best has an interval containing 0.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from scipy import stats

from study.answer import TrialQueries
from study.answer_metrics import (
    _FAMILY_ORDER,
    LOWER_IS_BETTER,
    OBJECTIVE,
    SETTINGS,
    _Design,
    _n_images,
    _weighted_metrics,
    metric_values,
)
from trainables.languages import FAMILIES


# --- The study's bootstrap ---
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
    """The answer: one row per (setting, family, ratio) with columns :data:`study.answer_metrics.COLUMNS`.

    mean = mean over the ratio's seeds of the trial values; [ci_low, ci_high] the
    ``confidence`` interval of that mean from test-set and training noise (:mod:`study.answer`);
    n_seeds = the number of trials averaged. Trials are grouped by ratio rounded to 1e-9.
    ``n_resamples`` and ``seed`` drive the image bootstrap.
    """
    return _rows(_analyse(trials, n_resamples, seed), confidence)


def _rows(analysis: _Analysis, confidence: float) -> list[dict]:
    rows = []
    for (setting, family, ratio), values in analysis.seed_values.items():
        n, center = len(values), float(np.mean(values))
        se_test = _se(analysis.boot_rows[setting, family, ratio].mean(axis=0))
        var_train, df = (float(np.var(values, ddof=1)) / n, n - 1) if n >= 2 else (0.0, None)
        low, high = _interval(center, se_test, var_train, df, confidence)
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
    borrows the other's variance), NaN without a spread; se_test: the image bootstrap's standard
    error of the difference. With one seed at each ratio the training noise is unknown, and the
    seed spread is what decides these comparisons (it dwarfs the test set's: benchmarks/README.md
    §9), so the interval is NaN: such a difference is never called beyond noise.
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
    def noise_known(self) -> bool:
        """Whether the interval exists (False with one seed at each ratio)."""
        return math.isfinite(self.low) and math.isfinite(self.high)

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
    else:
        var_train, df = math.nan, None  # one seed each: their training noise is unknown (see Difference)
    se_test = _se(boot_a.mean(axis=0) - boot_b.mean(axis=0))
    low, high = _interval(center, se_test, var_train, df, confidence) if math.isfinite(var_train) else (math.nan, math.nan)
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
    training noise is unknown and the interval is (NaN, NaN). Test-set noise: the bootstrap of the
    difference under the same image resamples for both ratios. Raises KeyError when either ratio has no value.
    """
    d = difference(trials, ratio_a, ratio_b, setting, family, confidence, n_resamples, seed)
    return d.diff, d.low, d.high


def difference(
    trials: Sequence[TrialQueries], ratio_a: float, ratio_b: float, setting: str, family: str,
    confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0,
) -> Difference:
    """:func:`paired_difference` as a :class:`Difference` (how it was judged, its noise parts)."""
    return _difference(_analyse(trials, n_resamples, seed), ratio_a, ratio_b, setting, family, confidence)


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


# --- What the ends, the resolution lines and the hypotheses find (their text: study.answer_text) ---
@dataclass(frozen=True)
class Ends:
    """Ratio 1 minus ratio 0 on the objective (None when ``missing`` names an end not tried), and
    (family, difference) of every family whose multilingual t2t difference excludes 0."""

    missing: list
    difference: Optional[Difference] = None
    families: list = field(default_factory=list)


def ends_numbers(analysis: _Analysis, confidence: float) -> Ends:
    setting, family = OBJECTIVE
    tried = analysis.ratios(setting, family)
    missing = [r for r in (0.0, 1.0) if r not in tried]
    if missing:
        return Ends(missing)
    d = _difference(analysis, 1.0, 0.0, setting, family, confidence)
    both = [fam for fam in FAMILIES if all(("multilingual", fam, r) in analysis.seed_values for r in (1.0, 0.0))]
    per_family = [(fam, _difference(analysis, 1.0, 0.0, "multilingual", fam, confidence)) for fam in both]
    return Ends(missing, d, [(fam, f.diff) for fam, f in per_family if f.excludes_zero])


@dataclass(frozen=True)
class Comparison:
    """Ratio ``a`` minus ratio ``b`` on the objective. short: unresolved and wider than the target
    half-width; seeds: then the paired seeds the target would take (None: out of reach of seeds);
    test_halfwidth: the half-width of test-set noise alone."""

    a: float
    b: float
    difference: Difference
    short: bool
    seeds: Optional[int]
    test_halfwidth: float


def resolution_numbers(analysis: _Analysis, confidence: float, target: float) -> list[Comparison]:
    """Per comparison on the objective (the ends; each ratio against the best): its difference,
    whose half-width is the smallest difference it could resolve, and for an unresolved one the
    seeds a half-width of ``target`` would need. Empty with fewer than 2 ratios."""
    setting, family = OBJECTIVE
    ratios = analysis.ratios(setting, family)
    if len(ratios) < 2:
        return []
    best, _ = analysis.best(setting, family)
    pairs = [(1.0, 0.0)] if {0.0, 1.0} <= set(ratios) else []
    pairs += [(best, r) for r in ratios if r != best and {best, r} != {0.0, 1.0}]
    out = []
    for a, b in pairs:
        d = _difference(analysis, a, b, setting, family, confidence)
        short = not d.excludes_zero and d.halfwidth > target
        need = seeds_needed(d.sd_train, d.se_test, target, confidence) if short else None
        out.append(Comparison(a, b, d, short, need, stats.norm.ppf(0.5 + confidence / 2) * d.se_test))
    return out


@dataclass(frozen=True)
class Hypotheses:
    """What :func:`hypotheses_numbers` finds: (a) hybrid, vs0 / vs1 (it minus ratio 0 / 1) and (b)
    least_biased, bias (it minus ratio 1; None without bias values), at the confidence ``level``."""

    missing: list
    interior: list
    level: float = math.nan
    hybrid: Optional[float] = None
    vs0: Optional[Difference] = None
    vs1: Optional[Difference] = None
    hybrid_verdict: str = ""
    least_biased: Optional[float] = None
    bias: Optional[Difference] = None
    bias_verdict: str = ""


def hypotheses_numbers(analysis: _Analysis, confidence: float) -> Hypotheses:
    """The seed paper's two claims as tested hypotheses: (a) a hybrid ratio (strictly between 0 and
    1) gives better multilingual retrieval (the objective) than both ends; (b) hybrid batches give
    less language bias than monolingual training (ratio 1). The hybrid tested is the best interior
    ratio (highest objective, lowest bias), picked from the data, so its intervals are at a
    Bonferroni level over the k interior ratios tried. Supported: every needed interval excludes 0
    in the claimed direction; contradicted: one excludes 0 against it; otherwise unresolved;
    untestable without both ends and an interior ratio."""
    setting, family = OBJECTIVE
    ratios = analysis.ratios(setting, family)
    interior = [r for r in ratios if 0.0 < r < 1.0]
    missing = [r for r in (0.0, 1.0) if r not in ratios]
    if not interior or missing:
        return Hypotheses(missing, interior)
    level = 1 - (1 - confidence) / len(interior)
    h, _ = analysis.best(setting, family, among=interior)
    vs0, vs1 = (_difference(analysis, h, end, setting, family, level) for end in (0.0, 1.0))
    verdict = ("supported" if vs0.low > 0 and vs1.low > 0 else "contradicted" if vs0.high < 0 or vs1.high < 0
               else "unresolved")
    b, d, bias_verdict = None, None, ""
    if ("bias", "all", 1.0) in analysis.seed_values and all(("bias", "all", r) in analysis.seed_values for r in interior):
        b, _ = analysis.best("bias", "all", among=interior)  # the least biased
        d = _difference(analysis, b, 1.0, "bias", "all", level)
        bias_verdict = "supported" if d.high < 0 else "contradicted" if d.low > 0 else "unresolved"
    return Hypotheses(missing, interior, level, h, vs0, vs1, verdict, b, d, bias_verdict)
