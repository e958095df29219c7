"""Multilingual training corpora as WebDataset tar shards: writing, streaming and loading.

Format (the WebDataset convention, readable by ``webdataset.WebDataset`` too): each
sample is a run of consecutive tar members sharing a key, the file name up to the
first dot of its base name::

    000000042.jpg    the image (jpg, jpeg, png, webp, bmp, gif, tif, tiff)
    000000042.json   {"captions": {"en": "...", "de": "...", "ja": "..."}}

A flat ``{"en": "...", ...}`` JSON is accepted too. Language codes go through
:func:`~trainables.languages.canonical_language` (``jp`` -> ``ja``).

Three readers:

* :func:`iter_shard` - the samples of one shard, in order (raw image bytes).
* :class:`ShardStream` - a ``torch`` ``IterableDataset`` split by Ray Train rank AND by
  DataLoader worker: with R ranks and W workers there are R*W splits, and every
  sample of an epoch goes to exactly one split (none read twice, none lost). With at
  least R*W shards, whole shards are dealt out; with fewer, every split scans all
  shards and keeps every (R*W)-th sample. Split sizes may differ by up to a shard,
  so a DDP loop over a stream must agree on its step count.
* :func:`load_shards` - materialises all shards into an in-memory
  :class:`~trainables.data.types.ImageCaptionSet` at ``image_size``; this is what the
  trainer uses by default (:func:`trainables.data.sources.load_train_set`); with
  ``train_loading="stream"`` it reads a :class:`ShardStream` instead (:mod:`trainables.stream`).

Memory of the in-memory trainer: the decoded train split is held in RAM as uint8
``[N, 3, S, S]``, i.e. ``3 * S * S`` bytes per image - 3 KiB at S=32, 147 KiB at
S=224, so 100k images take about 14 GiB at 224 px - and every Ray Train worker
process holds its own copy (4 workers on one node hold 4 copies). Tokens add
``4 * languages * context_length`` bytes per image (3.4 KiB for 11 languages x 77).
Larger corpora need a smaller ``image_size`` or ``train_loading="stream"``.

Bad input: a shard that is not a readable tar (corrupt, truncated, not a tar) is one
:class:`~trainables.data.types.DataError` naming the shard - not a silent skip, since
it would drop a whole shard's samples. A sample without a caption JSON, or with invalid
JSON, no captions or an unknown language, is a ``DataError`` naming shard and key.
A sample without an image is skipped and counted (``missing_images``); an image that
does not decode is skipped and counted (``unreadable_images``).
"""

from __future__ import annotations

import glob
import io
import json
import os
import random
import re
import tarfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import torch
from torch.utils.data import IterableDataset, get_worker_info

from trainables.data.corpora import IMAGE_ERRORS, decode_image, parse_captions
from trainables.data.types import DataError, ImageCaptionSet

PathLike = Union[str, os.PathLike]
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
CAPTIONS_EXT = "json"
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_KEY = re.compile(r"^((?:.*/|)[^./][^.]*)\.([^/]*)$")
_TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


# ---------------------------------------------------------------------------
# shard lists
# ---------------------------------------------------------------------------
def is_shard_spec(spec: str) -> bool:
    """Whether ``spec`` looks like WebDataset shards: a tar file, a brace/glob pattern of them, or a folder."""
    text = str(spec)
    return text.endswith(SHARD_SUFFIXES) or any(c in text for c in "{*?[") or Path(text).is_dir()


def expand_shards(spec: Union[PathLike, Sequence[PathLike]]) -> list[Path]:
    """Local shard paths of ``spec``: a ``.tar`` file, brace pattern (``shard-{000..009}.tar``),
    glob (``shards/*.tar``), a folder (its ``*.tar``/``*.tar.gz``), ``::``-separated specs, or a list.

    Raises :class:`DataError` when nothing matches or a named shard does not exist.
    """
    import braceexpand  # a dependency of webdataset

    if isinstance(spec, (list, tuple)):
        return [p for item in spec for p in expand_shards(item)]
    paths: list[Path] = []
    for part in str(spec).split("::"):
        if "://" in part:
            raise DataError(f"shards must be local paths, visible on every training worker: {part} "
                            "(copy them to, or mount them on, the workers)")
        for item in braceexpand.braceexpand(part):
            if Path(item).is_dir():
                found = sorted(p for p in Path(item).iterdir() if p.name.endswith(SHARD_SUFFIXES))
                if not found:
                    raise DataError(f"no shards ({', '.join(SHARD_SUFFIXES)}) in folder {item}")
                paths.extend(found)
            elif any(c in item for c in "*?["):
                found = sorted(Path(p) for p in glob.glob(item) if p.endswith(SHARD_SUFFIXES))
                if not found:
                    raise DataError(f"no shards match {item}")
                paths.extend(found)
            elif Path(item).is_file():
                paths.append(Path(item))
            else:
                raise DataError(f"shard not found: {item}")
    return list(dict.fromkeys(paths))


