"""study.answer: metric definitions, interval invariants, and a calibration study with known truth."""

import csv
import math

import numpy as np
import pytest

from study.answer import TrialQueries, load_trial_queries
from study.answer_metrics import COLUMNS, metric_values
from study.answer_stats import (
    Difference,
    _analyse,
    _difference,
    answer_rows,
    best_ratios,
    paired_difference,
    seeds_needed,
)
from study.answer_text import _hypotheses, answer_markdown, ends_sentence, plot_answer
from study.outputs import write_answer_csv
from tests.standins import FAMILY_OPTIMA
from trainables.languages import FAMILIES, languages_in
from trainables.per_query import write as save_trial_queries

N = 4  # test images of the tiny fixture
LANGS = ("en", "de", "fr")  # germanic, germanic, romance
# Each key's AP = image index / 100 + a key-specific offset, so a mean reveals its source:
# over images 0..3 the mean of image/100 is 0.015.
OFFSETS = {
    "monolingual.t2i.en": 0.10, "monolingual.i2t.en": 0.20,
    "monolingual.t2i.de": 0.30, "monolingual.i2t.de": 0.40,
    "monolingual.t2i.fr": 0.50, "monolingual.i2t.fr": 0.60,
    "crosslingual.en-de": 0.11, "crosslingual.en-fr": 0.12, "crosslingual.de-en": 0.21,
    "crosslingual.de-fr": 0.22, "crosslingual.fr-en": 0.31, "crosslingual.fr-de": 0.32,
    "multilingual.i2t": 0.70,
    "multilingual.t2t.en": 0.41, "multilingual.t2t.de": 0.42, "multilingual.t2t.fr": 0.43,
}
# bias.ranks columns in a non-canonical order; mean ranks: fr 2, en 5, de 11 -> bias 9.
BIAS_LANGS = ("fr", "en", "de")
BIAS_RANKS = np.array([[1, 4, 10], [3, 6, 12], [1, 4, 10], [3, 6, 12]], dtype=np.int32)


def tiny_arrays(shift: float = 0.0, bias_scale: int = 1) -> dict:
    """The fixture's arrays; ``shift`` is added to every AP, ``bias_scale`` multiplies the rank gaps."""
    image = np.arange(N, dtype=np.int32)
    arrays = {}
    for key, offset in OFFSETS.items():
        arrays[key] = (image / 100 + offset + shift).astype(np.float32)
        arrays[key + "@image"] = image
    ranks = BIAS_RANKS.copy()
    ranks[:, 1:] = ranks[:, :1] + bias_scale * (ranks[:, 1:] - ranks[:, :1])
    arrays["bias.ranks"], arrays["bias.ranks@image"] = ranks, image
    arrays["bias.languages"] = np.array(BIAS_LANGS)
    return arrays


def m(key: str) -> float:
    return OFFSETS[key] + 0.015


def test_metric_values_equal_hand_computed_means():
    got = metric_values(tiny_arrays())
    lang = {l: (m(f"monolingual.t2i.{l}") + m(f"monolingual.i2t.{l}")) / 2 for l in LANGS}
    assert got["monolingual", "germanic"] == pytest.approx((lang["en"] + lang["de"]) / 2)
    assert got["monolingual", "romance"] == pytest.approx(lang["fr"])
    assert got["monolingual", "all"] == pytest.approx(sum(lang.values()) / 3)
    cross = {a: (m(f"crosslingual.{a}-{b}") + m(f"crosslingual.{a}-{c}")) / 2
             for a, b, c in (("en", "de", "fr"), ("de", "en", "fr"), ("fr", "en", "de"))}
    assert got["crosslingual", "germanic"] == pytest.approx((cross["en"] + cross["de"]) / 2)
    assert got["crosslingual", "romance"] == pytest.approx(cross["fr"])
    assert got["crosslingual", "all"] == pytest.approx(np.mean([m(k) for k in OFFSETS if k.startswith("crosslingual")]))
    t2t = {l: m(f"multilingual.t2t.{l}") for l in LANGS}
    assert got["multilingual", "germanic"] == pytest.approx((t2t["en"] + t2t["de"]) / 2)
    assert got["multilingual", "romance"] == pytest.approx(t2t["fr"])
    assert got["multilingual", "all"] == pytest.approx(sum(t2t.values()) / 3)
    assert got["multilingual", "i2t+t2t"] == pytest.approx((m("multilingual.i2t") + sum(t2t.values()) / 3) / 2)
    assert got["bias", "all"] == pytest.approx(9.0)
    assert not any(fam in ("slavic", "turkic") for _, fam in got)  # only present languages count


