"""XTD-format multilingual retrieval evaluation: mAP@k, Recall@k and language bias.

Data layout (XTD): N images and, per language, one caption per image; row i of the
image embeddings and of every language's caption embeddings belongs to image i. A
caption the data lacks (an empty line in an XTD file) is a row of NaN in that
language's embeddings: it is left out of every pool, is never a query, and a query
whose setting then holds nothing relevant to it is not asked (trec_eval likewise
averages only over topics that have relevance judgements). With complete data, as in
XTD10, nothing is left out. :func:`evaluate_embeddings` L2-normalises every embedding
itself (idempotent if the caller already did), so every score is a cosine similarity.
Metric definitions (AP@k as trec_eval ``map_cut_k``, CLIP_benchmark Recall@k, tie
rule) live in :mod:`trainables.metrics`. Only languages present in ``text_emb`` (with
at least one caption) count anywhere.

Every value depends on N (a smaller pool is easier to rank): a trial's evaluations before its
last epoch use the first ``TrialConfig.intermediate_eval_images`` test images and its last one
all of them (:func:`trainables.train.train_worker`), under the same names below.

Metric names (flat ``dict[str, float]``, MLflow-valid: no ``@``). ``{m}`` is each of
``map{k}`` (``map100`` by default), ``recall1``, ``recall5``, ``recall10`` (one per
entry of ``ks``); ``{l}``, ``{a}``, ``{b}`` are language codes, ``{f}`` family names
(:mod:`trainables.languages`). Every value is a mean over the queries of one run, or a
mean of such means as stated; a family's value is the mean over its present
languages' ``lang`` values.

Monolingual, per language l: ``t2i`` caption(l) -> image and ``i2t`` image -> caption(l),
over N x N; relevant = the same image (1 relevant item).
  {m}/monolingual/t2i/lang/{l}, {m}/monolingual/i2t/lang/{l}
  {m}/monolingual/lang/{l}       mean of l's t2i and i2t
  {m}/monolingual/t2i, .../i2t   mean over languages
  {m}/monolingual/family/{f}
  {m}/monolingual                mean over languages of lang values (= mean of t2i, i2t)
Cross-lingual, caption(a) -> caption(b) for every ordered pair a != b (110 for 11
languages; absent with one language); relevant = b's caption of the same image.
  map{k}/crosslingual/pair/{a}-{b}   (mAP only: no recall per pair)
  {m}/crosslingual/lang/{a}      mean over pairs with query language a
  {m}/crosslingual/target/{b}    mean over pairs with target language b
  {m}/crosslingual/family/{f}    over lang (query-language) values
  {m}/crosslingual               mean over all pairs
Multilingual, one pool of all N*L captions:
  {m}/multilingual/i2t           image -> pool; relevant = its L captions
  {m}/multilingual/lang/{l}      caption(l) -> pool minus that caption itself; relevant
                                 = the same image's captions in the other L-1 languages
  {m}/multilingual/t2t           mean over languages of lang values (needs L >= 2)
  {m}/multilingual/family/{f}    over lang values
  {m}/multilingual               mean of i2t and t2t (i2t alone when L = 1)
Language bias, multilingual image -> pool (definitions: :func:`_bias_metrics`):
  bias/multilingual/meanrank/{l} mean over images of the rank of the image's l caption
  bias/multilingual/meanrank     mean over languages of the above
  bias/multilingual              max minus min over languages of meanrank/{l} (0 = unbiased)
  bias/multilingual/normalised   bias/multilingual / (pool size - 1), in [0, 1]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from trainables.languages import FAMILIES, LANGUAGES, canonical_language, family_of
from trainables.metrics import QueryMetrics, retrieval_metrics

Scores = dict[str, float]  # metric prefix ("map100", "recall1", ...) -> value


def evaluate_embeddings(
    image_emb: Tensor,
    text_emb: dict[str, Tensor],
    k: int = 100,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: Optional[int] = None,
    per_query: Optional[dict] = None,
) -> dict[str, float]:
    """All XTD retrieval metrics of one set of embeddings, named as in the module docstring.

    image_emb: float [N, D], finite; text_emb: {language code: float [N, D]}, row i =
    caption of image i, an all-NaN row = no such caption (codes are canonicalised, e.g.
    ``jp`` -> ``ja``). Embeddings are L2-normalised here. k: AP cut-off; ks: Recall
    cut-offs; chunk_size: queries per score block (see
    :func:`trainables.metrics.retrieval_metrics`). Runs on the device of ``image_emb``.
    A run left with no query at all (no caption pairs) yields NaN.

    per_query: a dict to fill with the AP@k of every query, from which every mAP above is a mean
    (or a mean of means), for bootstrap intervals over test images (:mod:`study.answer`). Keys:
    ``monolingual.t2i.{l}``, ``monolingual.i2t.{l}``, ``crosslingual.{a}-{b}``,
    ``multilingual.i2t``, ``multilingual.t2t.{l}`` -> float32 numpy [Q]; ``bias.ranks`` -> int32
    [Q, L] (the ranks of :func:`_bias_metrics`; 0 where the image has no caption in that language), ``bias.languages`` -> str [L]; and for every
    array key K, ``K@image`` -> int32 [Q], the image each query belongs to.
    """
    emb = _prepare(image_emb, text_emb)
    run = _Runner(k=k, ks=ks, chunk_size=chunk_size, per_query=per_query)
    out: dict[str, float] = {}
    out.update(_monolingual(run, emb))
    if len(emb.texts) > 1:
        out.update(_crosslingual(run, emb))
    out.update(_multilingual(run, emb))
    return out


@dataclass
class _Embeddings:
    """Validated, L2-normalised embeddings. ``rows[l]``: int64 ids of images with an l caption."""

    images: Tensor  # [N, D]
    texts: dict[str, Tensor]  # language -> [N, D] (rows without a caption are NaN)
    rows: dict[str, Tensor]  # language -> int64 [n_l]


def _prepare(image_emb: Tensor, text_emb: dict[str, Tensor]) -> _Embeddings:
    """Validate shapes and values, canonicalise and order languages, L2-normalise."""
    if image_emb.dim() != 2 or not torch.isfinite(image_emb).all():
        raise ValueError(f"image_emb must be a finite [N, D] tensor, got shape {tuple(image_emb.shape)}")
    texts: dict[str, Tensor] = {}
    for code, emb in text_emb.items():
        lang = canonical_language(code)
        if lang in texts:
            raise ValueError(f"language {lang!r} given twice in text_emb (as {code!r} and an alias)")
        if emb.shape != image_emb.shape:
            raise ValueError(f"text_emb[{code!r}] is {tuple(emb.shape)}, expected {tuple(image_emb.shape)}")
        texts[lang] = emb.to(image_emb.device, torch.float32)
    rows = {}
    for lang, emb in texts.items():
        missing = torch.isnan(emb).all(dim=1)
        if not torch.isfinite(emb[~missing]).all():
            raise ValueError(f"text_emb[{lang!r}] has non-finite values outside all-NaN (missing-caption) rows")
        rows[lang] = (~missing).nonzero().squeeze(1)
    langs = [lang for lang in LANGUAGES if lang in texts and rows[lang].numel()]
    if not langs:
        raise ValueError("text_emb holds no caption in any language")
    return _Embeddings(
        images=F.normalize(image_emb.to(torch.float32), dim=-1),
        texts={lang: F.normalize(texts[lang], dim=-1) for lang in langs},
        rows={lang: rows[lang] for lang in langs},
    )


class _Runner:
    """Runs one retrieval setting and reduces it to {metric prefix: mean over queries}."""

    def __init__(self, k: int, ks: Sequence[int], chunk_size: Optional[int], per_query: Optional[dict] = None) -> None:
        self.k, self.ks, self.chunk_size = int(k), tuple(int(x) for x in ks), chunk_size
        self.per_query = per_query

    def raw(self, queries: Tensor, pool: Tensor, query_ids: Tensor, pool_ids: Tensor, key: str = "",
            **kw: Any) -> QueryMetrics:
        result = retrieval_metrics(
            queries, pool, query_ids, pool_ids, k=self.k, ks=self.ks, chunk_size=self.chunk_size, **kw
        )
        if self.per_query is not None and key:
            self.keep(key, result.ap, query_ids)
        return result

    def keep(self, key: str, values: Tensor, query_ids: Tensor) -> None:
        """Record per-query ``values`` and their images under ``key`` (when asked to)."""
        if self.per_query is not None:
            numpy_dtype = torch.int32 if not values.is_floating_point() else torch.float32
            self.per_query[key] = values.detach().to("cpu", numpy_dtype).numpy()
            self.per_query[f"{key}@image"] = query_ids.detach().to("cpu", torch.int32).numpy()

    def summary(self, result: QueryMetrics) -> Scores:
        out = {f"map{self.k}": float(result.ap.mean())}
        out.update({f"recall{kk}": float(result.recall[kk].mean()) for kk in self.ks})
        return out

    def __call__(self, queries: Tensor, pool: Tensor, query_ids: Tensor, pool_ids: Tensor, key: str = "",
                 **kw: Any) -> Scores:
        return self.summary(self.raw(queries, pool, query_ids, pool_ids, key=key, **kw))


def _mean(scores: Iterable[Scores]) -> Scores:
    """Element-wise mean of several {prefix: value} dicts with the same keys."""
    items = list(scores)
    return {name: sum(s[name] for s in items) / len(items) for name in items[0]}


def _named(scores: Scores, path: str, map_only: bool = False) -> dict[str, float]:
    """{prefix: value} -> {"prefix/path": value}; ``map_only`` drops the recall entries."""
    return {f"{name}/{path}": v for name, v in scores.items() if not (map_only and name.startswith("recall"))}


def _families(per_lang: dict[str, Scores], setting: str) -> dict[str, float]:
    """``{m}/{setting}/family/{f}``: mean of the present languages' values of family f."""
    out: dict[str, float] = {}
    for family in FAMILIES:
        members = [s for lang, s in per_lang.items() if family_of(lang) == family]
        if members:
            out.update(_named(_mean(members), f"{setting}/family/{family}"))
    return out


