"""Where a trial's training data comes from: ``config.train_data`` -> an in-memory train split.

``train_data`` is one of

* ``"synthetic"``: the offline generated data (:func:`trainables.data.synthetic.load_synthetic`);
  its test split (XTD layout) is the default evaluation folder;
* a JSONL manifest (``*.jsonl``; :mod:`trainables.data.corpora`);
* WebDataset shards: a ``.tar`` file, a brace pattern (``shards/train-{000000..000099}.tar``),
  a glob (``shards/*.tar``), a folder of shards, or ``::``-separated specs
  (:mod:`trainables.data.shards`).

Every image is decoded and resized to ``config.image_size`` and the whole split is held
in RAM by each training worker (``3 * image_size**2`` bytes per image; see
:mod:`trainables.data.shards` for sizes); shards can be streamed instead
(``train_loading="stream"``, :mod:`trainables.stream`). Paths are read on the training workers, so on a
cluster they must be visible there (a shared file system, or baked into the image).
For real data the evaluation folder is ``config.eval_data`` (an XTD-layout folder).
"""

from __future__ import annotations

from pathlib import Path

from trainables.config import ConfigError, TrialConfig
from trainables.data.corpora import read_manifest
from trainables.data.shards import is_shard_spec
from trainables.data.shards import load_shards
from trainables.data.synthetic import load_synthetic
from trainables.data.types import ImageCaptionSet

SYNTHETIC = "synthetic"
MANIFEST_SUFFIXES = (".jsonl",)


def train_data_kind(train_data: str) -> str:
    """``synthetic``, ``manifest`` or ``shards`` for a ``train_data`` value; ConfigError otherwise."""
    if train_data == SYNTHETIC:
        return "synthetic"
    if str(train_data).endswith(MANIFEST_SUFFIXES):
        return "manifest"
    if is_shard_spec(train_data):
        return "shards"
    raise ConfigError(
        f"train_data={train_data!r}: not 'synthetic', a JSONL manifest (*.jsonl) or WebDataset shards "
        "(a .tar file, a brace pattern or glob of them, or a folder of .tar files)"
    )


def check_eval_data(config: TrialConfig) -> Path:
    """The evaluation folder of a trial on real training data; ConfigError for ``eval_data='synthetic'``."""
    if config.eval_data == SYNTHETIC:
        raise ConfigError(
            f"eval_data='synthetic' only goes with train_data='synthetic'; with train_data={config.train_data!r} "
            "give eval_data as an XTD-layout folder (e.g. the one `python -m study.data xtd10 --dest DIR` makes)"
        )
    return Path(config.eval_data)


def load_train_set(config: TrialConfig) -> tuple[ImageCaptionSet, Path]:
    """The training split of ``config`` in memory, and the default evaluation folder (XTD layout).

    Raises :class:`ConfigError` for a ``train_data`` value of no known kind, or for real
    training data combined with ``eval_data="synthetic"`` (the synthetic test split only
    exists next to the synthetic train split); :class:`~trainables.data.types.DataError`
    for bad data (see :mod:`trainables.data.corpora` and :mod:`trainables.data.shards`).
    """
    kind = train_data_kind(config.train_data)
    if kind == "synthetic":
        return load_synthetic(config)
    check_eval_data(config)
    if kind == "manifest":
        data = read_manifest(config.train_data, image_size=config.image_size,
                             unreadable_policy=config.unreadable_image_policy)
    else:
        data = load_shards(config.train_data, image_size=config.image_size,
                           unreadable_policy=config.unreadable_image_policy)
    return data, Path(config.eval_data)


__all__ = ["check_eval_data", "load_train_set", "train_data_kind"]