def test_unit_weights_reproduce_unweighted_values():
    arrays = tiny_arrays()
    # a key with two queries on image 3: the plain mean counts both
    arrays["multilingual.t2t.fr"] = np.array([0.1, 0.2, 0.3, 0.4, 0.9], dtype=np.float32)
    arrays["multilingual.t2t.fr@image"] = np.array([0, 1, 2, 3, 3], dtype=np.int32)
    plain = metric_values(arrays)
    weighted = metric_values(arrays, weights=np.ones((3, N)))
    assert weighted.keys() == plain.keys()
    for key, value in plain.items():
        assert weighted[key].shape == (3,)
        np.testing.assert_allclose(weighted[key], value, rtol=1e-12, atol=1e-12)


def test_count_weights_equal_a_literal_image_resample():
    arrays = tiny_arrays()
    arrays["multilingual.t2t.fr"] = np.array([0.1, 0.2, 0.3, 0.4, 0.9], dtype=np.float32)
    arrays["multilingual.t2t.fr@image"] = np.array([0, 1, 2, 3, 3], dtype=np.int32)
    drawn = np.array([3, 3, 0, 1])  # images drawn with replacement
    counts = np.bincount(drawn, minlength=N).astype(float)
    resampled = {}
    for key, value in arrays.items():  # the same resample, done by copying queries
        if key.endswith("@image") or key == "bias.languages":
            continue
        take = np.concatenate([np.flatnonzero(arrays[key + "@image"] == i) for i in drawn])
        resampled[key], resampled[key + "@image"] = value[take], arrays[key + "@image"][take]
    resampled["bias.languages"] = arrays["bias.languages"]
    expected = metric_values(resampled)
    got = metric_values(arrays, weights=counts[None, :])
    for key, value in expected.items():
        assert got[key][0] == pytest.approx(value)


def test_bias_is_max_minus_min_of_mean_rank_over_images():
    arrays = tiny_arrays()
    arrays["bias.ranks"] = np.array([[1, 2, 7], [1, 4, 9]], dtype=np.int32)  # means 1, 3, 8
    arrays["bias.ranks@image"] = np.array([0, 1], dtype=np.int32)
    assert metric_values(arrays)["bias", "all"] == pytest.approx(7.0)
    # image 1 weighted three times: means 1, 3.5, 8.5 -> 7.5
    got = metric_values(arrays, weights=np.array([[1.0, 3.0, 0.0, 0.0]]))
    assert got["bias", "all"][0] == pytest.approx((7 + 3 * 9) / 4 - 1.0)


def test_save_and_load_round_trip(tmp_path):
    path = save_trial_queries(tmp_path / "trial" / "per_query_ap.npz", tiny_arrays())
    assert sorted(p.name for p in path.parent.iterdir()) == ["per_query_ap.npz"]  # no temp file left
    trial = load_trial_queries(path, "t1", 0.25, 7)
    assert (trial.trial_id, trial.ratio, trial.seed) == ("t1", 0.25, 7)
    for key, value in tiny_arrays().items():
        np.testing.assert_array_equal(trial.arrays[key], value)
    bad = tiny_arrays()
    del bad["multilingual.i2t@image"]
    with pytest.raises(ValueError, match="@image"):
        save_trial_queries(tmp_path / "bad.npz", bad)


def study_of(spec):
    """Trials from (ratio, seed, shift, bias_scale) tuples on the tiny fixture."""
    return [TrialQueries(f"r{r}-s{s}", r, s, tiny_arrays(shift, scale)) for r, s, shift, scale in spec]


