"""Multilingual training corpora as a JSONL manifest.

One JSON object per line; blank lines are ignored::

    {"image": "images/0001.jpg", "captions": {"en": "a red circle", "de": "ein roter Kreis", "jp": "赤い丸"}}

* ``image``: path of the image file, relative to the manifest's folder (an absolute
  path is used as is).
* ``captions``: every caption of that image, keyed by language code. Codes go through
  :func:`trainables.languages.canonical_language` (``jp`` is read as ``ja``). Carrying all
  languages lets the batch composer choose the language of each item at batch time.

Bad input, and what happens:

* a line that is not a JSON object, has no ``image``, has no (non-empty) ``captions``,
  names a language the run does not know, or repeats an image -> one
  :class:`~trainables.data.types.DataError` naming the manifest and the line number;
* an empty caption string -> that language is left out of the row, counted in
  ``skipped["empty_captions"]``;
* a missing image file -> the row is skipped, counted in ``skipped["missing_images"]``;
* an image that cannot be decoded -> skipped and counted in
  ``skipped["unreadable_images"]`` (``unreadable_policy="error"`` raises instead).

Skipped images never crash a trial; the counts travel in ``ImageCaptionSet.skipped`` and
the training loop reports them as ``data/*`` metrics.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

import numpy as np
import torch
from PIL import Image

from trainables.data.types import DataError, ImageCaptionSet
from trainables.data.xtd import read_image
from trainables.languages import canonical_language

PathLike = Union[str, os.PathLike]
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
UNREADABLE_POLICIES = ("skip", "error")


@dataclass(frozen=True)
class ManifestEntry:
    """One validated manifest line: the image file and its captions by canonical language."""

    line: int
    image: Path
    name: str
    captions: dict[str, str]


def parse_captions(raw, where: str) -> tuple[dict[str, str], int]:
    """Validate a ``{lang: text}`` object; returns canonical-keyed captions and the number of empty ones.

    ``where`` names the place for error messages (e.g. ``"corpus.jsonl line 7"``).
    Raises :class:`DataError` for a non-object, an unknown language, a non-string caption,
    or when no non-empty caption is left.
    """
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{where}: no captions (expected \"captions\": {{language: text, ...}})")
    captions: dict[str, str] = {}
    empty = 0
    for code, text in raw.items():
        try:
            lang = canonical_language(str(code))
        except ValueError as err:
            raise DataError(f"{where}: {err}") from None
        if not isinstance(text, str):
            raise DataError(f"{where}: caption for {code!r} must be a string, got {type(text).__name__}")
        if lang in captions:
            raise DataError(f"{where}: language {lang!r} given twice (as {code!r})")
        if text.strip():
            captions[lang] = text.strip()
        else:
            empty += 1
    if not captions:
        raise DataError(f"{where}: no captions (every caption is empty)")
    return captions, empty


def iter_manifest(path: PathLike) -> Iterator[tuple[ManifestEntry, int]]:
    """Validated entries of a manifest, each with its number of empty captions; see the module doc."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest not found: {path}")
    base = path.parent
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8-sig") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            where = f"{path.name} line {number}"
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: not valid JSON ({err.msg}): {path}") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object with \"image\" and \"captions\": {path}")
            image = record.get("image")
            if not isinstance(image, str) or not image.strip():
                raise DataError(f"{where}: no \"image\" path: {path}")
            captions, empty = parse_captions(record.get("captions"), where)
            name = image.strip()
            if name in seen:
                raise DataError(f"{where}: image {name!r} is already listed on line {seen[name]}: {path}")
            seen[name] = number
            yield ManifestEntry(number, base / name, name, captions), empty


def decode_image(source, image_size: int) -> np.ndarray:
    """uint8 ``[3, S, S]`` (writable) from a path or encoded bytes.

    Same decoding and resize as the XTD loader (shorter side to S, bicubic, centre crop).
    """
    return np.array(read_image(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source, image_size))


def read_manifest(path: PathLike, *, image_size: int, unreadable_policy: str = "skip") -> ImageCaptionSet:
    """Load a JSONL manifest into memory: every readable image resized to ``image_size``.

    All lines are validated before any image is decoded, so a bad line fails fast.
    Returns an :class:`ImageCaptionSet` whose ``names`` are the manifest's image paths and
    whose ``skipped`` holds ``missing_images``, ``unreadable_images`` and ``empty_captions``.
    """
    if unreadable_policy not in UNREADABLE_POLICIES:
        raise DataError(f"unreadable_policy={unreadable_policy!r}: must be one of {', '.join(UNREADABLE_POLICIES)}")
    parsed = list(iter_manifest(path))
    if not parsed:
        raise DataError(f"manifest lists no images: {path}")
    entries = [entry for entry, _ in parsed]
    skipped = {"missing_images": 0, "unreadable_images": 0, "empty_captions": sum(e for _, e in parsed)}
    images = torch.empty((len(entries), 3, image_size, image_size), dtype=torch.uint8)
    kept: list[ManifestEntry] = []
    for entry in entries:
        if not entry.image.is_file():
            skipped["missing_images"] += 1
            continue
        try:
            array = decode_image(entry.image, image_size)
        except IMAGE_ERRORS as err:
            if unreadable_policy == "error":
                raise DataError(f"{Path(path).name} line {entry.line}: unreadable image {entry.name} "
                                f"({type(err).__name__}): {entry.image}") from None
            skipped["unreadable_images"] += 1
            continue
        images[len(kept)] = torch.from_numpy(array)
        kept.append(entry)
    if not kept:
        raise DataError(f"no readable images in manifest {path} ({skipped['missing_images']} missing, "
                        f"{skipped['unreadable_images']} unreadable of {len(entries)} listed)")
    return ImageCaptionSet(images=images[:len(kept)], captions=[e.captions for e in kept],
                           names=[e.name for e in kept], skipped=skipped)


__all__ = ["ManifestEntry", "parse_captions", "iter_manifest", "read_manifest", "decode_image", "IMAGE_ERRORS"]
