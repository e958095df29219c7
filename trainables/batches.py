"""The training set in the form the step consumes: tensors in memory, tokenised once.

Tokenising inside the step would cost more than the tiny model's forward pass, so
every caption is tokenised once per trial. A batch is then two gathers:
``images[idx]`` and ``tokens[idx, lang]``, with no per-sample Python.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from trainables.atomic import atomic_file
from trainables.errors import one_line
from trainables.languages import LANGUAGES
from trainables.tokenizer import captions_digest, truncated_share

log = logging.getLogger(__name__)


@dataclass
class TokenizedTrainSet:
    """images: uint8 [N, 3, H, W]; tokens: int32 [N, L, C] (zeros where missing);
    available: bool [N, L], True where sample n has a caption in ``languages[l]``."""

    images: torch.Tensor
    tokens: torch.Tensor
    available: torch.Tensor
    languages: tuple[str, ...]
    skipped: dict[str, int]
    truncated_share: float = 0.0  # share of the captions longer than the context (end cut off)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batch(self, indices: torch.Tensor, lang_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images [b, 3, H, W] and int64 tokens [b, C] for (sample, language) pairs."""
        return self.images[indices], self.tokens[indices, lang_ids].long()

    def epoch_batches(self, composer, epoch: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """``(step, images, tokens)`` of this rank for every step of ``epoch`` planned by a BatchComposer."""
        for step, indices, lang_ids in composer.local_batches(epoch):
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


def cached_tokenize_set(data, tokenizer, cache: Path, languages: Sequence[str] = LANGUAGES,
                        digest: Optional[str] = None) -> TokenizedTrainSet:
    """:func:`tokenize_set` of ``data`` with ``tokenizer`` (a :class:`~trainables.tokenizer.TextTokenizer`),
    cached in ``cache/text/tokens-<key>.npz``; key = (tokenizer key, captions, languages).
    ``digest``: :func:`~trainables.tokenizer.captions_digest` of ``data.captions`` when the caller
    has it already (computed here otherwise).

    Also measures the share of captions longer than the context; a share above 0 is logged as a
    warning. A cache file that does not load or does not match is rebuilt, with one warning line.
    """
    key = hashlib.sha256(json.dumps([tokenizer.key, digest or captions_digest(data.captions), list(languages)]).encode())
    path = Path(cache) / "text" / f"tokens-{key.hexdigest()[:16]}.npz"
    skipped = dict(getattr(data, "skipped", {}) or {})
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as saved:
                if str(saved["key"]) != key.hexdigest() or saved["tokens"].shape[0] != len(data.captions):
                    raise ValueError("it belongs to other captions or another tokenizer")
                return TokenizedTrainSet(data.images, torch.from_numpy(saved["tokens"].astype(np.int32)),
                                         torch.from_numpy(saved["available"]), tuple(str(x) for x in saved["languages"]),
                                         skipped, float(saved["truncated_share"]))
        except Exception as err:  # noqa: BLE001 - an unusable cache is rebuilt, never used
            log.warning("rebuilding the cached tokenised train set %s: %s", path, one_line(err))
    out = tokenize_set(data, tokenizer.tokenize, languages)
    out.truncated_share = truncated_share([t for row in data.captions for t in row.values() if t], tokenizer)
    with atomic_file(path) as f:
        np.savez(f, key=np.array(key.hexdigest()), tokens=out.tokens.numpy(), available=out.available.numpy(),
                 languages=np.array(out.languages), truncated_share=np.array(out.truncated_share))
    return out
