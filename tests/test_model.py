"""Model construction through open_clip, offline."""

import math

import pytest
import torch

from trainables.config import ConfigError, TrialConfig
from trainables.model import build_model


def test_tiny_model_builds_offline_with_temperature():
    bundle = build_model(TrialConfig(temperature=0.05, learn_temperature=False))
    model = bundle.model
    assert math.isclose(float(model.logit_scale.exp()), 20.0, rel_tol=1e-5)
    assert not model.logit_scale.requires_grad
    tokens = bundle.tokenize(["ein großer roter Kreis", "大きな赤い丸", "큰 빨간 원"])
    assert tokens.shape == (3, bundle.context_length) and tokens.dtype == torch.long
    images = bundle.image_transform(torch.full((3, 3, 40, 40), 255, dtype=torch.uint8))
    assert images.shape == (3, 3, bundle.image_size, bundle.image_size)
    out = model(images, tokens)
    assert out["image_features"].shape == out["text_features"].shape == (3, 128)


def test_lock_image_tower_and_text_layers():
    model = build_model(TrialConfig(lock_image=True, lock_text_layers=1)).model
    assert not any(p.requires_grad for p in model.visual.parameters())
    assert not model.token_embedding.weight.requires_grad
    blocks = model.transformer.resblocks
    assert not any(p.requires_grad for p in blocks[0].parameters())
    assert all(p.requires_grad for p in blocks[1].parameters())


def test_unknown_model_name_is_one_clear_error():
    with pytest.raises(ConfigError, match="model='ViT-Nope': open_clip does not know this model"):
        build_model(TrialConfig(model="ViT-Nope"))


def test_unknown_pretrained_tag_lists_available_tags():
    with pytest.raises(ConfigError, match="pretrained='no_such_tag': no such tag for model 'ViT-B-32'; available: .*openai"):
        build_model(TrialConfig(model="ViT-B-32", pretrained="no_such_tag"))


def test_too_many_locked_text_layers():
    with pytest.raises(ConfigError, match="lock_text_layers=5: the text tower has only 2 layers"):
        build_model(TrialConfig(lock_text_layers=5))
