"""Streamed training from WebDataset shards: composition decided per step, corpus never in RAM.

With ``train_loading="stream"`` each rank reads its own split of the shards
(:class:`~trainables.data.shards.ShardStream`, split by rank and DataLoader worker,
decoded in ``loader_workers`` processes) and the composer chooses the caption language of
each sample as its batch is formed. The in-memory path (:class:`trainables.composer.BatchComposer`)
plans a whole epoch from a global availability table; a stream has no such table, so here
each global step is composed as its batch is formed, by the same rule
(:func:`trainables.composition.compose_step`, seeded by ``(seed, epoch, step)``):

* identical on every rank: whether the step is monolingual, its language, which global
  positions are monolingual slots (``within_batch``), a cross-lingual language draw and a
  uniform number ``u`` per global position. Rank ``r`` uses positions ``[r*b, (r+1)*b)``;
* per sample: the drawn language is used when the sample has that caption; otherwise
  (``redraw``) a language is taken among the sample's own train languages by inverse CDF
  of ``u`` over their weights (:func:`~trainables.composition.redraw_languages`), and
  counted; (``error``) :class:`MissingCaptionError`.

Hence, given the same samples in the same order, a stream gets the in-memory composer's
languages (tested; see :mod:`trainables.composition` for the two differences by design).
What differs in practice: the samples of a step are those the stream delivers (shard order
shuffled per epoch), ``within_batch`` slots cannot prefer samples that have the step
language (a rank does not see the others' samples: more redraws), and
``language_weighting="size"`` is not available (it needs caption counts before the stream
is read).

Epochs and DDP: with ``steps_per_epoch`` unset an epoch is one pass over the shards. Ranks
may hold different numbers of samples (splits differ by up to a shard, and skipped images
are only known when decoded), so before each step the ranks agree, with one tiny
all-reduce, that every rank holds a full local batch; the epoch ends for all at the first
step some rank cannot fill. The samples left over on the other ranks are counted
(``data/stream_dropped``). With ``steps_per_epoch`` set, each rank continues into a new
pass (a new shard order) until that many steps are done.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

from trainables.composition import (ComposerError, MissingCaptionError, canonical_languages, check_train_languages,
                                    compose_step, language_weights, missing_caption_message, redraw_languages)
from trainables.config import TrialConfig
from trainables.data.shards import ShardStream, count_samples, expand_shards
from trainables.data.types import DataError

SKIP_KEYS = ("missing_images", "unreadable_images", "no_train_caption", "stream_dropped")


def _distributed(world_size: int) -> bool:
    return world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def collective_device() -> torch.device:
    """Where a small collective's tensor must live: the current GPU under NCCL (which has no
    CPU tensors; Ray Train's backend on GPU workers), else the CPU (gloo)."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_min(flag: int, world_size: int) -> int:
    """The minimum of ``flag`` over all ranks (no-op on one rank or without a process group)."""
    if not _distributed(world_size):
        return flag
    value = torch.tensor([flag], dtype=torch.int64, device=collective_device())
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
    return int(value.item())


def _all_sum(values: torch.Tensor, world_size: int) -> torch.Tensor:
    """Element-wise sum over all ranks of a float64 tensor; returned on the CPU."""
    if not _distributed(world_size):
        return values
    values = values.to(collective_device(), copy=True)
    torch.distributed.all_reduce(values)
    return values.cpu()


