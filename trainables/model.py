"""Model construction: every model, tiny or real, is built through open_clip.

``config.model == "tiny"`` maps to the ``mlclip-tiny`` open_clip config shipped in
``trainables/model_configs`` (random init, no network); its text tower is sized to the
trial's tokenizer (:mod:`trainables.tokenizer`: the corpus tokenizer by default, or
open_clip's BPE). Any other name is an open_clip model name, optionally with a
``pretrained`` tag or local checkpoint file, and uses that model's own tokenizer.

The returned :class:`ModelBundle` holds the model plus two pure functions the loop
and the evaluation share:

* ``tokenize(list[str]) -> LongTensor [B, context_length]``
* ``image_transform(uint8 [B, 3, H, W]) -> float [B, 3, S, S]`` (resize to the
  model's input size S if needed, scale to [0, 1], normalise with the model's mean/std).
"""

from __future__ import annotations

import logging
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from trainables import tokenizer as tk
from trainables.config import ConfigError, TrialConfig
from trainables.data.sources import load_train_set
from trainables.data.synthetic import cache_root
from trainables.loss import set_logit_scale_
from trainables.tokenizer import TextTokenizer

TINY_NAME = "mlclip-tiny"
_CONFIG_DIR = Path(__file__).with_name("model_configs")


class ModelBuildError(RuntimeError):
    """The model named in the config cannot be built (unknown name, missing weights, offline)."""


@dataclass
class ModelBundle:
    model: torch.nn.Module
    tokenize: Callable[[list[str]], torch.Tensor]
    image_transform: Callable[[torch.Tensor], torch.Tensor]
    image_size: int
    context_length: int
    tokenizer: TextTokenizer


def _register_local_configs() -> None:
    import open_clip

    if TINY_NAME not in open_clip.list_models():
        open_clip.add_model_config(_CONFIG_DIR)


def resolve_model_name(config: TrialConfig) -> str:
    """open_clip model name for ``config.model`` (``tiny`` -> ``mlclip-tiny``), validated."""
    import open_clip

    _register_local_configs()
    name = TINY_NAME if config.model == "tiny" else config.model
    if name not in open_clip.list_models() and not name.startswith(("hf-hub:", "local-dir:")):
        raise ConfigError(f"model={config.model!r}: open_clip does not know this model (see open_clip.list_models())")
    if config.pretrained and not _is_local_file(config.pretrained):
        tags = open_clip.list_pretrained_tags_by_model(name)
        if config.pretrained not in tags:
            raise ConfigError(
                f"pretrained={config.pretrained!r}: no such tag for model {name!r}; "
                f"available: {', '.join(tags) or 'none'} (or give a local checkpoint file)"
            )
    return name


def _is_local_file(value: str) -> bool:
    return os.path.sep in value or value.endswith((".pt", ".pth", ".bin", ".safetensors"))


def make_tokenizer(config: TrialConfig, captions=None, digest=None) -> TextTokenizer:
    """The text tokenizer of ``config`` (``config.text_tokenizer``).

    ``corpus`` is trained on ``captions`` (rows of {language: caption}; default: the captions of
    ``config``'s training split), once, and cached (:func:`trainables.tokenizer.build_corpus_tokenizer`);
    ``digest``: their :func:`~trainables.tokenizer.captions_digest`, if the caller has it.
    """
    name = resolve_model_name(config)
    kind = config.text_tokenizer
    if kind == "corpus":
        if captions is None:
            captions = load_train_set(config)[0].captions
        folder = tk.build_corpus_tokenizer(cache_root(config), captions, config.tokenizer_vocab,
                                           digest if captions is not None else None)
        return tk.load_corpus_tokenizer(folder, config.context_length)
    if kind == "openclip_bpe":
        return tk.openclip_bpe(name, config.context_length)
    if config.hf_text_model:
        _check_hf_text_model(config.hf_text_model)  # one clear line before the tokenizer tries the hub
    tokenizer = _get_tokenizer(config, name)
    context = int(getattr(tokenizer, "context_length", 77))
    return TextTokenizer(tokenize=lambda texts: tokenizer(list(texts)), count=lambda texts: [0] * len(texts),
                         vocab_size=0, context_length=context, eos_id=None, name="model", key=f"model-{name}-c{context}")


def _tiny_text_cfg(name: str, tok: TextTokenizer) -> dict:
    """The tiny model's text tower sized to ``tok``: its vocabulary, context, and pooling at ``<eos>``."""
    import open_clip

    text_cfg = dict(open_clip.get_model_config(name)["text_cfg"])
    text_cfg.update(vocab_size=tok.vocab_size, context_length=tok.context_length)
    if tok.eos_id is not None:
        text_cfg.update(pool_type="eos", eos_id=tok.eos_id, pad_id=0)
    return {"text_cfg": text_cfg}


