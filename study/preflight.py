"""What the study CLI checks before anything starts, beyond the trial config's own validation.

The rule (docs/reliability.md, "Bad input, row by row"): what the command line can check is checked
before Ray starts, as one ``error:`` line with exit code 2, and nothing is created (no
storage folder, no MLflow run); what only a trial can see fails that trial with its reason.

Each check reuses the code that would otherwise fail later, so its message is the one a
trial would have given: the XTD loader's structure check (:func:`trainables.data.xtd.check_xtd`),
open_clip's model configs for image size and text context, and for the metric names the
registry (:mod:`trainables.metric_names`) plus the evaluator itself (:func:`known_metrics`
runs it on a few random embeddings, so no name list is kept here).
"""

from __future__ import annotations

import difflib
import math
import re
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Collection, Optional

from trainables.config import MAX_SEED, ConfigError, TrialConfig

MAX_NAME_LENGTH = 100  # a folder name (255 bytes at most) with room for Tune's and Ray Train's suffixes
_PROBE_K = 100  # the evaluator's names for k=100; map100/... stands for map{k}/... of any eval_k
_MAP_K = re.compile(r"^map(\d+)/(.+)$")
_EXAMPLE = "map100/multilingual/family/sinitic"  # named in the message


class PreflightError(RuntimeError):
    """Bad input found before the study starts. One-line message."""


# ---------------------------------------------------------------------------
# Command-line numbers
# ---------------------------------------------------------------------------
def check_resource(flag: str, value: Optional[float], default: float) -> float:
    """A per-worker resource (``--cpus-per-worker``, ``--gpus-per-worker``): finite and >= 0."""
    if value is None:
        return default
    if not math.isfinite(value) or value < 0:
        # NaN passed every comparison before and hung the study: Ray never places a NaN CPU ask.
        raise PreflightError(f"--{flag} {value}: resources per worker must be a finite number >= 0")
    return float(value)


def check_seed(value: Optional[int]) -> None:
    """``--seed`` seeds Optuna's sampler (32-bit) as well as the trials."""
    if value is not None and not 0 <= value <= MAX_SEED:
        raise PreflightError(f"--seed {value}: must lie in [0, 2**32 - 1] (it seeds Optuna's sampler and the trials)")


def check_name_length(name: str) -> None:
    """A study name becomes a folder and an MLflow experiment: keep it well under 255 bytes."""
    if len(name.encode()) > MAX_NAME_LENGTH:
        raise PreflightError(f"study name of {len(name)} characters ({name[:24]}...): at most {MAX_NAME_LENGTH} "
                             "(it names the state folder and the MLflow experiment)")


# ---------------------------------------------------------------------------
# Folders this study will write
# ---------------------------------------------------------------------------
def check_output_dir(path: str) -> None:
    """The folder for the table, figure and best config: a folder (or creatable), writable; nothing created."""
    from study.state import check_folder_writable

    try:
        if Path(path).exists() and not Path(path).is_dir():
            raise PreflightError(f"--output-dir {path} is a file, not a folder (the study writes its table and figure there)")
        check_folder_writable(Path(path))
    except OSError as err:
        raise PreflightError(f"output folder {path} is not writable: {_reason(err)}") from None


def check_data_cache(base: dict) -> None:
    """The trials' data cache (synthetic data, tokenizers) must be writable; nothing created."""
    from study.state import check_folder_writable
    from trainables.data.synthetic import cache_root

    if "data_cache" not in base:  # searched: each value is the trial's own business
        return
    folder = cache_root(SimpleNamespace(data_cache=base.get("data_cache")))  # the one field it reads
    try:
        check_folder_writable(folder)
    except OSError as err:
        raise PreflightError(f"data_cache {folder} is not writable: {_reason(err)}") from None


def check_eval_folder(base: dict) -> None:
    """A local XTD evaluation folder: its whole structure, read now with the loader's own check."""
    from trainables.data import DataError
    from trainables.data.xtd import check_xtd

    folder = base.get("eval_data")
    if not isinstance(folder, str) or folder == "synthetic" or "://" in folder:
        return
    if "images_dir" not in base or "allow_missing_images" not in base:
        return  # searched: each trial checks its own combination
    try:
        check_xtd(folder, base.get("images_dir"), allow_missing_images=bool(base.get("allow_missing_images")))
    except DataError as err:
        raise PreflightError(str(err)) from None
    except OSError as err:  # what the loader does not expect either (a name too long, no permission)
        raise PreflightError(f"XTD folder {folder}: {_reason(err)}") from None


