"""The trial's metrics recomputed from its per-query arrays, optionally under image weights.

The same definitions as the trial's own (:mod:`trainables.evaluate`), written over the means of
per-query values so that a bootstrap over test images can reweight them;
``tests/test_per_query_contract.py`` holds the two together (every setting and family, 1e-6).

Input (one ``per_query_ap.npz`` per trial, written by :func:`trainables.per_query.write`):
``monolingual.t2i.{l}``, ``monolingual.i2t.{l}``, ``crosslingual.{a}-{b}``,
``multilingual.i2t``, ``multilingual.t2t.{l}`` (float [Q], AP@100 of each query),
``bias.ranks`` (int [Q, L], rank of image q's caption in language j over the whole
pool; 0 where the image has no caption in j) with ``bias.languages`` (str [L], the column
order), and for every array key K ``K@image`` (int [Q], the test image 0..N-1 each query belongs to). Only the languages
whose keys are present count.

Metrics (:func:`metric_values`, keyed ``(setting, family)``; the same definitions as the
trial's own, :mod:`trainables.evaluate`):

* ``monolingual``: lang value of l = mean(mean t2i_l, mean i2t_l); family f = mean of f's
  lang values; ``all`` = mean over languages.
* ``crosslingual``: lang value of a = mean over b of mean(pair a-b); family over lang
  values; ``all`` = mean over all pairs.
* ``multilingual``: family f = mean over f's languages of mean(t2t_l); ``all`` = mean over
  languages of mean(t2t_l) (caption -> caption only, like the families); ``i2t+t2t`` (the
  study's objective) = mean(mean i2t, ``all``), or mean i2t alone with one language.
* ``bias``: ``all`` = max minus min over languages of the mean over images of
  ``bias.ranks[:, j]`` (lower is better).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from trainables.languages import FAMILIES, LANGUAGES, family_of
from trainables.per_query import IMAGE_SUFFIX

SETTINGS = ("monolingual", "crosslingual", "multilingual", "bias")
OBJECTIVE = ("multilingual", "i2t+t2t")
COLUMNS = ("setting", "family", "ratio", "mean", "ci_low", "ci_high", "n_seeds")
LOWER_IS_BETTER = frozenset({"bias"})
_FAMILY_ORDER = (*FAMILIES, "all", "i2t+t2t")

Value = Union[float, np.ndarray]


def _lang_order(langs) -> list[str]:
    return sorted(set(langs), key=lambda code: (LANGUAGES.index(code) if code in LANGUAGES else len(LANGUAGES), code))


def _query_arrays(arrays: dict) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, values float64 [Q], image index int [Q]) of every mean the metrics use; ``bias.ranks``
    contributes one column per language, named ``bias.rank.{l}``."""
    out = []
    for key, value in arrays.items():
        if key.endswith(IMAGE_SUFFIX) or key in ("bias.languages", "bias.ranks"):
            continue
        out.append((key, np.asarray(value, dtype=np.float64), np.asarray(arrays[key + IMAGE_SUFFIX])))
    if "bias.ranks" in arrays:
        ranks = np.asarray(arrays["bias.ranks"], dtype=np.float64)
        image = np.asarray(arrays["bias.ranks" + IMAGE_SUFFIX])
        for j, lang in enumerate(np.asarray(arrays["bias.languages"]).astype(str)):
            present = ranks[:, j] > 0
            out.append((f"bias.rank.{lang}", ranks[present, j], image[present]))
    return out


def _mean(values: Sequence[Value]) -> Value:
    return sum(values) / len(values)


def _by_family(per_lang: dict[str, Value], setting: str) -> dict[tuple[str, str], Value]:
    out = {}
    for family in FAMILIES:
        members = [v for lang, v in per_lang.items() if family_of(lang) == family]
        if members:
            out[setting, family] = _mean(members)
    return out


