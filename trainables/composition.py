"""The composition rule: which slots of a global step are monolingual, and in which language.

This is the study's subject (hybrid batch training, Elmahdy et al., arXiv 2408.10536) and
the one place it is written. Both training paths call :func:`compose_step` for every
global step: the planned in-memory path (:class:`trainables.composer.BatchComposer`, a
whole epoch at a time) and the streamed one (:class:`trainables.stream.StreamComposer`,
as each batch is formed). Given the same samples in the same order, both give the same
languages (tested), with two differences by design, both from what a stream cannot know
in advance: ``within_batch`` slots prefer samples that have the step language only in the
planned path, and a train language with no caption in the data is drawn (then redrawn) by
the stream only.

A global step of ``B`` slots is decided from a generator seeded by ``(seed, epoch, step)``
alone (no rank, world size or global random state), so every DDP rank computes the same
global step and the plan does not change with the number of workers:

* ``per_batch``: the whole step is monolingual with probability ``ratio``, in one language
  drawn for the step; otherwise every slot's language is drawn independently.
* ``within_batch``: exactly ``k = round(ratio * B)`` (Python ``round``) slots are
  monolingual, in the step's language; the other ``B - k`` are drawn independently. The
  ``k`` slots are random positions, preferring samples that have a caption in the step's
  language when their availability is known (the planned path), so redraws are rare.
* languages are drawn from ``weights`` (:func:`language_weights`: uniform over the train
  languages that can be drawn, or by their caption counts).
* a sample without a caption in its drawn language is redrawn (policy ``redraw``) among
  its own train languages with the same weights, by inverse CDF of the slot's uniform
  number ``u`` (:func:`redraw_languages`); a redrawn slot is not monolingual.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from trainables.languages import canonical_language


class ComposerError(ValueError):
    """Invalid composer input (the message names the argument and the problem)."""


class MissingCaptionError(ValueError):
    """A sample lacks a caption in the drawn language and the policy is ``error``."""


def stable_seed(*parts: Any) -> int:
    """A 63-bit generator seed from a stable (process- and platform-independent) hash of ``parts``."""
    text = "|".join(["mlclip-composer", *map(str, parts)])
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") & (2**63 - 1)


@dataclass(frozen=True)
class StepComposition:
    """The draws of one global step of ``B`` slots (before any redraw).

    Attributes:
        step_lang: the step's language id (a column of ``weights``).
        mono_slot: BoolTensor [B], the slot is monolingual (takes ``step_lang``).
        lang: LongTensor [B], each slot's drawn language: ``step_lang`` in a monolingual
            slot, an independent draw otherwise.
        u: DoubleTensor [B] in [0, 1), each slot's number for a redraw.
    """

    step_lang: int
    mono_slot: torch.Tensor
    lang: torch.Tensor
    u: torch.Tensor


def language_weights(drawable: torch.Tensor, counts: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The draw weights DoubleTensor [L] (sum 1): uniform over the ``drawable`` languages
    (BoolTensor [L]), or, with ``counts`` (caption counts [L]: ``language_weighting=size``),
    proportional to them."""
    weights = counts.double() if counts is not None else drawable.double()
    return weights / weights.sum()


def compose_step(seed: int, epoch: int, step: int, *, ratio: float, mode: str, weights: torch.Tensor,
                 batch: int, available: Optional[torch.Tensor] = None) -> StepComposition:
    """The composition of global step ``step`` of ``epoch`` (see the module docstring).

    Args:
        seed, epoch, step: what the step's generator is seeded by.
        ratio, mode: the trial's composition (checked by :class:`~trainables.config.TrialConfig`).
        weights: DoubleTensor [L], the language draw weights (zero for languages never drawn).
        batch: B, the global batch size.
        available: optional BoolTensor [B, L], the caption availability of the step's samples
            in slot order; ``within_batch`` then puts its monolingual slots on samples that have
            the step language first. None (a stream: samples arrive later) means no preference.
    """
    if mode not in ("per_batch", "within_batch"):
        raise ComposerError(f"mode={mode!r}: the composition rule knows per_batch and within_batch")
    gen = torch.Generator().manual_seed(stable_seed(seed, "step", int(epoch), int(step)))
    step_lang = int(torch.multinomial(weights, 1, generator=gen))
    noise = torch.rand(batch, generator=gen, dtype=torch.float64)
    if mode == "per_batch":
        mono = torch.full((batch,), bool(torch.rand(1, generator=gen) < ratio))
    else:
        lacks = (~available[:, step_lang]).double() if available is not None else 0.0
        mono = torch.zeros(batch, dtype=torch.bool)
        mono[torch.argsort(noise + lacks)[: round(ratio * batch)]] = True
    cross = torch.multinomial(weights, batch, replacement=True, generator=gen)
    u = torch.rand(batch, generator=gen, dtype=torch.float64)
    return StepComposition(step_lang, mono, torch.where(mono, step_lang, cross), u)


def redraw_languages(u: torch.Tensor, allowed: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """New language ids LongTensor [M]: for each of M samples, the inverse CDF at ``u`` [M] of
    ``weights`` [L] restricted to the sample's ``allowed`` [M, L] languages (each row has one)."""
    probs = weights[None, :] * allowed.double()  # [M, L]
    cdf = probs.cumsum(dim=1)
    cdf = cdf / cdf[:, -1:]
    picked = (cdf <= u[:, None]).sum(dim=1)  # the first language whose CDF exceeds u
    last = probs.shape[1] - 1 - torch.flip(probs > 0, dims=[1]).double().argmax(dim=1)
    return torch.minimum(picked, last)  # u within rounding of 1 stays on an allowed language


def canonical_languages(codes: Sequence[str], name: str) -> tuple[str, ...]:
    """Canonical codes, rejecting unknown or duplicate ones with one ComposerError."""
    if isinstance(codes, str):
        raise ComposerError(f"{name}={codes!r}: expected a sequence of language codes, not a string")
    try:
        out = tuple(canonical_language(code) for code in codes)
    except ValueError as err:
        raise ComposerError(f"{name}: {err}") from None
    if len(set(out)) != len(out):
        raise ComposerError(f"{name}={list(codes)!r}: duplicate language codes")
    if not out:
        raise ComposerError(f"{name}: at least one language is needed")
    return out


def check_train_languages(languages: tuple[str, ...], train_languages: Optional[Sequence[str]]) -> tuple[str, ...]:
    """``train_languages`` (default: all of ``languages``, the data's) as canonical codes, each of
    which must be among the data's languages. Whether the codes are known, distinct and at least
    one is :class:`~trainables.config.TrialConfig`'s to check; aliases such as ``jp`` map here."""
    if train_languages is None:
        return languages
    try:
        train = tuple(canonical_language(code) for code in train_languages)
    except ValueError as err:
        raise ComposerError(f"train_languages: {err}") from None
    outside = [lang for lang in train if lang not in languages]
    if outside:
        raise ComposerError(f"train_languages: {', '.join(outside)} not among the data's languages "
                            f"({', '.join(languages)})")
    return train


def missing_caption_message(sample: Any, language: str, epoch: int, step: int) -> str:
    """The one line of a :class:`MissingCaptionError` (policy ``error``)."""
    return (f"sample {sample} has no caption in language {language!r} (drawn for epoch {epoch}, step {step}) "
            "and missing_caption_policy='error'; use 'redraw' to draw among the sample's own languages")
