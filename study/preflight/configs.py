"""Checks of the trial configs a study can produce: each one a valid TrialConfig, the model known
to open_clip and able to take the image size and context, and the settings a trial cannot
meet (a batch larger than the data, more memory than the machine has)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from study.preflight import PreflightError
from study.spaces import SearchSpace, SpaceError, validation_points
from trainables.config import ConfigError, TrialConfig
from trainables.errors import one_line
from trainables.memory import estimate_worker_memory, gib


def build_trial_config(base: dict, params: dict) -> TrialConfig:
    """The trial config: ``base`` (defaults + fixed + CLI) updated by the sampled ``params``.

    The model name and ``pretrained`` tag are checked against open_clip's registry too (no
    download), and the image size and context length against the model's config, so a study
    refuses them before it starts, instead of failing every trial on them.
    """
    config = TrialConfig.from_dict({**base, **params})
    _check_model(config)
    return config


_MODELS_CHECKED: dict = {}  # (model, pretrained) -> open_clip model name


def _check_model(config: TrialConfig) -> None:
    """ConfigError when open_clip does not know ``config.model`` or its ``pretrained`` tag (cached),
    or when the model cannot take ``config``'s image size or context length."""
    from trainables.model import resolve_model_name  # torch and open_clip: only for specs that parse

    key = (config.model, config.pretrained)
    if key not in _MODELS_CHECKED:
        _MODELS_CHECKED[key] = resolve_model_name(config)
    check_model_limits(config, _MODELS_CHECKED[key])


def validate_space(space: SearchSpace, base: dict, n_samples: int = 64, seed: int = 0) -> int:
    """Build a TrialConfig for every validation point; raise SpaceError on the first bad one.

    Returns the number of configs checked.
    """
    points = validation_points(space, n_samples, seed)
    for point in points:
        try:
            build_trial_config(base, point)
        except ConfigError as err:
            raise SpaceError(f"space {space.name!r} samples an invalid trial config ({_shown(point)}): {err}") from None
    return len(points)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else repr(value)


def check_fixed_settings(space: SearchSpace, base: dict) -> None:
    """Blame a bad fixed setting (space ``fixed`` or a flag) on itself, not on the space's samples."""
    point = validation_points(space, n_samples=0)[0]
    try:
        build_trial_config(base, point)
    except ConfigError as err:
        if not any(name in str(err) for name in space.param_names):
            raise PreflightError(f"trial settings (space 'fixed' + command line): {err}") from None


def check_model_limits(config: TrialConfig, model_name: str) -> None:
    """ConfigError when ``config`` asks for something model ``model_name`` cannot take.

    * ``image_size`` below one patch of a ViT vision tower (32 px for a ResNet's stride):
      the trial would train on images with less detail than a single patch.
    * ``context_length`` with a model that uses its own tokenizer: the model's text context
      is fixed, so another value would be silently ignored.
    """
    model_cfg = model_config_offline(config.model, model_name)
    smallest, unit = _smallest_image(model_cfg.get("vision_cfg") or {})
    if smallest and config.image_size < smallest:
        raise ConfigError(f"image_size={config.image_size}: model {config.model!r} takes images of at least "
                          f"{smallest} px ({unit} of its vision tower)")
    context = (model_cfg.get("text_cfg") or {}).get("context_length")
    if config.context_length is not None and config.text_tokenizer == "model" and context:
        if config.context_length != context:
            raise ConfigError(f"context_length={config.context_length}: model {config.model!r} reads {context} "
                              "text tokens with its own tokenizer; leave context_length unset")


def _smallest_image(vision: dict) -> tuple[int, str]:
    patch = vision.get("patch_size")
    if isinstance(patch, (list, tuple)):
        patch = max(patch)
    if isinstance(patch, int) and patch > 0:
        return patch, f"one {patch} px patch"
    if isinstance(vision.get("layers"), (list, tuple)):  # open_clip's ModifiedResNet: output stride 32
        return 32, "the output stride"
    return 0, ""  # timm / HF vision towers: their own limits, checked when built