class StreamComposer:
    """Caption language of each streamed sample, with a given monolingual share per global step.

    Args:
        languages: the language codes of the id axis (every language a caption may have).
        ratio, mode, global_batch_size, rank, world_size, seed, missing_caption_policy:
            as in :class:`trainables.composer.BatchComposer` (checked by ``TrialConfig``).
        train_languages: the languages that may be drawn, uniformly (default: all).
        steps_per_epoch: the nominal number of global steps per epoch, used for the
            learning-rate schedule (:meth:`num_steps`); a pass may end earlier.
    """

    def __init__(self, languages: Sequence[str], *, ratio: float, mode: str, global_batch_size: int, rank: int,
                 world_size: int, seed: int, steps_per_epoch: int, train_languages: Optional[Sequence[str]] = None,
                 missing_caption_policy: str = "redraw") -> None:
        self.languages = canonical_languages(languages, "languages")
        train = check_train_languages(self.languages, train_languages)
        self.train_languages = train
        self.ratio, self.mode, self.seed = float(ratio), mode, int(seed)
        self.global_batch_size, self.rank, self.world_size = global_batch_size, rank, world_size
        self.local_batch_size = global_batch_size // world_size
        self.missing_caption_policy, self.steps_per_epoch = missing_caption_policy, int(steps_per_epoch)
        # [L], uniform over the train languages (a stream's caption counts are unknown until it is read)
        self.language_weights = language_weights(torch.tensor([lang in train for lang in self.languages]))
        self._epoch: Optional[int] = None
        self._reset_counts()

    @classmethod
    def from_config(cls, config: TrialConfig, languages: Sequence[str], rank: int, world_size: int,
                    steps_per_epoch: int) -> "StreamComposer":
        return cls(languages, ratio=config.ratio, mode=config.mode, global_batch_size=config.batch_size,
                   rank=rank, world_size=world_size, seed=config.seed, steps_per_epoch=steps_per_epoch,
                   train_languages=config.train_languages, missing_caption_policy=config.missing_caption_policy)

    def _reset_counts(self) -> None:
        # local counters of the current epoch: items, mono items, redraws, steps, mono steps, per language
        self._counts = torch.zeros(5 + len(self.languages), dtype=torch.float64)

    def num_steps(self, epoch: int = 0) -> int:
        """The nominal global steps per epoch (the schedule's unit)."""
        return self.steps_per_epoch

    def has_train_caption(self, captions: dict[str, str]) -> bool:
        """Whether a sample can take part at all (a caption in some train language)."""
        return any(lang in captions for lang in self.train_languages)

    def step_draws(self, epoch: int, step: int) -> dict[str, Any]:
        """The draws of global step ``step`` of ``epoch`` for THIS rank's ``b`` positions.

        Returns ``mono_slot`` BoolTensor [b], ``lang`` LongTensor [b] (drawn language ids),
        ``u`` DoubleTensor [b] (for redraws), and the step-wide ``mono_step`` (bool, every
        global slot monolingual) and ``step_lang`` (int, -1 when the step has no mono slot).
        """
        drawn = compose_step(self.seed, epoch, step, ratio=self.ratio, mode=self.mode, weights=self.language_weights,
                             batch=self.global_batch_size)
        lo, hi = self.rank * self.local_batch_size, (self.rank + 1) * self.local_batch_size
        return {"mono_slot": drawn.mono_slot[lo:hi].clone(), "lang": drawn.lang[lo:hi], "u": drawn.u[lo:hi],
                "mono_step": bool(drawn.mono_slot.all()),
                "step_lang": drawn.step_lang if bool(drawn.mono_slot.any()) else -1}

    def assign(self, epoch: int, step: int, captions: Sequence[dict[str, str]],
               keys: Optional[Sequence[str]] = None) -> tuple[torch.Tensor, list[str]]:
        """Language ids (LongTensor [b]) and caption texts for this rank's ``b`` samples of a step."""
        if len(captions) != self.local_batch_size:
            raise ComposerError(f"{len(captions)} samples for a local batch of {self.local_batch_size}")
        if self._epoch != epoch:
            self._epoch = int(epoch)
            self._reset_counts()
        draws = self.step_draws(epoch, step)
        lang_ids, texts, redrawn = draws["lang"].clone(), [], 0
        for i, caps in enumerate(captions):
            code = self.languages[int(lang_ids[i])]
            if code not in caps:
                if self.missing_caption_policy == "error":
                    raise MissingCaptionError(missing_caption_message(keys[i] if keys else f"#{i}", code, epoch, step))
                lang_ids[i] = self._redraw(caps, draws["u"][i : i + 1])
                redrawn += 1
                draws["mono_slot"][i] = False  # a redrawn item is not monolingual
            texts.append(caps[self.languages[int(lang_ids[i])]])
        counts = self._counts
        counts[0] += len(captions)
        counts[1] += int(draws["mono_slot"].sum())
        counts[2] += redrawn
        counts[3] += float(self.rank == 0)  # global steps: counted once, by rank 0
        counts[4] += float(self.rank == 0 and draws["mono_step"])
        counts[5:] += torch.bincount(lang_ids, minlength=len(self.languages)).double()
        return lang_ids, texts

    def _redraw(self, captions: dict[str, str], u: torch.Tensor) -> int:
        """A language among the sample's own train languages (``u``: DoubleTensor [1])."""
        allowed = torch.tensor([[lang in captions and lang in self.train_languages for lang in self.languages]])
        if not allowed.any():
            raise ComposerError("a sample without any train-language caption reached the composer")
        return int(redraw_languages(u, allowed, self.language_weights)[0])

    def stats(self) -> dict[str, float]:
        """Realised composition of this epoch's global batches so far (a collective: every rank calls it)."""
        total = _all_sum(self._counts, self.world_size)
        items, steps = float(total[0]), float(total[3])
        shares = total[5:] / max(items, 1.0)
        out = {
            "composition/mono_share": float(total[1]) / items if items else 0.0,
            "composition/mono_step_share": float(total[4]) / steps if steps else 0.0,
            "composition/languages_seen": float((shares > 0).sum()),
            "composition/redraws": float(total[2]),
            "composition/skipped": 0.0,  # a stream skips samples as it reads them: see data/*
        }
        out.update({f"composition/lang_share/{lang}": float(shares[j]) for j, lang in enumerate(self.languages)})
        return out

    def state_dict(self) -> dict[str, Any]:
        """Seed and epoch (a streamed trial checkpoints at epoch ends only)."""
        return {"seed": self.seed, "epoch": self._epoch, "stream": True, "global_batch_size": self.global_batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state.get("stream"):
            raise ComposerError("the checkpoint's composer state is not a streamed one (train_loading changed)")
        if int(state["global_batch_size"]) != self.global_batch_size:
            raise ComposerError(f"composer state has global_batch_size={state['global_batch_size']}, "
                                f"this composer has {self.global_batch_size}")
        self.seed = int(state["seed"])
        self._epoch = None


class StreamTrainSet:
    """This rank's streamed training data, delivered as the step consumes it.

    ``epoch_batches(composer, epoch)`` yields ``(step, images uint8 [b, 3, S, S],
    tokens int64 [b, C])``; ``skipped`` holds the epoch's counts over all ranks
    (``missing_images``, ``unreadable_images``, ``no_train_caption``, ``stream_dropped``),
    filled in when the epoch ends.
    """

    def __init__(self, config: TrialConfig, tokenize: Callable[[list[str]], torch.Tensor], rank: int,
                 world_size: int) -> None:
        shards = expand_shards(config.train_data)
        self.num_samples = sum(count_samples(shard) for shard in shards)  # headers only; rejects corrupt shards
        if self.num_samples < config.batch_size:
            raise ComposerError(f"the shards hold {self.num_samples} samples, fewer than batch_size={config.batch_size}")
        self.config, self.tokenize, self.world_size = config, tokenize, world_size
        self.stream = ShardStream(shards, image_size=config.image_size, rank=rank, world_size=world_size,
                                  shuffle=True, seed=config.seed)
        self.nominal_steps = config.steps_per_epoch or self.num_samples // config.batch_size
        self.skipped: dict[str, int] = dict.fromkeys(SKIP_KEYS, 0)

    def _samples(self, composer: StreamComposer, epoch: int, passes: int, skipped: Counter) -> Iterator[dict]:
        """Decoded usable samples of ``passes`` passes; the others are counted in ``skipped``."""
        from torch.utils.data import DataLoader


        redraw = self.config.missing_caption_policy == "redraw"  # under "error" the composer names the sample
        for index in range(passes):
            self.stream.set_epoch(epoch * 1000 + index)  # a new shard order per epoch and per pass
            loader = DataLoader(self.stream, batch_size=None, num_workers=self.config.loader_workers)
            delivered = 0
            for item in loader:
                if item["skip"] is not None:
                    if item["skip"] == "unreadable_images" and self.config.unreadable_image_policy == "error":
                        raise DataError(f"sample {item['key']}: unreadable image")
                    skipped[item["skip"]] += 1
                elif redraw and not composer.has_train_caption(item["captions"]):
                    skipped["no_train_caption"] += 1
                else:
                    delivered += 1
                    yield item
            if not delivered:
                return  # this split holds no usable sample: do not loop over empty passes

    def epoch_batches(self, composer: StreamComposer, epoch: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """This rank's local batches of ``epoch``, ending on every rank at the same step."""
        local, skipped = composer.local_batch_size, Counter()
        limit = self.config.steps_per_epoch
        samples = self._samples(composer, epoch, 10**9 if limit else 1, skipped)
        step, buffer = 0, []
        while limit is None or step < limit:
            for item in samples:
                buffer.append(item)
                if len(buffer) == local:
                    break
            if _all_min(int(len(buffer) == local), self.world_size) == 0:
                break  # some rank cannot fill its batch: the epoch ends on every rank here
            lang_ids, texts = composer.assign(epoch, step, [s["captions"] for s in buffer], [s["key"] for s in buffer])
            images = torch.stack([s["image"] for s in buffer])
            buffer = []
            yield step, images, self.tokenize(texts).long()
            step += 1
        dropped = len(buffer)
        if limit is None:
            dropped += sum(1 for _ in samples)  # the rest of this rank's pass: read only to be counted
        samples.close()
        skipped["stream_dropped"] += dropped
        totals = _all_sum(torch.tensor([float(skipped[k]) for k in SKIP_KEYS], dtype=torch.float64),
                          self.world_size)
        self.skipped = {k: int(v) for k, v in zip(SKIP_KEYS, totals.tolist())}


__all__ = ["StreamComposer", "StreamTrainSet"]
