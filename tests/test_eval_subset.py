"""Intermediate evaluations on the first images of the test split, the final one on all of them.

``TrialConfig.intermediate_eval_images`` (validated like every field), ``trainables.train.first_images``,
and what ``train_worker`` evaluates at each epoch: the same metric names before and after the last
epoch, the per-query arrays (the study's answer) from the whole split only.
"""

from __future__ import annotations

import pytest
import torch

from trainables.config import ConfigError, TrialConfig
from trainables.data.types import ImageCaptionSet


def _set(n: int) -> ImageCaptionSet:
    images = torch.arange(n * 3 * 4 * 4, dtype=torch.int64).remainder(251).to(torch.uint8).view(n, 3, 4, 4)
    captions = [{"en": f"caption {i}", "de": f"Bild {i}"} for i in range(n)]
    return ImageCaptionSet(images, captions, [f"img_{i:03d}.png" for i in range(n)], {"missing_images": 2})


def test_first_images_are_the_first_n_in_order_every_time():
    from trainables.train import first_images

    full = _set(12)
    first, again = first_images(full, 5), first_images(full, 5)
    assert first.names == again.names == full.names[:5]
    assert first.captions == full.captions[:5]
    assert torch.equal(first.images, full.images[:5]) and torch.equal(first.images, again.images)
    assert first.skipped == full.skipped
    assert len(first_images(full, 1)) == 1 and first_images(full, 1).names == ["img_000.png"]


@pytest.mark.parametrize("n", [None, 12, 13, 1000])
def test_first_images_is_the_whole_set_when_n_covers_it(n):
    from trainables.train import first_images

    full = _set(12)
    assert first_images(full, n) is full


def test_the_default_is_a_subset_of_the_default_test_split():
    config = TrialConfig()
    assert config.intermediate_eval_images is not None
    assert 1 <= config.intermediate_eval_images < config.synthetic_test_size


@pytest.mark.parametrize("value", [1, 150, None])
def test_intermediate_eval_images_accepts_positive_integers_and_none(value):
    assert TrialConfig(intermediate_eval_images=value).intermediate_eval_images == value


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "100", float("nan")])
def test_intermediate_eval_images_refuses_other_values(value):
    with pytest.raises(ConfigError, match="intermediate_eval_images"):
        TrialConfig(intermediate_eval_images=value)


def test_intermediate_eval_images_is_a_known_field_with_a_description():
    from trainables.config import FIELD_DOCS, describe_fields

    assert "intermediate_eval_images" in FIELD_DOCS
    assert any(name == "intermediate_eval_images" for name, *_ in describe_fields())
    assert TrialConfig.from_dict({"intermediate_eval_images": 20}).intermediate_eval_images == 20


def test_intermediate_evaluations_use_the_first_images_and_the_last_uses_all(tiny_config, monkeypatch):
    """3 epochs evaluated at every epoch: epochs 1 and 2 on the first 10 of 64 test images, epoch 3 on all 64,
    with the same metric names, and per-query arrays only from the last (over all 64 images)."""
    from trainables import train

    calls = []
    real_evaluate = train.evaluate

    def recording_evaluate(model, bundle, eval_set, config, device, per_query=None):
        metrics = real_evaluate(model, bundle, eval_set, config, device, per_query)
        calls.append({"names": list(eval_set.names), "per_query": per_query})
        return metrics

    monkeypatch.setattr(train, "evaluate", recording_evaluate)
    config = tiny_config.replace(epochs=3, steps_per_epoch=2, eval_every=1, intermediate_eval_images=10)
    reports = train.run_local(config)

    assert len(calls) == 3
    full_names = calls[-1]["names"]
    assert len(full_names) == config.synthetic_test_size == 64
    assert calls[0]["names"] == calls[1]["names"] == full_names[:10]
    assert [r["eval/images"] for r in reports] == [10.0, 10.0, 64.0]
    assert calls[0]["per_query"] is None and calls[1]["per_query"] is None
    per_query = calls[-1]["per_query"]
    assert per_query and sorted(set(per_query["multilingual.i2t@image"].tolist())) == list(range(64))

    def evaluation_names(report):
        return {k for k in report if k.startswith(("map", "recall", "bias/", "eval/"))}

    assert evaluation_names(reports[0]) == evaluation_names(reports[1]) == evaluation_names(reports[2])
    assert len(evaluation_names(reports[0])) > 100


def test_a_subset_evaluation_reports_what_an_evaluation_of_those_images_reports(tiny_config):
    """The intermediate metrics are the evaluation of exactly the first N images (no other image counts)."""
    from trainables.model import build_model, make_tokenizer
    from trainables.train import evaluate, first_images, load_datasets

    config = tiny_config.replace(intermediate_eval_images=16)
    train_raw, eval_set = load_datasets(config)
    torch.manual_seed(0)
    bundle = build_model(config, tokenizer=make_tokenizer(config, train_raw.captions))
    subset = first_images(eval_set, config.intermediate_eval_images)
    by_hand = ImageCaptionSet(eval_set.images[:16].clone(), eval_set.captions[:16], eval_set.names[:16], {})
    got = evaluate(bundle.model, bundle, subset, config, torch.device("cpu"))
    want = evaluate(bundle.model, bundle, by_hand, config, torch.device("cpu"))
    full = evaluate(bundle.model, bundle, eval_set, config, torch.device("cpu"))
    for name in ("map10/multilingual", "map10/monolingual", "bias/multilingual"):
        assert got[name] == pytest.approx(want[name], abs=1e-6)
    assert got["eval/images"] == 16.0 and full["eval/images"] == 64.0
    assert got["map10/multilingual"] != full["map10/multilingual"]
