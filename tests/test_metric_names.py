"""The metric-name registry, the trial CSV's column order, and the in-trial progress line."""

from __future__ import annotations

import csv
import io
import math

import pytest

from study.results import COMPLETED, TrialRecord, write_csv
from trainables import metric_names as names
from trainables.languages import FAMILIES
from trainables.config import TrialConfig
from trainables.progress import StepProgress, epoch_progress, format_duration


# --- the registry ------------------------------------------------------------------------------
def test_headlines_are_few_short_and_unambiguous():
    logged = [h.logged for h in names.HEADLINES]
    sources = [h.source for h in names.HEADLINES]
    assert 40 <= names.MAX_LOGGED_METRICS <= 60
    assert len(set(logged)) == len(logged) and len(set(sources)) == len(sources)
    assert all(len(name) <= 15 for name in logged), [n for n in logged if len(n) > 15]  # fits a UI column header
    # a short name never means another headline's source (either name resolves to one metric)
    assert not {h.logged for h in names.HEADLINES if h.logged != h.source} & set(sources)
    assert not set(logged) & set(names.SEARCHED_PARAMS)


def test_known_names_map_both_ways():
    assert names.logged_name("map100/multilingual/family/sinitic") == "multi/sinitic"
    assert names.source_name("multi/sinitic") == "map100/multilingual/family/sinitic"
    assert names.logged_name(names.TARGET_METRIC) == "multi" and names.logged_name(names.BIAS_METRIC) == "bias"
    assert names.source_name("recall5/multilingual") == "recall5/multilingual"  # no headline: kept
    for f in FAMILIES:
        assert names.source_name(names.logged_name(names.FAMILY_METRIC.format(f))) == names.FAMILY_METRIC.format(f)


def test_tune_results_carry_both_names_and_records_only_the_sources():
    reported = {"map100/multilingual": 0.2, "map100/crosslingual/pair/en-de": 0.1, "train/loss": 3.0}
    both = names.with_logged_aliases(reported)
    assert both["multi"] == 0.2 and both["map100/multilingual"] == 0.2
    assert names.to_source_names(both) == reported
    assert names.to_source_names({"multi": 0.2, "ratio": 0.5}) == {"map100/multilingual": 0.2, "ratio": 0.5}
    kept = names.headline_metrics(reported, keep=("recall5/multilingual", "map100/crosslingual/pair/en-de"))
    assert kept == {"multi": 0.2, "train/loss": 3.0, "map100/crosslingual/pair/en-de": 0.1}


def test_every_headline_is_reported_by_a_real_trial(tiny_config):
    """The registry names what the loop reports: a renamed metric in evaluate/train fails here."""
    from trainables.train import run_local

    report = run_local(tiny_config.replace(epochs=1, steps_per_epoch=4, eval_k=100))[-1]
    missing = [h.source for h in names.HEADLINES if h.source not in report]
    assert not missing
    assert all(math.isfinite(report[h.source]) for h in names.HEADLINES)


def test_the_definitions_name_every_headline_and_explain_multi():
    text = names.definitions_markdown()
    assert all(f"`{h.logged}`" in text for h in names.HEADLINES)
    assert "not the mean of the families" in text and "metrics.ratio < 0.1" in text


# --- the trial CSV -----------------------------------------------------------------------------
def test_the_trial_csv_starts_with_the_searched_params_and_the_headlines(tmp_path):
    metrics = {names.FAMILY_METRIC.format(f): 0.1 for f in FAMILIES}
    metrics.update({"map100/multilingual": 0.2, "bias/multilingual": 30.0, "map100/crosslingual/pair/en-de": 0.05})
    params = {"allow_missing_images": False, "ratio": 0.25, "temperature": 0.07, "batch_size": 64, "seed": 1, "epochs": 2}
    path = write_csv([TrialRecord("t1", COMPLETED, params, metrics, 2)], tmp_path / "trials.csv")
    with path.open(newline="") as f:
        header, row = list(csv.reader(f))
    assert header[:5] == ["trial_id", "ratio", "temperature", "batch_size", "seed"]
    assert header[5] == "multi" and header[5:13] == ["multi", *(f"multi/{f}" for f in FAMILIES)]
    assert header.index("bias") < header.index("status") < header.index("allow_missing_images")
    assert header[-1] == "map100/crosslingual/pair/en-de" and row[1] == "0.25"


# --- progress inside a trial -------------------------------------------------------------------
class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_writes_a_line_every_interval_with_eta():
    clock, out = _Clock(), io.StringIO()
    progress = StepProgress("r=0.02 s=1", epoch=0, epochs=2, steps=100, batch_size=64, every_s=10, stream=out, clock=clock)
    for step in range(1, 101):
        clock.now = step * 0.5  # 2 steps per second
        progress.update(step, loss_sum=3.0 * step)
    progress.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 5  # at 10, 20, 30, 40, 50 s
    assert lines[0] == "r=0.02 s=1 epoch=1/2 step=20/100 loss=3.000 samples/s=128.0 eta=1m30s"
    # Ray folds lines equal once words with digits are dropped; every word here has one
    assert all(any(c.isdigit() for c in word) for line in lines for word in line.split())


def test_progress_is_silent_off_rank_zero_and_when_switched_off():
    out = io.StringIO()
    for progress in (StepProgress("x1", 0, 1, 10, 8, enabled=False, every_s=0.0, stream=out),
                     StepProgress("x1", 0, 1, 10, 8, every_s=0.0, stream=out)):
        for step in range(1, 11):
            progress.update(step, 1.0)
    assert epoch_progress(TrialConfig(progress_every_s=0), 0, 10, rank=0).enabled is False
    assert epoch_progress(TrialConfig(progress_every_s=5), 0, 10, rank=0).every_s == 5
    assert epoch_progress(TrialConfig(), 0, 10, rank=1).enabled is False
    assert out.getvalue() == ""


@pytest.mark.parametrize("seconds, text", [(9, "9s"), (75, "1m15s"), (3725, "1h02m")])
def test_durations_read_well(seconds, text):
    assert format_duration(seconds) == text