def check_trial_sizes(space: SearchSpace, base: dict, machine_bytes: Optional[int]) -> None:
    """PreflightError for settings no trial can meet, checked at every validation point of ``space``.

    * A global batch larger than the synthetic training split: a step draws ``batch_size``
      distinct samples (the composer refuses it at the trial's start). Real data is counted by
      the trial itself, which names the count: the CLI does not read a manifest or shards.
    * More memory than ``machine_bytes`` (this machine's, for a local cluster; None on a
      cluster, whose nodes the CLI cannot see): the lower bound of
      :func:`trainables.memory.estimate_worker_memory`, times the trial's workers.

    The message names the sampled values only when some other point of the space passes (else
    the fixed settings alone are at fault).
    """
    failures = [(point, _size_problem(build_trial_config(base, point), machine_bytes))
                for point in validation_points(space, n_samples=0)]
    bad = [(point, problem) for point, problem in failures if problem]
    if bad:
        point, problem = bad[0]
        where = f" (space {space.name!r} samples {_shown(point)})" if len(bad) < len(failures) else ""
        raise PreflightError(f"{problem}{where}")


def _size_problem(config: TrialConfig, machine_bytes: Optional[int]) -> Optional[str]:
    synthetic = config.train_data == "synthetic"
    if synthetic and config.batch_size > config.synthetic_train_size:
        return (f"batch_size={config.batch_size} is more than the {config.synthetic_train_size} synthetic training "
                "images (synthetic_train_size): a step draws batch_size distinct samples")
    if machine_bytes is None:
        return None
    estimate = estimate_worker_memory(config, _model_config(config), synthetic)
    need = estimate.total * config.num_workers
    if need <= machine_bytes:
        return None
    return (f"a trial needs at least {gib(need)} of memory ({config.num_workers} worker(s), each "
            f"{estimate.describe()}), more than this machine's {gib(machine_bytes)}; lower image_size, "
            "synthetic_train_size, synthetic_test_size or batch_size")


def single_language_note(space: SearchSpace, base: dict) -> Optional[str]:
    """With one training language every batch is monolingual, so the ratio changes nothing:
    PreflightError when ``space`` searches the ratio, else the note to print (None when the
    study trains on several languages)."""
    languages = base.get("train_languages")
    if not isinstance(languages, (list, tuple)) or len(languages) != 1:
        return None
    what = (f"train_languages={list(languages)}: with one training language every batch is monolingual "
            "(a cross-lingual draw can only pick that language)")
    if "ratio" in space.param_names:
        raise PreflightError(f"{what}, so the ratio that space {space.name!r} searches changes nothing; "
                             "train on two or more languages")
    return f"{what}; the ratio changes nothing in this study"


def _model_config(config: TrialConfig) -> dict:
    return model_config_offline(config.model, _MODELS_CHECKED[config.model, config.pretrained])


HF_CONFIG_FILE = "open_clip_config.json"  # an hf-hub: or local-dir: model's config, as open_clip names it


def model_config_offline(model: str, model_name: str) -> dict:
    """open_clip's config of ``model_name`` (``model`` as the user wrote it, for messages), read
    without a download: a registry model's own; a ``local-dir:`` folder's open_clip_config.json
    (ConfigError when it has none); an ``hf-hub:`` repository's from the local Hugging Face cache,
    else ``{}``: the trial fetches it where it runs, and nothing here knows the model's limits
    (ConfigError when ``HF_HUB_OFFLINE`` is set: no trial could fetch it)."""
    import open_clip  # see _check_model

    if model_name.startswith("local-dir:"):
        path = Path(model_name[len("local-dir:"):]) / HF_CONFIG_FILE
        if not path.is_file():
            raise ConfigError(f"model={model!r}: no {HF_CONFIG_FILE} in {path.parent}")
    elif model_name.startswith("hf-hub:"):
        from huggingface_hub import try_to_load_from_cache

        repo = model_name[len("hf-hub:"):]
        try:
            cached = try_to_load_from_cache(repo_id=repo, filename=HF_CONFIG_FILE)
        except ValueError as err:  # huggingface_hub's HFValidationError: not a repository id
            raise ConfigError(f"model={model!r}: not a Hugging Face repository id ({one_line(err)})") from None
        if not isinstance(cached, str):
            from huggingface_hub import constants

            if constants.HF_HUB_OFFLINE:  # the trials could not fetch it either
                raise ConfigError(f"model={model!r}: {HF_CONFIG_FILE} of {repo} is not in the Hugging Face cache "
                                  f"and HF_HUB_OFFLINE is set; download the model first (hf download {repo})")
            return {}
        path = Path(cached)
    else:
        return open_clip.get_model_config(model_name) or {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"model={model!r}: cannot read {path}: {one_line(err)}") from None
    cfg = data.get("model_cfg", data) if isinstance(data, dict) else None
    if not isinstance(cfg, dict):
        raise ConfigError(f"model={model!r}: {path} holds no model config")
    return cfg


def _shown(point: dict) -> str:
    return ", ".join(f"{k}={_short(v)}" for k, v in point.items())
