"""A trial's per-query arrays, :data:`~trainables.mlflow_layout.PER_QUERY_FILE`: the one writer and the reader.

The final evaluation of a trial fills a dict with the AP@k of every query
(:func:`trainables.evaluate.evaluate_embeddings`, ``per_query=``); rank 0 saves it with
:func:`write` as an artifact of the trial's child run (:class:`trainables.trial_run.TrialRun`),
and the study's answer reads it back with :func:`load` (:mod:`study.answer`). Keys:
``monolingual.t2i.{l}``, ``monolingual.i2t.{l}``, ``crosslingual.{a}-{b}``,
``multilingual.i2t``, ``multilingual.t2t.{l}`` (float [Q], AP@k of each query),
``bias.ranks`` (int [Q, L]; ranks start at 1, and 0 marks a caption the data lacks) with ``bias.languages`` (str [L], the column order), and for every
array key K ``K@image`` (int [Q], the test image each query belongs to).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Union

import numpy as np

from trainables.atomic import atomic_file

IMAGE_SUFFIX = "@image"
LANGUAGES_KEY = "bias.languages"  # the one key without an image companion


def check(arrays: Mapping[str, Any]) -> None:
    """ValueError when an array key lacks its ``@image`` companion or their lengths differ."""
    for key, value in arrays.items():
        if key.endswith(IMAGE_SUFFIX) or key == LANGUAGES_KEY:
            continue
        image = arrays.get(key + IMAGE_SUFFIX)
        if image is None or len(image) != len(value):
            raise ValueError(f"{key!r} needs an {key + IMAGE_SUFFIX!r} array of the same length")


def write(path: Union[str, Path], arrays: Mapping[str, Any]) -> Path:
    """Check ``arrays`` (:func:`check`) and write them to ``path`` as a compressed npz, atomically.

    A reader never sees a partial file (:func:`trainables.atomic.atomic_file`). Returns ``path``.
    """
    check(arrays)
    with atomic_file(path) as out:
        np.savez_compressed(out, **{k: np.asarray(v) for k, v in arrays.items()})
    return Path(path)


def load(path: Union[str, Path]) -> dict[str, np.ndarray]:
    """The arrays of a file :func:`write` wrote (no pickles)."""
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


__all__ = ["IMAGE_SUFFIX", "check", "write", "load"]