def _monolingual(run: _Runner, emb: _Embeddings) -> dict[str, float]:
    """Caption(l) <-> image within each language; N x N, one relevant item per query."""
    all_ids = torch.arange(emb.images.shape[0], device=emb.images.device)
    out: dict[str, float] = {}
    t2i, i2t, per_lang = {}, {}, {}
    for lang, texts in emb.texts.items():
        rows = emb.rows[lang]
        caps = texts[rows]
        t2i[lang] = run(caps, emb.images, rows, all_ids, key=f"monolingual.t2i.{lang}")
        i2t[lang] = run(emb.images[rows], caps, rows, rows, key=f"monolingual.i2t.{lang}")  # only images with an l caption
        per_lang[lang] = _mean([t2i[lang], i2t[lang]])
        out.update(_named(t2i[lang], f"monolingual/t2i/lang/{lang}"))
        out.update(_named(i2t[lang], f"monolingual/i2t/lang/{lang}"))
        out.update(_named(per_lang[lang], f"monolingual/lang/{lang}"))
    out.update(_named(_mean(t2i.values()), "monolingual/t2i"))
    out.update(_named(_mean(i2t.values()), "monolingual/i2t"))
    out.update(_families(per_lang, "monolingual"))
    out.update(_named(_mean(per_lang.values()), "monolingual"))
    return out