def build_model(config: TrialConfig, device: torch.device | str = "cpu",
                tokenizer: TextTokenizer | None = None) -> ModelBundle:
    """Build the model, tokenizer and image transform for ``config``.

    ``tokenizer``: the trial's :class:`~trainables.tokenizer.TextTokenizer` (default
    :func:`make_tokenizer` of ``config``); the tiny model's text tower is sized to it.

    The initial temperature becomes ``logit_scale = log(1 / temperature)``; with
    ``learn_temperature=False`` the logit scale is frozen. Tower locking and gradient
    checkpointing follow the config. Raises :class:`ModelBuildError` with the model
    name when weights are needed but cannot be obtained (e.g. offline).
    """
    import open_clip

    name = resolve_model_name(config)
    tok = tokenizer or make_tokenizer(config)
    if config.hf_text_model:
        text_tower = hf_text_tower_kwargs(config, name)
    else:  # the tiny tower is sized to its tokenizer; a named model keeps its own
        text_tower = _tiny_text_cfg(name, tok) if config.is_tiny else {}
    try:
        with _quiet_random_init(expected=not config.pretrained):
            model = open_clip.create_model(
                name,
                pretrained=config.pretrained,
                device=device,
                output_dict=True,
                pretrained_text=False,  # never fetch base text weights implicitly
                init_logit_scale=math.log(1.0 / config.temperature),
                **text_tower,
            )
    except Exception as err:  # open_clip raises many types for missing/offline weights
        what = f"{name}" + (f" with pretrained={config.pretrained!r}" if config.pretrained else "")
        raise ModelBuildError(f"cannot build model {what}: {type(err).__name__}: {err}") from err
    # a loaded checkpoint carries its own temperature: every model starts from the trial's
    set_logit_scale_(model.logit_scale, config.temperature, config.learn_temperature)
    _apply_locks(model, config)
    mean, std, size = _preprocess_stats(model)
    return ModelBundle(
        model=model,
        tokenize=tok.tokenize,
        image_transform=make_image_transform(mean, std, size),
        image_size=size,
        context_length=tok.context_length,
        tokenizer=tok,
    )


# --- real-scale model: an HF text tower (config.hf_text_model) ---------------------
def _hf_context_length(name: str) -> int:
    import open_clip

    return int(((open_clip.get_model_config(name) or {}).get("text_cfg") or {}).get("context_length", 77))


def _check_hf_text_model(source: str) -> None:
    """A local folder must hold an HF config; a hub name must be reachable. One clear error otherwise."""
    from transformers import AutoConfig

    if Path(source).exists():
        if not (Path(source) / "config.json").is_file():
            raise ConfigError(f"hf_text_model={source!r}: folder has no config.json (an HF model folder needs "
                              "config.json and the tokenizer files)")
        return
    try:
        AutoConfig.from_pretrained(source)
    except Exception as err:  # OSError offline, ValueError/HTTP errors for unknown names
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ModelBuildError(
            f"hf_text_model={source!r}: not a local folder, and the Hugging Face hub could not provide it "
            f"({type(err).__name__}: {first}); fetch it where the hub is reachable and pass the local folder"
        ) from err


def hf_text_tower_kwargs(config: TrialConfig, name: str) -> dict:
    """``open_clip.create_model`` kwargs swapping in ``config.hf_text_model`` (none without it).

    The tower is random-initialised (``hf_model_pretrained=False``), mean-pooled and MLP-projected
    to the vision model's ``embed_dim``; the context length is the named model's.
    """
    if not config.hf_text_model:
        return {}
    _check_hf_text_model(config.hf_text_model)
    return {
        "force_custom_text": True,
        "text_cfg": {
            "hf_model_name": config.hf_text_model,
            "hf_tokenizer_name": config.hf_text_model,
            "hf_model_pretrained": False,
            "hf_pooler_type": "mean_pooler",
            "hf_proj_type": "mlp",
            "context_length": _hf_context_length(name),
        },
    }


def _get_tokenizer(config: TrialConfig, name: str):
    import open_clip

    if not config.hf_text_model:
        return open_clip.get_tokenizer(name)
    from open_clip.tokenizer import HFTokenizer

    return HFTokenizer(config.hf_text_model, context_length=_hf_context_length(name))


@contextmanager
def _quiet_random_init(expected: bool):
    """Hide open_clip's 'initialized randomly' warning when random init is what was asked for."""
    root = logging.getLogger()
    level = root.level
    if expected:
        root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _apply_locks(model: torch.nn.Module, config: TrialConfig) -> None:
    if config.lock_image:
        model.lock_image_tower(unlocked_groups=0, freeze_bn_stats=True)
    if config.lock_text_layers:
        _lock_lower_text_layers(model, config.lock_text_layers)
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)


def _lock_lower_text_layers(model: torch.nn.Module, n_layers: int) -> None:
    """Freeze the token/position embeddings and the lowest ``n_layers`` text blocks."""
    if hasattr(model, "text") and hasattr(model.text, "transformer"):  # CustomTextCLIP / HF tower
        hf = model.text.transformer
        embeddings = getattr(hf, "embeddings", None)
        blocks = list(getattr(getattr(hf, "encoder", None), "layer", []))
    else:  # plain CLIP text tower
        embeddings = torch.nn.ModuleList([model.token_embedding])
        model.positional_embedding.requires_grad_(False)
        blocks = list(model.transformer.resblocks)
    if n_layers > len(blocks):
        raise ConfigError(f"lock_text_layers={n_layers}: the text tower has only {len(blocks)} layers")
    if embeddings is not None:
        embeddings.requires_grad_(False)
    for block in blocks[:n_layers]:
        block.requires_grad_(False)


def _preprocess_stats(model: torch.nn.Module) -> tuple[tuple, tuple, int]:
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)))
    std = tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)))
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return mean, std, size


def make_image_transform(mean: tuple, std: tuple, size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 [B, 3, H, W] on any device -> normalised float [B, 3, size, size] on that device."""
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)

    def transform(images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255.0)
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return (x - mean_t.to(x.device)) / std_t.to(x.device)

    return transform
