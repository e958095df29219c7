"""The memory estimate checked before a study starts (trainables/memory.py): a lower bound."""

from __future__ import annotations

import open_clip
import pytest

from study import run as study_run
from trainables.config import TrialConfig
from trainables.data.synthetic import generate_synthetic
from trainables.memory import counted_parameters, estimate_worker_memory, gib
from trainables.model import build_model, resolve_model_name


def _model_cfg(config: TrialConfig) -> dict:
    return open_clip.get_model_config(resolve_model_name(config))


def _estimate(**fields):
    config = TrialConfig(**fields)
    return estimate_worker_memory(config, _model_cfg(config), True)


def test_the_data_part_is_the_bytes_the_synthetic_images_take():
    estimate = _estimate(synthetic_train_size=12, synthetic_test_size=5, image_size=16)
    train, test = generate_synthetic(12, 5, image_size=16)
    assert estimate.data == sum(split.images.numel() * split.images.element_size() for split in (train, test))


def test_the_counted_parameters_are_a_floor_of_the_built_model():
    """The layers counted are most of the tiny model, and never more than it holds."""
    config = TrialConfig()
    model = build_model(config).model
    held = sum(p.numel() for p in model.parameters())
    assert 0.5 * held < counted_parameters(_model_cfg(config)) <= held


@pytest.mark.parametrize("field, small, large", [("image_size", 32, 64), ("synthetic_test_size", 100, 1000),
                                                 ("synthetic_train_size", 100, 1000), ("batch_size", 16, 64)])
def test_the_estimate_grows_with_every_size_it_counts(field, small, large):
    assert _estimate(**{field: small}).total < _estimate(**{field: large}).total


def test_the_default_trial_is_far_from_a_laptop_s_memory():
    assert _estimate().total < 2**30


def test_sizes_read_in_binary_units():
    assert (gib(2**30), gib(5 * 2**40), gib(3 * 2**60)) == ("1.0 GiB", "5.0 TiB", "3.0 EiB")


def test_one_language_without_a_ratio_search_is_a_note_not_a_refusal(here, capsys):
    (here / "t.yaml").write_text("params: {temperature: {type: loguniform, low: 0.03, high: 0.2}}\n")
    assert study_run.main(["--space", "t.yaml", "--set", "train_languages=[en]", "--dry-run"]) == 0
    assert "note: train_languages=['en']: with one training language every batch is monolingual" in capsys.readouterr().out