def _crosslingual(run: _Runner, emb: _Embeddings) -> dict[str, float]:
    """Caption(a) -> caption(b) for every ordered pair of distinct languages (N x N each)."""
    langs, n = list(emb.texts), emb.images.shape[0]
    has = {lang: torch.zeros(n, dtype=torch.bool, device=emb.images.device).index_fill_(0, r, True)
           for lang, r in emb.rows.items()}
    pairs = {}
    for a in langs:
        for b in langs:
            if a != b:
                queries = (has[a] & has[b]).nonzero().squeeze(1)  # a captions whose b caption exists
                pairs[a, b] = run(emb.texts[a][queries], emb.texts[b][emb.rows[b]], queries, emb.rows[b],
                                  key=f"crosslingual.{a}-{b}")
    out: dict[str, float] = {}
    for (a, b), scores in pairs.items():
        out.update(_named(scores, f"crosslingual/pair/{a}-{b}", map_only=True))
    per_lang = {a: _mean(s for (qa, _), s in pairs.items() if qa == a) for a in langs}
    for lang in langs:
        out.update(_named(per_lang[lang], f"crosslingual/lang/{lang}"))
        out.update(_named(_mean(s for (_, tb), s in pairs.items() if tb == lang), f"crosslingual/target/{lang}"))
    out.update(_families(per_lang, "crosslingual"))
    out.update(_named(_mean(pairs.values()), "crosslingual"))
    return out


