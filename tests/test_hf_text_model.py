"""The HF-text-tower path, offline: a tiny XLM-R config and a BPE tokenizer trained here, loaded the
open_clip way (CustomTextCLIP with hf_model_name = the local folder, pretrained_text=False)."""

import math

import pytest
import torch

from trainables.config import ConfigError, TrialConfig
from trainables.model import ModelBuildError, build_model

SENTENCES = ["a big red circle", "ein großer roter Kreis", "un grand cercle rouge", "un gran círculo rojo",
             "大きな赤い丸", "큰 빨간 원", "duże czerwone koło", "большой красный круг",
             "büyük kırmızı daire", "一个大红圈", "un grande cerchio rosso", "two small blue squares",
             "zwei kleine blaue Quadrate"]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A 2-layer XLM-R config and a byte-level BPE tokenizer, saved as an HF model folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig

    folder = tmp_path_factory.mktemp("tiny-xlmr")
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # XLM-R's ids: pad=1
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(SENTENCES * 5, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A </s>",
                                                             special_tokens=[("<s>", 0), ("</s>", 2)])
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="<pad>", mask_token="<mask>", cls_token="<s>",
                            sep_token="</s>").save_pretrained(folder)
    XLMRobertaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=80,
                     pad_token_id=1, bos_token_id=0, eos_token_id=2).save_pretrained(folder)
    return str(folder)


def test_tiny_vision_with_hf_text_tower_trains_one_step(hf_folder):
    from trainables.loss import make_clip_loss
    from trainables.train import build_optimizer

    config = TrialConfig(hf_text_model=hf_folder, lock_text_layers=1, grad_checkpointing=True)
    bundle = build_model(config)
    model = bundle.model
    assert type(model).__name__ == "CustomTextCLIP" and type(model.text).__name__ == "HFTextEncoder"
    tokens = bundle.tokenize(SENTENCES[:4])
    assert tokens.shape == (4, bundle.context_length) and tokens[0, 0] == 0 and tokens[0, -1] == 1  # <s> .. <pad>
    assert not model.text.transformer.encoder.layer[0].attention.self.query.weight.requires_grad  # locked
    assert model.text.transformer.encoder.layer[1].attention.self.query.weight.requires_grad
    images = bundle.image_transform(torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8))
    optimizer, _ = build_optimizer(model, config, total_steps=1)
    before = model.text.proj[0].weight.detach().clone()
    out = model(images, tokens)
    loss = make_clip_loss()(out["image_features"], out["text_features"], out["logit_scale"])
    loss.backward()
    optimizer.step()
    assert math.isfinite(loss.item()) and not torch.equal(before, model.text.proj[0].weight)


def test_vit_b_32_with_hf_text_tower_forward(hf_folder):
    bundle = build_model(TrialConfig(model="ViT-B-32", hf_text_model=hf_folder))
    assert bundle.image_size == 224 and bundle.context_length == 77
    out = bundle.model(bundle.image_transform(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)),
                       bundle.tokenize(SENTENCES[:2]))
    assert out["image_features"].shape == out["text_features"].shape == (2, 512)


def test_trial_runs_and_checkpoint_loads_weights_only(hf_folder, tiny_config, tmp_path):
    from trainables.session import load_checkpoint
    from trainables.train import run_local

    reports = run_local(tiny_config.replace(hf_text_model=hf_folder, epochs=1, steps_per_epoch=2),
                        checkpoint_dir=tmp_path)
    assert math.isfinite(reports[0]["train/loss"])
    state = load_checkpoint(tmp_path)  # torch.load(weights_only=True)
    assert any(key.startswith("text.transformer.") for key in state["model"])


def test_unreachable_hub_name_is_one_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelBuildError, match=r"hf_text_model='mlclip-offline-test/no-such-model': not a local "
                                              r"folder, and the Hugging Face hub could not provide it"):
        build_model(TrialConfig(hf_text_model="mlclip-offline-test/no-such-model"))


def test_bad_hf_text_model_values(tmp_path):
    with pytest.raises(ConfigError, match="folder has no config.json"):
        build_model(TrialConfig(hf_text_model=str(tmp_path)))
    with pytest.raises(ConfigError, match="hf_text_model='': must be a local HF model folder"):
        TrialConfig(hf_text_model="")
    with pytest.raises(ConfigError, match="pretrained='openai': a pretrained tag loads a whole CLIP"):
        TrialConfig(model="ViT-B-32", pretrained="openai", hf_text_model="xlm-roberta-base")
