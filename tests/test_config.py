"""TrialConfig: validation gives one clear line naming the field; round trips are exact."""

import pytest

from trainables.config import ConfigError, TrialConfig
from trainables.languages import LANGUAGES, canonical_language, family_of, languages_in


def test_defaults_are_valid_and_round_trip():
    cfg = TrialConfig()
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.train_languages == LANGUAGES


@pytest.mark.parametrize("ratio", [-0.1, 1.5, float("nan")])
def test_ratio_outside_unit_interval(ratio):
    with pytest.raises(ConfigError, match=r"ratio=.*\[0, 1\]"):
        TrialConfig(ratio=ratio)


def test_unknown_language_code_named():
    with pytest.raises(ConfigError, match="unknown language code 'xx'"):
        TrialConfig(train_languages=("en", "xx"))


def test_jp_maps_to_ja_and_strings_are_split():
    assert TrialConfig(train_languages="en, jp").train_languages == ("en", "ja")


@pytest.mark.parametrize("batch,workers", [(1, 2), (63, 2), (10, 4)])
def test_batch_must_split_evenly_over_workers(batch, workers):
    with pytest.raises(ConfigError, match=f"batch_size={batch} must be at least num_workers={workers} and divisible"):
        TrialConfig(batch_size=batch, num_workers=workers)


def test_unknown_field_rejected():
    with pytest.raises(ConfigError, match="unknown trial config field.*ratoi"):
        TrialConfig.from_dict({"ratoi": 0.5})


def test_bad_choice_lists_allowed_values():
    with pytest.raises(ConfigError, match="mode='sometimes': must be one of per_batch, within_batch"):
        TrialConfig(mode="sometimes")


def test_config_is_frozen_and_replace_validates():
    cfg = TrialConfig()
    with pytest.raises(Exception):
        cfg.ratio = 0.3  # type: ignore[misc]
    assert cfg.replace(ratio=0.25).ratio == 0.25
    with pytest.raises(ConfigError):
        cfg.replace(temperature=0.0)


def test_language_table():
    assert canonical_language("jp") == "ja"
    assert family_of("pl") == "slavic"
    assert languages_in("romance") == ("fr", "es", "it")
    assert len(LANGUAGES) == 11


def test_every_field_is_described():
    from dataclasses import fields

    from trainables.config import FIELD_DOCS, describe_fields

    assert set(FIELD_DOCS) == {f.name for f in fields(TrialConfig)}
    rows = describe_fields()
    assert rows[0][:3] == ("ratio", "float", "0.5") and all(row[3] for row in rows)


@pytest.mark.parametrize("changes", [{"ratio": True}, {"batch_size": True}, {"lr": False}, {"epochs": 2.0}])
def test_a_bool_or_float_is_not_an_integer_or_number_setting(changes):
    with pytest.raises(ConfigError, match=list(changes)[0]):
        TrialConfig(**changes)


@pytest.mark.parametrize("value", [{0: None}, (0,), ["en", 3], 7])
def test_train_languages_must_be_codes(value):
    """Found by the CLI fuzz pass: ``--set train_languages={0}`` reached canonical_language as an int."""
    with pytest.raises(ConfigError, match="train_languages=.*expected language codes"):
        TrialConfig(train_languages=value)