def _multilingual_pool(emb: _Embeddings) -> tuple[Tensor, Tensor, Tensor]:
    """The pool of every present caption, in language-major order.

    Returns pool [P, D], pool_ids int64 [P] (image of each caption) and position int64
    [N, L]: pool index of image i's caption in the j-th language, -1 where it is missing.
    """
    n, device = emb.images.shape[0], emb.images.device
    position = torch.full((n, len(emb.texts)), -1, dtype=torch.int64, device=device)
    offset = 0
    for j, rows in enumerate(emb.rows.values()):
        position[rows, j] = offset + torch.arange(rows.numel(), device=device)
        offset += rows.numel()
    pool = torch.cat([texts[emb.rows[lang]] for lang, texts in emb.texts.items()])
    return pool, torch.cat(list(emb.rows.values())), position


def _multilingual(run: _Runner, emb: _Embeddings) -> dict[str, float]:
    """Image -> all captions, and caption -> all other captions, over one multilingual pool."""
    langs = list(emb.texts)
    pool, pool_ids, position = _multilingual_pool(emb)
    images = (position >= 0).any(dim=1).nonzero().squeeze(1)  # images with at least one caption
    i2t_raw = run.raw(emb.images[images], pool, images, pool_ids, key="multilingual.i2t",
                      targets=position[images].clamp(min=0))
    i2t = run.summary(i2t_raw)
    present = position[images] >= 0
    run.keep("bias.ranks", torch.where(present, i2t_raw.target_ranks, 0), images)  # 0: no such caption
    if run.per_query is not None:
        import numpy as np

        run.per_query["bias.languages"] = np.array(langs)
    out = _named(i2t, "multilingual/i2t")
    out.update(_bias_metrics(i2t_raw.target_ranks, present, langs, pool.shape[0]))
    if len(langs) < 2:
        out.update(_named(i2t, "multilingual"))
        return out
    per_lang = {}
    for j, lang in enumerate(langs):
        rows = emb.rows[lang]
        rows = rows[(position[rows] >= 0).sum(dim=1) > 1]  # the image has a caption in another language
        per_lang[lang] = run(emb.texts[lang][rows], pool, rows, pool_ids, key=f"multilingual.t2t.{lang}",
                             exclude=position[rows, j])
        out.update(_named(per_lang[lang], f"multilingual/lang/{lang}"))
    t2t = _mean(per_lang.values())
    out.update(_named(t2t, "multilingual/t2t"))
    out.update(_families(per_lang, "multilingual"))
    out.update(_named(_mean([i2t, t2t]), "multilingual"))
    return out


def _bias_metrics(ranks: Tensor, present: Tensor, langs: list[str], pool_size: int) -> dict[str, float]:
    """Language bias of image -> multilingual-caption retrieval.

    ranks: int [Q, L], ``ranks[q, j]`` = 1-based rank of image q's caption in language j
    over the whole pool of P captions (no cut at k), counting only the pool's irrelevant
    captions (other images') that score strictly higher: the image's captions in the
    other languages are ignored, so a perfect model ranks every language's caption 1
    and the order among equally correct captions cannot create bias (see
    :func:`trainables.metrics.rank_among_irrelevant`). present: bool [Q, L], whether
    that caption exists (missing ones are left out of the means).
    meanrank(l) = mean over images of ``ranks[:, l]``; bias = max_l meanrank(l) -
    min_l meanrank(l) (0 = no language preferred); normalised bias = bias / (P - 1),
    in [0, 1] since ranks lie in [1, P] (P = N * L with complete data).
    """
    weights = present.to(torch.float64)
    mean_rank = (ranks.to(torch.float64) * weights).sum(dim=0) / weights.sum(dim=0)  # [L]
    out = {f"bias/multilingual/meanrank/{lang}": float(mean_rank[j]) for j, lang in enumerate(langs)}
    gap = float(mean_rank.max() - mean_rank.min())
    out["bias/multilingual/meanrank"] = float(mean_rank.mean())
    out["bias/multilingual"] = gap
    out["bias/multilingual/normalised"] = gap / max(pool_size - 1, 1)
    return out


