"""In-memory image-caption data shared by every data source, and the data error type."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import torch

from trainables.languages import LANGUAGES


class DataError(ValueError):
    """Bad or unusable input data. The message is one line naming the file/folder and the problem."""


@dataclass
class ImageCaptionSet:
    """Images with captions in several languages, aligned by row.

    Attributes:
        images: uint8 tensor ``[N, 3, H, W]``, RGB.
        captions: ``N`` dicts, canonical language code -> caption of that row's image.
            A language may be absent from a row (no caption in that language).
        names: ``N`` unique image names (file names for XTD data).
        skipped: counts of items left out or flagged while loading, e.g.
            ``{"missing_images": 0, "unreadable_images": 2, "empty_captions": 1}``.
    """

    images: torch.Tensor
    captions: list[dict[str, str]]
    names: list[str]
    skipped: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise DataError(f"images must be uint8 [N, 3, H, W]; got {self.images.dtype} {tuple(self.images.shape)}")
        n = self.images.shape[0]
        if len(self.captions) != n or len(self.names) != n:
            raise DataError(f"{n} images but {len(self.captions)} caption rows and {len(self.names)} names")
        if len(set(self.names)) != n:
            dupes = [name for name, count in Counter(self.names).items() if count > 1]
            raise DataError(f"image names must be unique; duplicated: {', '.join(dupes[:5])}")

    def __len__(self) -> int:
        return len(self.names)

    def languages(self) -> tuple[str, ...]:
        """Languages with at least one caption, in canonical order (unknown codes last, sorted)."""
        present = {lang for row in self.captions for lang in row}
        known = [lang for lang in LANGUAGES if lang in present]
        return tuple(known + sorted(present - set(known)))

    def caption_counts(self) -> dict[str, int]:
        """Number of rows that have a caption, per language (languages in :meth:`languages` order)."""
        counts = Counter(lang for row in self.captions for lang in row)
        return {lang: counts[lang] for lang in self.languages()}

    def select(self, indices: Sequence[int]) -> "ImageCaptionSet":
        """A new set with rows ``indices`` (in that order); ``skipped`` is copied unchanged."""
        idx = [int(i) for i in indices]
        return ImageCaptionSet(
            images=self.images[torch.as_tensor(idx, dtype=torch.long)] if idx else self.images[:0],
            captions=[dict(self.captions[i]) for i in idx],
            names=[self.names[i] for i in idx],
            skipped=dict(self.skipped),
        )