def test_rows_columns_seed_counts_and_csv(tmp_path):
    trials = study_of([(0.0, 0, 0.0, 1), (0.0, 1, 0.01, 1), (0.5, 0, 0.02, 1)])
    rows = answer_rows(trials, n_resamples=200)
    assert all(tuple(r) == COLUMNS for r in rows)
    seeds = {r["ratio"]: r["n_seeds"] for r in rows}
    assert seeds == {0.0: 2, 0.5: 1}
    for r in rows:
        assert r["ci_low"] <= r["mean"] <= r["ci_high"]
    germanic0 = next(r for r in rows if (r["setting"], r["family"], r["ratio"]) == ("monolingual", "germanic", 0.0))
    assert germanic0["mean"] == pytest.approx(metric_values(tiny_arrays(0.005))["monolingual", "germanic"])
    path = write_answer_csv(rows, tmp_path / "answer.csv")
    with open(path, newline="") as fh:
        read = list(csv.DictReader(fh))
    assert tuple(read[0]) == COLUMNS and len(read) == len(rows)


def test_best_of_bias_is_the_minimum():
    # ratio 1 has the smallest bias (scale 1) and ratio 0 the largest
    trials = study_of([(r, s, 0.0, scale) for r, scale in ((0.0, 5), (0.5, 3), (1.0, 1)) for s in range(2)])
    best = {(b["setting"], b["family"]): b for b in best_ratios(trials, n_resamples=100)}
    assert best["bias", "all"]["best_ratio"] == 1.0
    assert best["bias", "all"]["best_mean"] == pytest.approx(9.0)


def test_paired_difference_of_identical_trials_is_exactly_zero():
    trials = study_of([(r, s, 0.0, 1) for r in (0.0, 1.0) for s in range(2)])
    diff, low, high = paired_difference(trials, 1.0, 0.0, "multilingual", "i2t+t2t", n_resamples=200)
    assert diff == 0.0 and low <= 0.0 <= high


def test_one_seed_at_each_ratio_gives_no_interval_and_no_claim():
    """The seed spread decides these differences and one seed each cannot measure it: no interval, never
    "beyond noise", however far apart the two single trials are."""
    from study.answer_text import ends_sentence

    trials = study_of([(0.0, 0, 0.0, 1), (1.0, 0, 0.2, 1)])
    diff, low, high = paired_difference(trials, 1.0, 0.0, "multilingual", "i2t+t2t", n_resamples=200)
    assert diff != 0.0 and math.isnan(low) and math.isnan(high)
    assert "cannot be judged against noise" in ends_sentence(trials, n_resamples=200)
    best = {(b["setting"], b["family"]): b for b in best_ratios(trials, n_resamples=200)}
    assert best["multilingual", "i2t+t2t"]["plausible"] == [0.0, 1.0]  # neither is ruled out


def test_paired_difference_of_a_constant_shift_is_tight():
    trials = study_of([(0.0, s, 0.0, 1) for s in range(2)] + [(1.0, s, 0.1, 1) for s in range(2)])
    for setting, family in (("multilingual", "i2t+t2t"), ("monolingual", "romance"), ("crosslingual", "all")):
        diff, low, high = paired_difference(trials, 1.0, 0.0, setting, family, n_resamples=200)
        assert diff == pytest.approx(0.1, abs=1e-6)
        assert high - low < 1e-5 and low <= diff <= high
    # unpaired test-set noise would not cancel: the per-ratio intervals are far wider
    rows = answer_rows(trials, n_resamples=200)
    row = next(r for r in rows if (r["setting"], r["family"], r["ratio"]) == ("multilingual", "i2t+t2t", 1.0))
    assert row["ci_high"] - row["ci_low"] > 1e-3


