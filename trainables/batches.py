"""The training set in the form the step consumes: tensors in memory, tokenised once.

Tokenising inside the step would cost more than the tiny model's forward pass, so
every caption is tokenised once per trial. A batch is then two gathers:
``images[idx]`` and ``tokens[idx, lang]``, with no per-sample Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from trainables.languages import LANGUAGES


@dataclass
class TokenizedTrainSet:
    """images: uint8 [N, 3, H, W]; tokens: int32 [N, L, C] (zeros where missing);
    available: bool [N, L], True where sample n has a caption in ``languages[l]``."""

    images: torch.Tensor
    tokens: torch.Tensor
    available: torch.Tensor
    languages: tuple[str, ...]
    skipped: dict[str, int]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batch(self, indices: torch.Tensor, lang_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images [b, 3, H, W] and int64 tokens [b, C] for (sample, language) pairs."""
        return self.images[indices], self.tokens[indices, lang_ids].long()

    def epoch_batches(self, composer, epoch: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """``(step, images, tokens)`` of this rank for every step of ``epoch`` planned by a BatchComposer."""
        for step, indices, lang_ids in composer.local_batches(epoch, start_step=0):
            images, tokens = self.batch(indices, lang_ids)
            yield step, images, tokens


def tokenize_set(data, tokenize: Callable[[list[str]], torch.Tensor], languages: Sequence[str] = LANGUAGES,
                 chunk: int = 4096) -> TokenizedTrainSet:
    """Tokenise every caption of an ``ImageCaptionSet``-like ``data`` (``images``, ``captions``).

    Languages that no sample has are dropped from the language axis.
    """
    present = [lang for lang in languages if any(lang in caps for caps in data.captions)]
    n = len(data.captions)
    available = torch.zeros(n, len(present), dtype=torch.bool)
    tokens = None
    for j, lang in enumerate(present):
        rows = [i for i, caps in enumerate(data.captions) if lang in caps]
        texts = [data.captions[i][lang] for i in rows]
        encoded = torch.cat([tokenize(texts[s:s + chunk]) for s in range(0, len(texts), chunk)]) if texts else None
        if encoded is None:
            continue
        if tokens is None:
            tokens = torch.zeros(n, len(present), encoded.shape[1], dtype=torch.int32)
        tokens[torch.tensor(rows), j] = encoded.to(torch.int32)
        available[torch.tensor(rows), j] = True
    if tokens is None:
        raise ValueError("the training set holds no caption in any known language")
    return TokenizedTrainSet(data.images, tokens, available, tuple(present), dict(getattr(data, "skipped", {}) or {}))