def split_key(member: str) -> tuple[Optional[str], Optional[str]]:
    """(key, extension) of a tar member name, the WebDataset way; (None, None) for names without one."""
    match = _KEY.match(member)
    return (match.group(1), match.group(2).lower()) if match else (None, None)


# ---------------------------------------------------------------------------
# reading one shard
# ---------------------------------------------------------------------------
@dataclass
class RawSample:
    """One sample of a shard: its key, encoded image (None if absent) and validated captions."""

    shard: Path
    key: str
    image: Optional[bytes]
    captions: dict[str, str]
    empty_captions: int = 0

    @property
    def name(self) -> str:
        """A name unique across shards: ``<shard stem>/<key>``."""
        return f"{_stem(self.shard)}/{self.key}"


def _stem(path: Path) -> str:
    name = path.name
    for suffix in SHARD_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _grouped_members(tar: tarfile.TarFile, shard: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) for each run of consecutive members sharing a key."""
    key, parts = None, {}
    for member in tar:
        if not member.isfile():
            continue
        k, ext = split_key(member.name)
        if k is None:
            continue
        if k != key:
            if key is not None:
                yield key, parts
            key, parts = k, {}
        if ext in parts:
            raise DataError(f"corrupt shard {shard}: member {member.name} appears twice in sample {k}")
        handle = tar.extractfile(member)
        parts[ext] = handle.read() if handle is not None else b""
    if key is not None:
        yield key, parts


def _to_sample(shard: Path, key: str, parts: dict[str, bytes]) -> RawSample:
    where = f"shard {shard.name} sample {key}"
    if CAPTIONS_EXT not in parts:
        raise DataError(f"{where}: no captions (.{CAPTIONS_EXT} member missing): {shard}")
    try:
        record = json.loads(parts[CAPTIONS_EXT].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{where}: captions are not valid JSON ({err}): {shard}") from None
    raw = record.get("captions", record) if isinstance(record, dict) else record
    captions, empty = parse_captions(raw, where)
    image = next((parts[ext] for ext in IMAGE_EXTS if ext in parts), None)
    return RawSample(shard, key, image, captions, empty)


class _EndCheckingTarInfo(tarfile.TarInfo):
    """Records whether the archive ended with its end-of-archive block.

    ``tarfile`` treats a file that stops at (or inside) a header as a normal end; a shard
    cut short by a failed copy looks complete to it. A written tar ends with zero blocks.
    """

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except tarfile.EOFHeaderError:
            tar.mlclip_clean_end = True
            raise


def _corrupt(shard: Path, err: BaseException) -> DataError:
    return DataError(f"corrupt shard {shard} ({type(err).__name__}: {err}); re-create it or leave it out of "
                     "train_data")


def _check_end(tar: tarfile.TarFile) -> None:
    if not getattr(tar, "mlclip_clean_end", False):
        raise tarfile.ReadError("no end-of-archive marker: the file is truncated")


def iter_shard(path: PathLike) -> Iterator[RawSample]:
    """The samples of one shard in tar order. Raises :class:`DataError` for a corrupt or truncated shard."""
    shard = Path(path)
    try:
        with tarfile.open(shard, mode="r|*", tarinfo=_EndCheckingTarInfo) as tar:
            for key, parts in _grouped_members(tar, shard):
                yield _to_sample(shard, key, parts)
            _check_end(tar)
    except _TAR_ERRORS as err:
        raise _corrupt(shard, err) from None


def count_samples(path: PathLike) -> int:
    """Number of samples (keys) in a shard, from its member headers; checks the shard is complete."""
    shard = Path(path)
    try:
        with tarfile.open(shard, mode="r:*", tarinfo=_EndCheckingTarInfo) as tar:
            keys = [split_key(m.name)[0] for m in tar.getmembers() if m.isfile()]
            _check_end(tar)
    except _TAR_ERRORS as err:
        raise _corrupt(shard, err) from None
    return sum(1 for i, k in enumerate(keys) if k is not None and (i == 0 or keys[i - 1] != k))


def _decode(raw: RawSample, image_size: int) -> tuple[Optional[torch.Tensor], Optional[str]]:
    """(uint8 [3, S, S], None) or (None, skip reason)."""
    if raw.image is None:
        return None, "missing_images"
    try:
        return torch.from_numpy(decode_image(raw.image, image_size)), None
    except IMAGE_ERRORS:
        return None, "unreadable_images"


# ---------------------------------------------------------------------------
# streaming
# ---------------------------------------------------------------------------
def _default_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardStream(IterableDataset):
    """Samples of a shard set, split by rank and by DataLoader worker (see the module doc).

    Each item is a dict: ``key`` (unique name), ``image`` (uint8 ``[3, S, S]``, or None when
    skipped), ``captions`` ({lang: text}), ``skip`` (None, ``missing_images`` or
    ``unreadable_images``). Skipped samples are yielded, not dropped, so their counts
    reach the consumer from any worker process; :func:`collate_samples` drops and counts them.

    Args:
        shards: a shard spec (see :func:`expand_shards`) or a list of paths.
        image_size: decoded images are resized to ``image_size`` x ``image_size``.
        rank, world_size: this process's place among the training workers; default from
            ``torch.distributed`` when initialised, else 0 and 1.
        shuffle: permute the shard order every epoch (the same permutation on every split).
        seed: base seed of that permutation; call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, shards, *, image_size: int, rank: Optional[int] = None, world_size: Optional[int] = None,
                 shuffle: bool = True, seed: int = 0) -> None:
        super().__init__()
        self.shards = expand_shards(shards)
        default_rank, default_world = _default_rank_world()
        self.rank = default_rank if rank is None else int(rank)
        self.world_size = default_world if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world_size {self.world_size}")
        self.image_size, self.shuffle, self.seed, self.epoch = image_size, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's shard order (DataLoader workers copy the dataset when an epoch starts)."""
        self.epoch = int(epoch)

    def shard_order(self) -> list[Path]:
        """This epoch's shard order, identical on every rank and worker."""
        order = list(self.shards)
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def split(self) -> tuple[int, int]:
        """(this split's index, number of splits) from rank, world size and DataLoader worker."""
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return self.rank * workers + worker, self.world_size * workers

    def raw_samples(self) -> Iterator[RawSample]:
        """This split's undecoded samples of the epoch."""
        index, splits = self.split()
        order = self.shard_order()
        if len(order) >= splits:  # deal whole shards out
            for shard in order[index::splits]:
                yield from iter_shard(shard)
            return
        position = 0  # fewer shards than splits: every split scans all, keeps every splits-th sample
        for shard in order:
            for raw in iter_shard(shard):
                if position % splits == index:
                    yield raw
                position += 1

    def __iter__(self) -> Iterator[dict]:
        for raw in self.raw_samples():
            image, skip = _decode(raw, self.image_size)
            yield {"key": raw.name, "image": image, "captions": raw.captions, "skip": skip}