def _reason(err: OSError) -> str:
    return " ".join(str(err).split()) or type(err).__name__


# ---------------------------------------------------------------------------
# Model limits (through open_clip's config of the model)
# ---------------------------------------------------------------------------
def check_model_limits(config: TrialConfig, model_name: str) -> None:
    """ConfigError when ``config`` asks for something model ``model_name`` cannot take.

    * ``image_size`` below one patch of a ViT vision tower (32 px for a ResNet's stride):
      the trial would train on images with less detail than a single patch.
    * ``context_length`` with a model that uses its own tokenizer: the model's text context
      is fixed, so another value would be silently ignored.
    """
    import open_clip

    model_cfg = open_clip.get_model_config(model_name) or {}
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


# ---------------------------------------------------------------------------
# Metric names: the registry (trainables.metric_names) and what the evaluator reports
# ---------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _evaluation_names() -> frozenset:
    """Every name :func:`trainables.evaluate.evaluate_embeddings` reports for the XTD languages (k=100)."""
    import torch

    from trainables.evaluate import evaluate_embeddings
    from trainables.languages import LANGUAGES

    gen = torch.Generator().manual_seed(0)
    images = torch.randn(3, 4, generator=gen)
    texts = {lang: torch.randn(3, 4, generator=gen) for lang in LANGUAGES}
    return frozenset(evaluate_embeddings(images, texts, k=_PROBE_K))


def known_metrics(eval_k: int = _PROBE_K) -> list[str]:
    """The (source) metric names a trial with ``eval_k`` reports at an evaluated epoch, sorted:
    every evaluation name, and the registry's headlines (training, composition, bookkeeping)."""
    from trainables.metric_names import HEADLINES

    names = {_with_k(name, eval_k) for name in _evaluation_names()}
    return sorted(names | {h.source for h in HEADLINES if not _MAP_K.match(h.source)})


def _with_k(name: str, k: int) -> str:
    match = _MAP_K.match(name)
    return f"map{k}/{match.group(2)}" if match and int(match.group(1)) == _PROBE_K else name


def check_metric(metric: str, eval_ks: Collection[int], where: str) -> None:
    """PreflightError unless some trial of the study reports ``metric`` (``eval_ks``: its possible eval_k).

    ``metric`` is a source name (``map100/multilingual``) or a registry headline's logged name
    (``multi``); the message lists the registry's headlines, which name the rest.
    """
    from trainables.metric_names import HEADLINES, source_name

    source = source_name(metric)
    match = _MAP_K.match(source)
    if match and int(match.group(1)) in eval_ks and f"map{_PROBE_K}/{match.group(2)}" in _evaluation_names():
        return
    first = next(iter(eval_ks), _PROBE_K)
    if not match and source in known_metrics(first):
        return
    names = known_metrics(first)
    close = difflib.get_close_matches(metric, names + [h.logged for h in HEADLINES], n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    k_note = f" with eval_k={first}" if len(eval_ks) == 1 else ""
    headline = [_with_k(h.source, first) for h in HEADLINES if h.source.count("/") <= 1]
    raise PreflightError(
        f"{where}: metric {metric!r} is not reported by the trials{k_note}; known: {', '.join(headline)}; "
        f"per family, language and pair too (e.g. {_with_k(_EXAMPLE, first)}), or by the short names of "
        f"trainables/metric_names.py (multi, multi/sinitic, ...): {len(names)} in all{hint}"
    )


def eval_ks(base: dict, space: Any) -> Collection[int]:
    """The eval_k values the study's trials can have: the fixed one, or those the space searches."""
    param = next((p for p in space.params if p.name == "eval_k"), None)
    if param is None:
        return (base.get("eval_k", TrialConfig().eval_k),)
    if param.values:
        return tuple(v for v in param.values if isinstance(v, int) and not isinstance(v, bool)) or (_PROBE_K,)
    return range(int(param.low), int(param.high) + 1)  # a range: membership without listing it


__all__ = ["PreflightError", "check_metric", "check_model_limits", "known_metrics"]