def test_ends_sentence_markdown_and_plot(tmp_path):
    trials = study_of([(0.0, s, 0.0, 1) for s in range(2)] + [(1.0, s, 0.1, 1) for s in range(2)])
    sentence = ends_sentence(trials, n_resamples=100)
    assert "differ beyond noise" in sentence and "do not" not in sentence
    assert "germanic" in sentence and "romance" in sentence and "+0.100" in sentence
    missing = ends_sentence(study_of([(0.0, 0, 0.0, 1), (0.5, 0, 0.0, 1)]), n_resamples=50)
    assert "ratio 1 was not tried" in missing
    rows, best = answer_rows(trials, n_resamples=100), best_ratios(trials, n_resamples=100)
    text = answer_markdown(rows, best, sentence)
    assert text.startswith(f"## Answer\n\n**Verdict.** {sentence}\n\nThe ratio is the share of monolingual batches")
    row = next(line for line in text.splitlines() if line.startswith("multilingual") and "i2t+t2t" in line)
    assert row.split()[:3] == ["multilingual", "i2t+t2t", "1"]  # the best ratio of the objective
    png = plot_answer(rows, tmp_path / "answer.png", "tiny")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------
# Calibration: simulated studies with a known optimum per family
# ---------------------------------------------------------------------------
GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
SEEDS = 3
N_IMAGES = 200
# The true optimum of each family is the grid point nearest its FAMILY_OPTIMA value.
TRUE_OPTIMUM = {f: min(GRID, key=lambda g: (abs(g - FAMILY_OPTIMA[f]), g)) for f in FAMILIES}
SIM_LANGS = {f: languages_in(f)[0] for f in FAMILIES}  # one language per family


def simulated_study(rng) -> list:
    """15 trials whose t2t AP = truth + shared image effect + image x ratio effect + seed offset + query noise.

    truth(f, r) = 0.5 - 0.4 (r - optimum_f)^2: neighbouring grid points differ by 0.025,
    about the size of the training noise (seed offset sd 0.04), so picking the best is
    genuinely uncertain.
    """
    image_effect = rng.normal(0.0, 0.15, (len(FAMILIES), N_IMAGES))  # test-set noise, shared by all trials
    image = np.arange(N_IMAGES, dtype=np.int32)
    trials = []
    for ratio in GRID:
        interaction = rng.normal(0.0, 0.03, (len(FAMILIES), N_IMAGES))  # how this ratio's models differ per image
        for seed in range(SEEDS):
            arrays = {}
            for j, family in enumerate(FAMILIES):
                truth = 0.5 - 0.4 * (ratio - TRUE_OPTIMUM[family]) ** 2
                ap = truth + image_effect[j] + interaction[j] + rng.normal(0.0, 0.04) + rng.normal(0.0, 0.1, N_IMAGES)
                key = f"multilingual.t2t.{SIM_LANGS[family]}"
                arrays[key], arrays[key + "@image"] = np.clip(ap, 0.0, 1.0).astype(np.float32), image
            trials.append(TrialQueries(f"r{ratio}-s{seed}", ratio, seed, arrays))
    return trials


def test_plausible_optimum_set_covers_the_true_optimum():
    rng = np.random.default_rng(2024)
    covered, widths, sizes, wrong_best, covered_when_wrong = [], [], [], 0, 0
    n_studies = 60
    for k in range(n_studies):
        best = {(b["setting"], b["family"]): b for b in best_ratios(simulated_study(rng), n_resamples=200, seed=k)}
        for family in FAMILIES:
            b = best["multilingual", family]
            truth = TRUE_OPTIMUM[family]
            hit = b["set_low"] <= truth <= b["set_high"] and truth in b["plausible"]
            covered.append(hit)
            widths.append(b["set_high"] - b["set_low"])
            sizes.append(len(b["plausible"]))
            if b["best_ratio"] != truth:
                wrong_best += 1
                covered_when_wrong += hit
    coverage = float(np.mean(covered))
    print(f"coverage {coverage:.3f} over {len(covered)} family-studies; median width {np.median(widths):.2f}; "
          f"full-range sets {np.mean(np.array(sizes) == len(GRID)):.3f}; best != truth in {wrong_best} "
          f"(covered in {covered_when_wrong})")
    assert coverage >= 0.90
    # not trivial: the sets are usually narrower than the grid, and picking the best is hard
    assert np.median(widths) < 1.0
    assert np.mean(np.array(sizes) == len(GRID)) < 0.25
    assert np.mean(np.array(sizes) == 1) < 0.9
    assert wrong_best >= 0.1 * len(covered)  # the truth is often not the observed best: the sets do the work