def collate_samples(batch: Sequence[dict]) -> dict:
    """DataLoader ``collate_fn`` for :class:`ShardStream`: stacks the good samples and counts the skipped.

    Returns ``images`` (uint8 ``[b, 3, S, S]``), ``captions``, ``keys`` and ``skipped`` ({reason: count}).
    """
    good = [item for item in batch if item["skip"] is None]
    skipped = Counter(item["skip"] for item in batch if item["skip"] is not None)
    images = torch.stack([item["image"] for item in good]) if good else torch.empty((0, 3, 0, 0), dtype=torch.uint8)
    return {"images": images, "captions": [item["captions"] for item in good],
            "keys": [item["key"] for item in good], "skipped": dict(skipped)}


# ---------------------------------------------------------------------------
# materialising for the in-memory trainer
# ---------------------------------------------------------------------------
def load_shards(spec, *, image_size: int, unreadable_policy: str = "skip") -> ImageCaptionSet:
    """All samples of ``spec`` decoded into RAM at ``image_size`` (see the module doc for the size).

    ``skipped`` counts ``missing_images``, ``unreadable_images``, ``empty_captions`` and
    ``duplicate_samples`` (a key repeated within a shard; the first one is kept).
    ``unreadable_policy="error"`` turns an undecodable image into a :class:`DataError`.
    """
    shards = expand_shards(spec)
    capacity = sum(count_samples(shard) for shard in shards)  # also rejects unreadable shards early
    stems = [_stem(shard) for shard in shards]
    label = {shard: (stem if stems.count(stem) == 1 else str(shard)) for shard, stem in zip(shards, stems)}
    images = torch.empty((capacity, 3, image_size, image_size), dtype=torch.uint8)
    captions, names, seen = [], [], set()
    skipped = Counter(missing_images=0, unreadable_images=0, empty_captions=0, duplicate_samples=0)
    for shard in shards:
        for raw in iter_shard(shard):
            skipped["empty_captions"] += raw.empty_captions
            name = f"{label[shard]}/{raw.key}"  # unique even for equal shard names in two folders
            if name in seen:
                skipped["duplicate_samples"] += 1
                continue
            if len(names) >= capacity:
                raise DataError(f"shard {shard} changed while it was being loaded")
            image, skip = _decode(raw, image_size)
            if skip == "unreadable_images" and unreadable_policy == "error":
                raise DataError(f"shard {shard.name} sample {raw.key}: unreadable image: {shard}")
            if skip is not None:
                skipped[skip] += 1
                continue
            images[len(names)] = image
            captions.append(raw.captions)
            names.append(name)
            seen.add(name)
    if not names:
        raise DataError(f"no readable samples in shards {spec} ({dict(skipped)})")
    return ImageCaptionSet(images=images[: len(names)], captions=captions, names=names, skipped=dict(skipped))


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------
class ShardWriter:
    """Writes samples into ``dest/{prefix}-{000000}.tar`` shards of ``per_shard`` samples each.

    A shard is written as ``*.tar.part`` and renamed when complete, so a reader globbing
    ``*.tar`` never sees half a shard. Use as a context manager; :attr:`paths` lists the shards.
    """

    def __init__(self, dest: PathLike, *, per_shard: int = 1000, prefix: str = "shard") -> None:
        if per_shard < 1:
            raise ValueError(f"per_shard={per_shard}: must be a positive integer")
        self.dest, self.per_shard, self.prefix = Path(dest), per_shard, prefix
        self.dest.mkdir(parents=True, exist_ok=True)
        self.paths: list[Path] = []
        self._tar: Optional[tarfile.TarFile] = None
        self._count = 0

    def add(self, key: str, image: bytes, image_ext: str, captions: dict[str, str]) -> None:
        """Append one sample (encoded image bytes with its extension, and its captions)."""
        ext = image_ext.lower().lstrip(".")
        if ext not in IMAGE_EXTS:
            raise DataError(f"sample {key}: image extension .{ext} is not one of {', '.join(IMAGE_EXTS)}")
        if "." in key or "/" in key:
            raise DataError(f"sample key {key!r} must not contain '.' or '/'")
        if self._tar is None or self._count == self.per_shard:
            self._roll()
        text = json.dumps({"captions": captions}, ensure_ascii=False, sort_keys=True).encode("utf-8")
        self._member(f"{key}.{ext}", image)
        self._member(f"{key}.{CAPTIONS_EXT}", text)
        self._count += 1

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        self._tar.addfile(info, io.BytesIO(data))

    def _roll(self) -> None:
        self._close_current()
        path = self.dest / f"{self.prefix}-{len(self.paths):06d}.tar"
        self._tar = tarfile.open(path.with_name(path.name + ".part"), mode="w")
        self.paths.append(path)
        self._count = 0

    def _close_current(self) -> None:
        if self._tar is not None:
            self._tar.close()
            part = self.paths[-1].with_name(self.paths[-1].name + ".part")
            os.replace(part, self.paths[-1])
            self._tar = None

    def close(self) -> list[Path]:
        """Finish the last shard; returns all shard paths."""
        self._close_current()
        return self.paths

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._tar is not None:  # an error: drop the unfinished shard, keep the finished ones
            self._tar.close()
            self._tar = None
            unfinished = self.paths.pop()
            unfinished.with_name(unfinished.name + ".part").unlink(missing_ok=True)


def write_image_set(data, dest: PathLike, *, per_shard: int = 1000, prefix: str = "train") -> list[Path]:
    """Write an in-memory set (``images`` uint8 ``[N, 3, H, W]``, ``captions``) as shards of lossless PNGs.

    Sample ``i`` gets the key ``{i:06d}``; returns the shard paths. Used to turn the synthetic
    split into shards for the streamed path's tests and benchmark.
    """
    from PIL import Image

    with ShardWriter(dest, per_shard=per_shard, prefix=prefix) as writer:
        for i, (image, captions) in enumerate(zip(data.images, data.captions)):
            buf = io.BytesIO()
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, format="PNG")
            writer.add(f"{i:06d}", buf.getvalue(), "png", captions)
    return writer.paths


__all__ = ["expand_shards", "is_shard_spec", "split_key", "RawSample", "iter_shard", "count_samples",
           "ShardStream", "collate_samples", "load_shards", "ShardWriter", "write_image_set", "IMAGE_EXTS"]
