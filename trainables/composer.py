"""Batch composer: which samples form each GLOBAL batch and in which caption language.

The study's subject is the share of monolingual data in training batches (hybrid batch
training, Elmahdy et al., arXiv 2408.10536). :class:`BatchComposer` turns a caption
availability table into a reproducible plan of global batches, identical on every DDP
rank, and hands each rank its contiguous slice.

Determinism contract
--------------------
Every random draw of an epoch comes from one ``torch.Generator`` (CPU) seeded by a hash
of ``(seed, epoch)``; all draws are made for the whole epoch at once, so the content of
global step ``s`` is a function of ``(seed, epoch, s)`` and the inputs only. No rank id,
world size or global random state is used: every rank computes the same global plan, and
the plan does not change when the number of workers changes (elastic resume is safe).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

import torch

from trainables.config import COMPOSER_MODES, LANGUAGE_WEIGHTINGS, MISSING_CAPTION_POLICIES
from trainables.languages import canonical_language

if TYPE_CHECKING:  # pragma: no cover
    from trainables.config import TrialConfig


class ComposerError(ValueError):
    """Invalid composer input (the message names the argument and the problem)."""


class MissingCaptionError(ValueError):
    """A sample lacks a caption in the drawn language and the policy is ``error``."""


@dataclass(frozen=True)
class EpochPlan:
    """All global batches of one epoch (S steps, global batch size B).

    Attributes:
        epoch: the epoch this plan belongs to.
        indices: LongTensor [S, B], sample indices (rows of ``available``) per global batch.
        lang_ids: LongTensor [S, B], caption language per item (column of ``available``).
        mono: BoolTensor [S, B], item sits in a monolingual slot AND carries the step
            language (a redrawn item is not monolingual).
        mono_step: BoolTensor [S], every slot of the step is a monolingual slot
            (per_batch: the step was drawn monolingual; within_batch: round(r*B) == B).
        step_lang: LongTensor [S], the step's language, -1 when the step has no
            monolingual slot (per_batch cross-lingual step, or within_batch with r*B < 0.5).
        redrawn: BoolTensor [S, B], item's language was redrawn (missing caption).
        skipped: number of samples left out of this epoch (no caption in any train language).
    """

    epoch: int
    indices: torch.Tensor
    lang_ids: torch.Tensor
    mono: torch.Tensor
    mono_step: torch.Tensor
    step_lang: torch.Tensor
    redrawn: torch.Tensor
    skipped: int

    @property
    def num_steps(self) -> int:
        """Number of global steps S."""
        return int(self.indices.shape[0])


def _seed_from(*parts: Any) -> int:
    """A 63-bit generator seed from a stable (process- and platform-independent) hash."""
    text = "|".join(["mlclip-composer", *map(str, parts)])
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") & (2**63 - 1)


class BatchComposer:
    """Plans reproducible global batches with a given monolingual share.

    Args:
        available: BoolTensor [N, L]; ``available[i, j]`` = sample i has a caption in
            ``languages[j]``.
        languages: the L language codes of the columns (aliases such as ``jp`` accepted).
        ratio: r in [0, 1], the share of monolingual data.
        mode: ``per_batch``: each global step is monolingual with probability r (all its
            captions in one language drawn for the step), otherwise cross-lingual (each
            item's language drawn independently). ``within_batch``: each global batch holds
            exactly k = round(r*B) (Python ``round``) monolingual slots in the step's
            language and B-k slots with independently drawn languages. The monolingual
            slots are random positions of the global batch (preferring items that have
            a caption in the step language, so redraws are rare), hence the ratio holds for
            the global batch while rank slices differ in their share.
        global_batch_size: B, the batch over all ranks; must be divisible by world_size.
        rank, world_size: this process's slice is ``[rank*b, (rank+1)*b)``, b = B // world_size.
        seed: base seed of all draws (see module docstring).
        language_weighting: ``uniform`` over the train languages, or ``size``: proportional
            to each language's caption count among the epoch's samples.
        train_languages: languages that may be drawn (default: all of ``languages``);
            the others are never drawn (zero-shot at evaluation).
        missing_caption_policy: what happens when a sample lacks a caption in its drawn
            language. ``redraw``: draw again among the sample's own train languages with
            the same weights (counted in ``composition/redraws``); samples with no caption
            in any train language are left out of every epoch (``composition/skipped``).
            ``error``: :meth:`plan_epoch` raises :class:`MissingCaptionError` naming the
            first offending sample, language and step (no sample is skipped).
        steps_per_epoch: fixed number of global steps per epoch. None: one pass over the
            samples. More steps than one pass holds continue with fresh permutations
            (each pass contributes only full batches, so no batch straddles two passes).
        drop_last: with ``steps_per_epoch=None``, drop the last partial batch (True) or
            fill it up with the first samples of the epoch's order (False), so every
            global batch always has exactly B items.
    """

    def __init__(
        self,
        available: torch.Tensor,
        languages: Sequence[str],
        *,
        ratio: float,
        mode: str,
        global_batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        language_weighting: str = "uniform",
        train_languages: Optional[Sequence[str]] = None,
        missing_caption_policy: str = "redraw",
        steps_per_epoch: Optional[int] = None,
        drop_last: bool = True,
    ) -> None:
        self.languages = _canonical_languages(languages, "languages")
        self.available = _check_available(available, len(self.languages))
        self.train_languages = check_train_languages(self.languages, train_languages)
        self._check_scalars(ratio, mode, global_batch_size, rank, world_size, language_weighting,
                            missing_caption_policy, steps_per_epoch)
        self.ratio, self.mode, self.seed = float(ratio), mode, int(seed)
        self.global_batch_size, self.rank, self.world_size = global_batch_size, rank, world_size
        self.local_batch_size = global_batch_size // world_size
        self.language_weighting, self.missing_caption_policy = language_weighting, missing_caption_policy
        self.steps_per_epoch, self.drop_last = steps_per_epoch, bool(drop_last)
        self._setup_samples()
        self._plan: Optional[EpochPlan] = None
        self._epoch: Optional[int] = None
        self._position = 0  # global steps of self._epoch produced so far

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: "TrialConfig", available: torch.Tensor, languages: Sequence[str],
                    rank: int, world_size: int) -> "BatchComposer":
        """Composer for a trial: composition fields, batch_size (global), seed, steps_per_epoch."""
        return cls(
            available, languages, ratio=config.ratio, mode=config.mode,
            global_batch_size=config.batch_size, rank=rank, world_size=world_size, seed=config.seed,
            language_weighting=config.language_weighting, train_languages=config.train_languages,
            missing_caption_policy=config.missing_caption_policy, steps_per_epoch=config.steps_per_epoch,
        )

    @staticmethod
    def _check_scalars(ratio, mode, batch, rank, world, weighting, policy, steps) -> None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) <= 1.0:
            raise ComposerError(f"ratio={ratio!r}: the monolingual ratio must lie in [0, 1]")
        for name, value, allowed in (("mode", mode, COMPOSER_MODES), ("language_weighting", weighting,
                                     LANGUAGE_WEIGHTINGS), ("missing_caption_policy", policy,
                                     MISSING_CAPTION_POLICIES)):
            if value not in allowed:
                raise ComposerError(f"{name}={value!r}: must be one of {', '.join(allowed)}")
        for name, value in (("global_batch_size", batch), ("world_size", world)):
            if not isinstance(value, int) or value < 1:
                raise ComposerError(f"{name}={value!r}: must be a positive integer")
        if batch % world:
            raise ComposerError(f"global_batch_size={batch} is not divisible by world_size={world}: "
                                "the global batch must split evenly over the ranks")
        if not isinstance(rank, int) or not 0 <= rank < world:
            raise ComposerError(f"rank={rank!r}: must lie in [0, world_size={world})")
        if steps is not None and (not isinstance(steps, int) or steps < 1):
            raise ComposerError(f"steps_per_epoch={steps!r}: must be a positive integer or None")

    def _setup_samples(self) -> None:
        """Eligible samples, drawable languages and their weights (fixed for all epochs)."""
        train_mask = torch.tensor([lang in self.train_languages for lang in self.languages])
        self._avail_train = self.available & train_mask  # [N, L]
        has_train = self._avail_train.any(dim=1)
        if self.missing_caption_policy == "redraw":
            self._eligible = torch.nonzero(has_train).flatten()
        else:
            self._eligible = torch.arange(self.available.shape[0])
        self._skipped = int(self.available.shape[0] - self._eligible.numel())
        counts = self._avail_train[self._eligible].sum(dim=0).double()  # [L]
        drawable = counts > 0
        if not drawable.any():
            raise ComposerError(f"no sample has a caption in any train language ({', '.join(self.train_languages)})")
        weights = counts if self.language_weighting == "size" else drawable.double()
        self.language_weights = weights / weights.sum()  # [L], zero outside drawable train languages
        if self._eligible.numel() < self.global_batch_size:
            raise ComposerError(f"only {self._eligible.numel()} usable samples, fewer than "
                                f"global_batch_size={self.global_batch_size}")

    # ------------------------------------------------------------------ planning
    def num_steps(self, epoch: int = 0) -> int:
        """Global steps of ``epoch`` (the same for every epoch and every rank)."""
        if self.steps_per_epoch is not None:
            return self.steps_per_epoch
        n, batch = self._eligible.numel(), self.global_batch_size
        return n // batch if self.drop_last else -(-n // batch)

    def plan_epoch(self, epoch: int) -> EpochPlan:
        """The full global plan of ``epoch`` (cached for the latest epoch asked for).

        Vectorised: one generator, a handful of batched draws for all S*B items.
        Raises MissingCaptionError under the ``error`` policy.
        """
        if self._plan is not None and self._plan.epoch == epoch:
            return self._plan
        gen = torch.Generator().manual_seed(_seed_from(self.seed, int(epoch)))
        order = self._epoch_order(gen)  # [S, B]
        steps = order.shape[0]
        step_lang = self._draw_languages(steps, gen)  # [S]
        mono_slot = self._mono_slots(order, step_lang, gen)  # [S, B]
        cross = self._draw_languages(steps * order.shape[1], gen).view_as(order)
        lang = torch.where(mono_slot, step_lang[:, None], cross)
        redrawn = ~self.available[order, lang]
        if redrawn.any():
            if self.missing_caption_policy == "error":
                self._raise_missing(epoch, order, lang, redrawn)
            lang[redrawn] = self._redraw(order[redrawn], gen)
        mono_step = mono_slot.all(dim=1)
        step_lang = torch.where(mono_slot.any(dim=1), step_lang, torch.full_like(step_lang, -1))
        self._plan = EpochPlan(int(epoch), order, lang, mono_slot & ~redrawn, mono_step, step_lang,
                               redrawn, self._skipped)
        return self._plan

    def _epoch_order(self, gen: torch.Generator) -> torch.Tensor:
        """Sample indices [S, B]: passes over a fresh permutation of the eligible samples.

        Each pass yields its full batches; only with drop_last=False and no
        steps_per_epoch is the last partial batch padded with the pass's first samples.
        """
        n, batch, steps = self._eligible.numel(), self.global_batch_size, self.num_steps()
        per_pass = n // batch
        if self.steps_per_epoch is None and not self.drop_last and n % batch:
            first = self._eligible[torch.randperm(n, generator=gen)]
            return torch.cat([first, first[: batch - n % batch]]).view(steps, batch)
        passes = [self._eligible[torch.randperm(n, generator=gen)][: per_pass * batch]
                  for _ in range(math.ceil(steps / per_pass))]
        return torch.cat(passes)[: steps * batch].view(steps, batch)

    def _draw_languages(self, count: int, gen: torch.Generator) -> torch.Tensor:
        """``count`` independent language ids (LongTensor) from the language weights."""
        return torch.multinomial(self.language_weights, count, replacement=True, generator=gen)

    def _mono_slots(self, order: torch.Tensor, step_lang: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """BoolTensor [S, B] of monolingual slots.

        per_batch: whole rows, each with probability r. within_batch: exactly
        k = round(r*B) random positions per row, preferring items that have the step
        language (random order among those, then among the others).
        """
        steps, batch = order.shape
        noise = torch.rand(steps, batch, generator=gen)
        if self.mode == "per_batch":
            mono_step = torch.rand(steps, generator=gen) < self.ratio
            return mono_step[:, None].expand(steps, batch).clone()
        k = round(self.ratio * batch)
        lacks = ~self.available[order, step_lang[:, None].expand(steps, batch)]
        rank_in_row = torch.argsort(noise + lacks.double(), dim=1).argsort(dim=1)
        return rank_in_row < k

    def _redraw(self, samples: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """New language ids for ``samples`` [M]: weighted draw among each one's own train languages."""
        probs = self.language_weights[None, :] * self._avail_train[samples].double()  # [M, L]
        return torch.multinomial(probs, 1, generator=gen).flatten()

    def _raise_missing(self, epoch: int, order: torch.Tensor, lang: torch.Tensor, missing: torch.Tensor):
        step, pos = (int(v) for v in torch.nonzero(missing)[0])
        sample, language = int(order[step, pos]), self.languages[int(lang[step, pos])]
        raise MissingCaptionError(
            f"sample {sample} has no caption in language {language!r} (drawn for epoch {epoch}, step {step}) "
            f"and missing_caption_policy='error'; use 'redraw' to draw among the sample's own languages"
        )

    # ------------------------------------------------------------------ iteration
    def local_batches(self, epoch: int, start_step: Optional[int] = None
                      ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """Yield ``(step, indices[b], lang_ids[b])`` of THIS rank for the steps of ``epoch``.

        ``start_step`` None resumes at the position restored by :meth:`load_state_dict`
        when it is for this epoch, else starts at 0. The position (for :meth:`stats` and
        :meth:`state_dict`) advances to ``step + 1`` as each step is yielded.
        """
        if start_step is None:
            start_step = self._position if self._epoch == epoch else 0
        plan = self.plan_epoch(epoch)
        if not 0 <= start_step <= plan.num_steps:
            raise ComposerError(f"start_step={start_step} outside [0, {plan.num_steps}] for epoch {epoch}")
        self._epoch, self._position = int(epoch), start_step
        return self._iterate(plan, start_step)

    def _iterate(self, plan: EpochPlan, start_step: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        lo, hi = self.rank * self.local_batch_size, (self.rank + 1) * self.local_batch_size
        for step in range(start_step, plan.num_steps):
            self._position = step + 1
            yield step, plan.indices[step, lo:hi], plan.lang_ids[step, lo:hi]

    # ------------------------------------------------------------------ stats and state
    def stats(self) -> dict[str, float]:
        """Realised composition of the current epoch's global batches produced so far.

        Computed from the global plan, so identical on every rank. Shares are 0.0
        before the first step. ``redraws`` and ``skipped`` are counts for this epoch.
        """
        epoch = 0 if self._epoch is None else self._epoch
        plan, done = self.plan_epoch(epoch), self._position
        langs = plan.lang_ids[:done].flatten()
        shares = torch.bincount(langs, minlength=len(self.languages)).double() / max(1, langs.numel())
        out = {
            "composition/mono_share": float(plan.mono[:done].double().mean()) if done else 0.0,
            "composition/mono_step_share": float(plan.mono_step[:done].double().mean()) if done else 0.0,
            "composition/languages_seen": float((shares > 0).sum()),
            "composition/redraws": float(plan.redrawn[:done].sum()),
            "composition/skipped": float(plan.skipped),
        }
        out.update({f"composition/lang_share/{lang}": float(shares[j]) for j, lang in enumerate(self.languages)})
        return out

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable position: seed, epoch, steps produced, counters, and a fingerprint."""
        stats = self.stats() if self._epoch is not None else {}
        return {
            "seed": self.seed, "epoch": self._epoch, "step": self._position,
            "redraws": int(stats.get("composition/redraws", 0)), "skipped": self._skipped,
            "num_samples": int(self.available.shape[0]), "global_batch_size": self.global_batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore seed and position; the next ``local_batches(epoch)`` resumes there.

        The world size may differ from the saved run (the global plan does not depend on it).
        """
        for key in ("num_samples", "global_batch_size"):
            mine = int(self.available.shape[0]) if key == "num_samples" else self.global_batch_size
            if state.get(key, mine) != mine:
                raise ComposerError(f"composer state has {key}={state[key]}, this composer has {mine}")
        self.seed = int(state["seed"])
        self._plan = None
        self._epoch = None if state.get("epoch") is None else int(state["epoch"])
        self._position = int(state.get("step", 0))


def _canonical_languages(codes: Sequence[str], name: str) -> tuple[str, ...]:
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
    """Canonical ``train_languages`` (default: all of ``languages``); each must be among ``languages``."""
    if train_languages is None:
        return languages
    train = _canonical_languages(train_languages, "train_languages")
    outside = [lang for lang in train if lang not in languages]
    if outside:
        raise ComposerError(f"train_languages: {', '.join(outside)} not among the data's languages "
                            f"({', '.join(languages)})")
    return train


def _check_available(available: Any, num_languages: int) -> torch.Tensor:
    """BoolTensor [N, L] (CPU) from ``available``, checked against the language count."""
    table = torch.as_tensor(available)
    if table.dim() != 2 or table.shape[1] != num_languages:
        raise ComposerError(f"available has shape {tuple(table.shape)}, expected [N, {num_languages}] "
                            "(one column per language)")
    if table.dtype != torch.bool:
        raise ComposerError(f"available must be a BoolTensor, got dtype {table.dtype}")
    return table.cpu()


__all__ = ["BatchComposer", "EpochPlan", "ComposerError", "MissingCaptionError"]