# ---------------------------------------------------------------------------
# Paired and unpaired differences, resolution, hypotheses
# ---------------------------------------------------------------------------
def _trials(values: dict) -> list:
    """TrialQueries whose every AP is its value (no test-set spread): {(ratio, seed): value}."""
    return [TrialQueries(f"r{r}-s{s}", r, s, tiny_arrays(shift=v)) for (r, s), v in values.items()]


def test_a_shared_seed_is_paired_and_a_duplicate_is_averaged():
    # ratio 1 is ratio 0 + 0.01 on every seed, with a large seed effect: paired, the difference is exact
    seed_effect = {0: 0.0, 1: 0.2, 2: -0.1}
    values = {(0.0, s): e for s, e in seed_effect.items()} | {(1.0, s): e + 0.01 for s, e in seed_effect.items()}
    d = _difference(_analyse(_trials(values), 50, 0), 1.0, 0.0, "multilingual", "i2t+t2t", 0.95)
    assert d.paired and d.n == 3 and d.diff == pytest.approx(0.01, abs=1e-6) and d.halfwidth < 1e-6
    trials = _trials(values) + [TrialQueries("dup", 1.0, 0, tiny_arrays(shift=0.01))]  # seed 0 twice at ratio 1
    d = _difference(_analyse(trials, 50, 0), 1.0, 0.0, "multilingual", "i2t+t2t", 0.95)
    assert d.paired and d.n == 3 and d.diff == pytest.approx(0.01, abs=1e-6)


def test_a_single_seed_borrows_the_other_sides_spread():
    values = {(0.0, 0): 0.0, (0.0, 1): 0.1, (0.0, 2): 0.2, (1.0, 7): 0.1}  # no shared seed
    d = _difference(_analyse(_trials(values), 50, 0), 1.0, 0.0, "multilingual", "i2t+t2t", 0.95)
    assert not d.paired and d.diff == pytest.approx(0.0, abs=1e-6)
    # var 0.01 * (1 + 1/3), t at 2 df
    assert d.halfwidth == pytest.approx(4.302653 * (0.01 * 4 / 3) ** 0.5, rel=1e-4)


def test_seeds_needed_follows_the_t_interval_and_knows_when_seeds_cannot_help():
    from scipy import stats

    n = seeds_needed(0.03, 0.0, 0.02)
    assert stats.t.ppf(0.975, n - 1) * 0.03 / n ** 0.5 <= 0.02 < stats.t.ppf(0.975, n - 2) * 0.03 / (n - 1) ** 0.5
    assert seeds_needed(0.03, 0.011, 0.02) is None  # 1.96 x 0.011 > 0.02: the test set alone is wider


def test_the_hypotheses_read_supported_contradicted_or_not_testable():
    def lines(levels):
        values = {(r, s): v + 0.001 * s for r, v in levels.items() for s in range(3)}
        return _hypotheses(_analyse(_trials(values), 50, 0), 0.95)

    supported = lines({0.0: 0.1, 0.5: 0.2, 1.0: 0.1})
    assert "(a) hybrid beats both ends on the objective: supported" in supported[1]
    contradicted = lines({0.0: 0.3, 0.5: 0.2, 1.0: 0.1})
    assert "(a) hybrid beats both ends on the objective: contradicted" in contradicted[1]
    untestable = lines({0.0: 0.3, 0.5: 0.2})
    assert "not testable (ratio 1 was not tried)" in untestable[1]


def test_a_nan_interval_excludes_nothing():
    assert not Difference(float("nan"), float("nan"), float("nan"), True, 2, 0.0, 0.0).excludes_zero