def embed_dataset(
    model: Any,
    tokenize: Callable[[list[str]], Tensor],
    image_transform: Callable[[Tensor], Tensor],
    data: Any,
    device: torch.device | str,
    batch_size: int = 256,
    languages: Optional[Sequence[str]] = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Encode an image-caption set with an open_clip-style model.

    model: has ``encode_image(x, normalize=True)`` and ``encode_text(tokens,
    normalize=True)`` (pass the bare module, not a DDP wrapper); it is put in eval mode
    for the call and restored afterwards, and run under ``torch.no_grad()``.
    tokenize: list[str] -> int64 [B, T]. image_transform: uint8 [B, 3, H, W] -> float
    [B, 3, H', W'], applied on CPU before moving to ``device``. data: has ``images``
    (uint8 [N, 3, H, W]) and ``captions`` (N dicts {language: caption}; a row may lack
    a language). languages: which to encode (default: every language of the table in
    :mod:`trainables.languages` with at least one caption; other codes are ignored).
    Returns (image_emb float32 [N, D], {canonical language: float32 [N, D]}) on CPU,
    row i = image i; a row without a caption in that language is all NaN, which
    :func:`evaluate_embeddings` reads as "missing".
    """
    by_lang = _captions_by_language(data.captions, languages)
    n = len(data.captions)

    def encode_text(texts: Sequence[str]) -> Tensor:
        return model.encode_text(tokenize(list(texts)).to(device), normalize=True)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            images = _encode_batches(
                data.images, batch_size, lambda b: model.encode_image(image_transform(b).to(device), normalize=True)
            )
            texts = {lang: _encode_batches(caps, batch_size, encode_text) for lang, (_, caps) in by_lang.items()}
    finally:
        model.train(was_training)
    out = {}
    for lang, (rows, _) in by_lang.items():
        out[lang] = torch.full((n, texts[lang].shape[1]), float("nan"))
        out[lang][torch.as_tensor(rows, dtype=torch.long)] = texts[lang]
    return images, out


def _captions_by_language(
    captions: Sequence[dict[str, str]], languages: Optional[Sequence[str]]
) -> dict[str, tuple[list[int], list[str]]]:
    """{canonical language: (row indices, their captions)} in canonical language order.

    Empty captions count as missing. Codes outside the language table are skipped
    unless named in ``languages`` (then they raise, like a named language with no caption).
    """
    found: dict[str, tuple[list[int], list[str]]] = {}
    for i, row in enumerate(captions):
        for code, text in row.items():
            try:
                lang = canonical_language(code)
            except ValueError:
                continue
            if text and text.strip():
                found.setdefault(lang, ([], []))
                found[lang][0].append(i)
                found[lang][1].append(text)
    wanted = LANGUAGES if languages is None else tuple(canonical_language(x) for x in languages)
    absent = [lang for lang in wanted if lang not in found]
    if languages is not None and absent:
        raise ValueError(f"no caption in language(s) {', '.join(absent)}")
    if not found:
        raise ValueError("the data set holds no caption in a known language")
    return {lang: found[lang] for lang in LANGUAGES if lang in found and lang in wanted}


def _encode_batches(items: Any, batch_size: int, encode: Callable[[Any], Tensor]) -> Tensor:
    """Apply ``encode`` to consecutive slices of ``items``; concatenate float32 CPU outputs."""
    outs = [encode(items[i : i + batch_size]).float().cpu() for i in range(0, len(items), batch_size)]
    if not outs:
        raise ValueError("nothing to encode")
    return torch.cat(outs)


__all__ = ["evaluate_embeddings", "embed_dataset"]
