"""Batch composer: which samples form each GLOBAL batch and in which caption language.

The study's subject is the share of monolingual data in training batches (hybrid batch
training, Elmahdy et al., arXiv 2408.10536). :class:`BatchComposer` turns a caption
availability table into a reproducible plan of global batches, identical on every DDP
rank, and hands each rank its contiguous slice. Which slots of a step are monolingual, and
in which language, is the composition rule of :mod:`trainables.composition`, shared with
the streamed path; this module adds the epoch's sample order and the redraws.

Determinism contract
--------------------
The epoch's sample order comes from a ``torch.Generator`` (CPU) seeded by a hash of
``(seed, epoch)``, each step's composition from one seeded by ``(seed, epoch, step)``; so
the content of global step ``s`` is a function of ``(seed, epoch, s)`` and the inputs only.
No rank id, world size or global random state is used: every rank computes the same global
plan, and the plan does not change when the number of workers changes (elastic resume is safe).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import torch

from trainables.composition import (ComposerError, MissingCaptionError, canonical_languages, check_train_languages,
                                    compose_step, language_weights, missing_caption_message, redraw_languages,
                                    stable_seed)
from trainables.config import TrialConfig


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


class BatchComposer:
    """Plans reproducible global batches with a given monolingual share.

    The trial's settings (``ratio``, ``mode``, batch size, policies, ...) come checked by
    :class:`~trainables.config.TrialConfig` (:meth:`from_config`); what this class checks
    is the data: the availability table, its languages, enough usable samples.

    Args:
        available: BoolTensor [N, L]; ``available[i, j]`` = sample i has a caption in
            ``languages[j]``.
        languages: the L language codes of the columns (aliases such as ``jp`` accepted).
        ratio: r in [0, 1], the share of monolingual data.
        mode: ``per_batch`` or ``within_batch``, as in :func:`~trainables.composition.compose_step`;
            within_batch's monolingual slots prefer items that have a caption in the step
            language, so the ratio holds for the global batch while rank slices differ in
            their share.
        global_batch_size: B, the batch over all ranks, divisible by world_size.
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
        self.languages = canonical_languages(languages, "languages")
        self.available = _check_available(available, len(self.languages))
        self.train_languages = check_train_languages(self.languages, train_languages)
        self.ratio, self.mode, self.seed = float(ratio), mode, int(seed)
        self.global_batch_size, self.rank, self.world_size = global_batch_size, rank, world_size
        self.local_batch_size = global_batch_size // world_size
        self.language_weighting, self.missing_caption_policy = language_weighting, missing_caption_policy
        self.steps_per_epoch, self.drop_last = steps_per_epoch, bool(drop_last)
        self._setup_samples()
        self._plan: Optional[EpochPlan] = None
        self._epoch: Optional[int] = None
        self._position = 0  # global steps of self._epoch produced so far (for stats)

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
        # [L], zero outside the train languages that have captions here
        self.language_weights = language_weights(drawable, counts if self.language_weighting == "size" else None)
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

        The sample order first (one generator for the epoch), then each step's composition
        (:func:`~trainables.composition.compose_step`), then the redraws of samples that lack
        their drawn language. Raises MissingCaptionError under the ``error`` policy.
        """
        if self._plan is not None and self._plan.epoch == epoch:
            return self._plan
        order = self._epoch_order(torch.Generator().manual_seed(stable_seed(self.seed, int(epoch))))  # [S, B]
        steps = [compose_step(self.seed, epoch, s, ratio=self.ratio, mode=self.mode, weights=self.language_weights,
                              batch=self.global_batch_size, available=self.available[order[s]])
                 for s in range(order.shape[0])]
        mono_slot = torch.stack([c.mono_slot for c in steps])  # [S, B]
        lang = torch.stack([c.lang for c in steps])  # [S, B]
        redrawn = ~self.available[order, lang]
        if redrawn.any():
            if self.missing_caption_policy == "error":
                self._raise_missing(epoch, order, lang, redrawn)
            u = torch.stack([c.u for c in steps])
            lang[redrawn] = redraw_languages(u[redrawn], self._avail_train[order[redrawn]], self.language_weights)
        step_lang = torch.tensor([c.step_lang for c in steps], dtype=torch.long)
        step_lang = torch.where(mono_slot.any(dim=1), step_lang, torch.full_like(step_lang, -1))
        self._plan = EpochPlan(int(epoch), order, lang, mono_slot & ~redrawn, mono_slot.all(dim=1), step_lang,
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

    def _raise_missing(self, epoch: int, order: torch.Tensor, lang: torch.Tensor, missing: torch.Tensor):
        step, pos = (int(v) for v in torch.nonzero(missing)[0])
        sample, language = int(order[step, pos]), self.languages[int(lang[step, pos])]
        raise MissingCaptionError(missing_caption_message(sample, language, epoch, step))

    # ------------------------------------------------------------------ iteration
    def local_batches(self, epoch: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """Yield ``(step, indices[b], lang_ids[b])`` of THIS rank for every step of ``epoch``.

        The call makes the epoch current (:meth:`stats` reports it from then on); the position
        advances to ``step + 1`` as each step is yielded. A trial checkpoints at epoch ends, so
        an epoch always starts at step 0.
        """
        plan = self.plan_epoch(epoch)
        self._epoch, self._position = int(epoch), 0
        return self._slices(plan)

    def _slices(self, plan: EpochPlan) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        lo, hi = self.rank * self.local_batch_size, (self.rank + 1) * self.local_batch_size
        for step in range(plan.num_steps):
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
        """Checkpointable state (taken at an epoch end): seed, epoch, steps produced, counters, a fingerprint."""
        stats = self.stats() if self._epoch is not None else {}
        return {
            "seed": self.seed, "epoch": self._epoch, "step": self._position,
            "redraws": int(stats.get("composition/redraws", 0)), "skipped": self._skipped,
            "num_samples": int(self.available.shape[0]), "global_batch_size": self.global_batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the seed and the last epoch's position (its :meth:`stats`), refusing another data set.

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