def _combine(means: dict[str, Value]) -> dict[tuple[str, str], Value]:
    """Metrics ``{(setting, family): value}`` from the per-key query means (floats or [R] arrays)."""
    out: dict[tuple[str, str], Value] = {}
    # monolingual
    mono = {}
    for lang in _lang_order(k.split(".")[2] for k in means if k.startswith(("monolingual.t2i.", "monolingual.i2t."))):
        mono[lang] = _mean([means[k] for k in (f"monolingual.t2i.{lang}", f"monolingual.i2t.{lang}") if k in means])
    if mono:
        out.update(_by_family(mono, "monolingual"))
        out["monolingual", "all"] = _mean(list(mono.values()))
    # crosslingual
    pairs = {tuple(k[len("crosslingual."):].split("-")): v for k, v in means.items() if k.startswith("crosslingual.")}
    if pairs:
        cross = {a: _mean([v for (qa, _), v in pairs.items() if qa == a]) for a in _lang_order(a for a, _ in pairs)}
        out.update(_by_family(cross, "crosslingual"))
        out["crosslingual", "all"] = _mean(list(pairs.values()))
    # multilingual
    t2t = {lang: means[f"multilingual.t2t.{lang}"]
           for lang in _lang_order(k.split(".")[2] for k in means if k.startswith("multilingual.t2t."))}
    if t2t:
        out.update(_by_family(t2t, "multilingual"))
        out["multilingual", "all"] = _mean(list(t2t.values()))
    if "multilingual.i2t" in means:
        i2t = means["multilingual.i2t"]
        out[OBJECTIVE] = _mean([i2t, out["multilingual", "all"]]) if t2t else i2t
    # bias
    ranks = [v for k, v in means.items() if k.startswith("bias.rank.")]
    if ranks:
        out["bias", "all"] = np.max(ranks, axis=0) - np.min(ranks, axis=0)
        if np.ndim(out["bias", "all"]) == 0:
            out["bias", "all"] = float(out["bias", "all"])
    return out


class _Design:
    """A trial's per-image sums, so that weighted query means are one matrix product.

    For every query mean ``name``: sums[:, k] = sum over queries of image n of the values,
    counts[:, u] = number of queries of image n (columns shared between keys with the same
    image index). With image weights W [R, N], the weighted mean is
    (W @ sums[:, k]) / (W @ counts[:, u]).
    """

    def __init__(self, arrays: dict, n_images: int):
        items = _query_arrays(arrays)
        self.names = [name for name, _, _ in items]
        sums = np.zeros((n_images, len(items)))
        count_cols: dict[bytes, int] = {}
        counts, self.count_of = [], []
        for k, (_, values, image) in enumerate(items):
            sums[:, k] = np.bincount(image, weights=values, minlength=n_images)
            tag = image.tobytes()
            if tag not in count_cols:
                count_cols[tag] = len(counts)
                counts.append(np.bincount(image, minlength=n_images).astype(np.float64))
            self.count_of.append(count_cols[tag])
        self.matrix = np.column_stack([sums, *counts]) if items else np.zeros((n_images, 0))

    def means(self, products: np.ndarray) -> dict[str, np.ndarray]:
        """Query means per name from ``products = W @ self.matrix`` ([R, columns])."""
        k = len(self.names)
        with np.errstate(invalid="ignore", divide="ignore"):
            return {name: products[:, j] / products[:, k + self.count_of[j]] for j, name in enumerate(self.names)}


def _n_images(arrays: dict) -> int:
    return max((int(np.max(v)) + 1 for k, v in arrays.items() if k.endswith(IMAGE_SUFFIX) and len(v)), default=0)


def _weighted_metrics(designs: Sequence[_Design], weights: np.ndarray) -> list[dict]:
    """Each design's metrics ({(setting, family): [R]}) under image weights [R, N] (one product)."""
    products = weights @ np.hstack([d.matrix for d in designs])
    out, start = [], 0
    for d in designs:
        width = d.matrix.shape[1]
        out.append(_combine(d.means(products[:, start:start + width])))
        start += width
    return out


def metric_values(arrays: dict, weights: Optional[np.ndarray] = None) -> dict[tuple[str, str], Value]:
    """One trial's metrics ``{(setting, family): value}`` (definitions: :mod:`study.answer`).

    arrays: the trial's npz arrays. weights: optional float [R, N] of per-image weights
    (row r = replicate r, e.g. how many times each image was drawn); every mean over
    queries then weighs each query by its image's weight and each value is an [R] array.
    Without weights the values are plain floats (plain means over queries).
    """
    if weights is None:
        means = {name: float(np.mean(values)) for name, values, _ in _query_arrays(arrays)}
        return _combine(means)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if weights.shape[1] < _n_images(arrays):
        raise ValueError(f"weights cover {weights.shape[1]} images, the arrays {_n_images(arrays)}")
    return _weighted_metrics([_Design(arrays, weights.shape[1])], weights)[0]
