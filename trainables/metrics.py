"""Retrieval metrics: AP@k (trec_eval ``map_cut``), Recall@k and full ranks.

Conventions used by every function here
---------------------------------------
* A *query* ranks a *pool* of N items by score, highest score first. ``scores[q, j]``
  is the score of pool item ``j`` for query ``q``; ``relevant[q, j]`` says whether that
  item is relevant to the query.
* **Tie rule** (deterministic, identical on CPU and GPU): items are ordered by
  descending score, then by ascending item index. Scores are compared as float32 and
  ``-0.0 == +0.0``; NaN scores are rejected. trec_eval breaks ties by docno in
  descending lexical order instead, so the two agree exactly whenever a query's scores
  are distinct (the usual case for float similarities of real embeddings).
* **AP@k** (trec_eval ``map_cut_k``; ``map_cut_100`` for k=100): with ``R`` the TOTAL
  number of relevant pool items of the query (retrieved or not) and ``rel(i)`` = 1 if
  the item at rank i is relevant,
  ``AP@k = (1/R) * sum_{i=1..min(k,N)} rel(i) * precision@i``,
  ``precision@i = (number of relevant items at ranks 1..i) / i``. A query with R = 0
  has AP@k = 0 (trec_eval also scores such a query 0 when it is averaged in).
  mAP@k is the mean of AP@k over queries.
* **Recall@k** (the CLIP_benchmark definition, which is what published multilingual
  CLIP retrieval numbers use): 1 if at least one relevant item is among the top k,
  else 0; the reported Recall@k is the mean over queries, i.e. the fraction of queries
  with a hit in the top k. A query with R = 0 scores 0.
* **Rank among irrelevant items** (:func:`rank_among_irrelevant`): for a target pool
  item t of query q, ``1 + #{j : not relevant[q, j] and scores[q, j] > scores[q, t]}``,
  i.e. its 1-based rank over the full pool (no cut at k) when the query's other
  relevant items are ignored and ties are resolved in the target's favour. It is what
  its rank would be were it the only relevant item.

Functions taking ``scores``/``relevant`` are dense ([Q, N] in memory). For big pools
use :func:`retrieval_metrics`, which computes scores from embeddings chunk by chunk of
queries and never holds more than ``chunk_size x N`` scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import Tensor

from trainables.memory import DEFAULT_CHUNK_ELEMENTS  # one [chunk, N] score block's elements (a memory budget)


@dataclass
class QueryMetrics:
    """Per-query results of a retrieval run (Q queries).

    ap: float64 [Q], AP@k of each query.
    recall: {kk: float64 [Q]} with values in {0, 1}; mean over queries = Recall@kk.
    n_relevant: int64 [Q], total relevant pool items of each query.
    target_ranks: int64 [Q, R] (only when targets were given), the rank among
        irrelevant items of each target (see the module docstring).
    """

    ap: Tensor
    recall: dict[int, Tensor] = field(default_factory=dict)
    n_relevant: Optional[Tensor] = None
    target_ranks: Optional[Tensor] = None


def _check_dense(scores: Tensor, relevant: Tensor) -> None:
    if scores.dim() != 2 or relevant.shape != scores.shape:
        raise ValueError(
            f"scores and relevant must both be [Q, N]; got {tuple(scores.shape)} and {tuple(relevant.shape)}"
        )
    if relevant.dtype != torch.bool:
        raise ValueError(f"relevant must be a bool tensor, got {relevant.dtype}")
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN; rankings would be undefined")


def ranking_keys(scores: Tensor) -> Tensor:
    """Integer keys whose descending order is the tie rule's ranking order.

    scores: float [Q, N] (compared as float32), no NaN. Returns int64 [Q, N] with
    ``key[q, a] > key[q, b]`` iff item a ranks before item b for query q: the high 32
    bits are an order-preserving integer image of the float32 score, the low 32 bits
    are ``N - 1 - index`` (a lower index wins a tie). All keys of a row are distinct.
    """
    n = scores.shape[-1]
    if n >= 1 << 32:
        raise ValueError("pools of 2**32 items or more are not supported")
    bits = (scores.to(torch.float32) + 0.0).contiguous().view(torch.int32)  # +0.0 maps -0.0 to +0.0
    # Negative floats: flip the 31 magnitude bits so larger magnitude -> smaller integer.
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    keys = ordered.to(torch.int64)
    keys <<= 32
    keys += (n - 1) - torch.arange(n, device=scores.device, dtype=torch.int64)
    return keys


def topk_order(scores: Tensor, k: int) -> Tensor:
    """Indices of the top ``min(k, N)`` items of each query, in rank order (tie rule).

    scores: float [Q, N], no NaN. Returns int64 [Q, min(k, N)]; ``out[q, i]`` is the
    pool index at rank i+1. Fast path: one float ``torch.topk`` of k+1 items; rows
    where any two of those k+1 scores are equal (a tie inside the top k or across its
    boundary) are redone with :func:`ranking_keys`, so the result always follows the
    tie rule.
    """
    kk = min(int(k), scores.shape[1])
    scores = scores.to(torch.float32)
    if kk == 0:
        return torch.empty(scores.shape[0], 0, dtype=torch.int64, device=scores.device)
    # One extra item: the k-th score has a tie outside the top k iff it equals the (k+1)-th.
    extra = int(kk < scores.shape[1])
    values, order = torch.topk(scores, kk + extra, dim=1, largest=True, sorted=True)
    tied = (values[:, 1:] == values[:, :-1]).any(dim=1).nonzero().squeeze(1)
    order = order[:, :kk]
    if tied.numel():
        order[tied] = torch.topk(ranking_keys(scores[tied]), kk, dim=1, largest=True, sorted=True).indices
    return order


def _metrics_from_hits(hits: Tensor, n_relevant: Tensor, k: int, ks: Sequence[int]) -> QueryMetrics:
    """AP@k and Recall@kk from ``hits`` (bool [Q, K'], relevance of the ranked top K').

    n_relevant: int [Q], TOTAL relevant items per query (the AP denominator).
    """
    top = hits[:, :k].to(torch.float64)
    ranks = torch.arange(1, top.shape[1] + 1, dtype=torch.float64, device=hits.device)
    precision_at_i = top.cumsum(dim=1) / ranks
    total = (precision_at_i * top).sum(dim=1)
    n_rel = n_relevant.to(torch.float64)
    ap = torch.where(n_rel > 0, total / n_rel.clamp(min=1.0), torch.zeros_like(total))
    recall = {int(kk): hits[:, :kk].any(dim=1).to(torch.float64) for kk in ks}
    return QueryMetrics(ap=ap, recall=recall, n_relevant=n_relevant.to(torch.int64))


def score_metrics(
    scores: Tensor, relevant: Tensor, k: int = 100, ks: Sequence[int] = (1, 5, 10), targets: Optional[Tensor] = None
) -> QueryMetrics:
    """AP@k, Recall@ks (and optionally target ranks) from one dense score block.

    scores: float [Q, N]; relevant: bool [Q, N]; targets: optional int64 [Q, R] pool
    indices whose :func:`rank_among_irrelevant` is reported. One shared top-k serves
    every metric. Definitions: module docstring.
    """
    _check_dense(scores, relevant)
    if k < 1 or any(kk < 1 for kk in ks):
        raise ValueError(f"k and ks must be positive; got k={k}, ks={tuple(ks)}")
    order = topk_order(scores, max([k, *ks]))
    hits = relevant.gather(1, order)
    out = _metrics_from_hits(hits, _count_true(relevant), k, ks)
    if targets is not None:
        out.target_ranks = rank_among_irrelevant(scores, relevant, targets)
    return out


def average_precision_at_k(scores: Tensor, relevant: Tensor, k: int = 100) -> Tensor:
    """Per-query AP@k as trec_eval's ``map_cut_k`` (definition in the module docstring).

    scores: float [Q, N]; relevant: bool [Q, N]. Returns float64 [Q]; mAP@k is its mean.
    Queries without relevant items get 0. Ties follow the module's tie rule.
    """
    return score_metrics(scores, relevant, k=k, ks=()).ap


def recall_at_k(scores: Tensor, relevant: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[int, Tensor]:
    """Per-query Recall@k, CLIP_benchmark definition (hit = any relevant item in top k).

    scores: float [Q, N]; relevant: bool [Q, N]. Returns {k: float64 [Q] in {0, 1}};
    the mean over queries is the fraction of queries with a hit in the top k.
    """
    return score_metrics(scores, relevant, k=max(ks), ks=ks).recall


def rank_among_irrelevant(scores: Tensor, relevant: Tensor, targets: Tensor) -> Tensor:
    """1-based rank of target items over the full pool, ignoring other relevant items.

    scores: float [Q, N]; relevant: bool [Q, N]; targets: int64 [Q, R] pool indices.
    Returns int64 [Q, R]: ``1 + #{j : not relevant[q, j], scores[q, j] > scores[q, t]}``
    for ``t = targets[q, r]`` (ties counted in the target's favour). No sort: one
    comparison pass over the pool per target column.
    """
    scores = scores.to(torch.float32)
    target_scores = scores.gather(1, targets)
    irrelevant_scores = scores.masked_fill(relevant, float("-inf"))  # -inf is never "higher"
    ranks = torch.empty(targets.shape, dtype=torch.int64, device=scores.device)
    for r in range(targets.shape[1]):
        ranks[:, r] = 1 + _count_true(irrelevant_scores > target_scores[:, r : r + 1])
    return ranks


def _count_true(mask: Tensor) -> Tensor:
    """Number of True entries per row of a bool [Q, N] mask, as int64 [Q] (a fast path)."""
    return mask.view(torch.uint8).sum(dim=1, dtype=torch.int32).to(torch.int64)


def _auto_chunk(n_queries: int, n_pool: int, chunk_size: Optional[int]) -> int:
    if chunk_size is None:
        chunk_size = max(1, DEFAULT_CHUNK_ELEMENTS // max(n_pool, 1))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    return max(1, min(int(chunk_size), n_queries))


def _check_embeddings(query_emb: Tensor, pool_emb: Tensor, query_groups: Tensor, pool_groups: Tensor) -> None:
    if query_emb.dim() != 2 or pool_emb.dim() != 2 or query_emb.shape[1] != pool_emb.shape[1]:
        raise ValueError(f"need query [Q, D] and pool [N, D]; got {tuple(query_emb.shape)}, {tuple(pool_emb.shape)}")
    if query_groups.shape != (query_emb.shape[0],) or pool_groups.shape != (pool_emb.shape[0],):
        raise ValueError("query_groups must be [Q] and pool_groups [N]")
    if not (torch.isfinite(query_emb).all() and torch.isfinite(pool_emb).all()):
        raise ValueError("embeddings contain NaN or inf")


def retrieval_metrics(
    query_emb: Tensor,
    pool_emb: Tensor,
    query_groups: Tensor,
    pool_groups: Tensor,
    *,
    k: int = 100,
    ks: Sequence[int] = (1, 5, 10),
    exclude: Optional[Tensor] = None,
    targets: Optional[Tensor] = None,
    chunk_size: Optional[int] = None,
) -> QueryMetrics:
    """Chunked retrieval metrics from embeddings; never builds the full [Q, N] matrix.

    query_emb: float [Q, D]; pool_emb: float [N, D]; score = dot product (cosine
    similarity if the caller L2-normalised both). query_groups: int [Q]; pool_groups:
    int [N]; pool item j is relevant to query q iff ``pool_groups[j] == query_groups[q]``
    (e.g. both are image ids). exclude: optional int64 [Q], pool index removed from
    query q's pool (its own item), -1 for none; a removed item is neither ranked nor
    counted as relevant. targets: optional int64 [Q, R] pool indices for
    ``target_ranks`` (must not be excluded). chunk_size: queries per block (default:
    about 16M scores per block). Returns per-query :class:`QueryMetrics` (on CPU).
    """
    _check_embeddings(query_emb, pool_emb, query_groups, pool_groups)
    device = query_emb.device
    pool_emb, pool_groups = pool_emb.to(device, torch.float32), pool_groups.to(device)
    query_groups = query_groups.to(device)
    step = _auto_chunk(query_emb.shape[0], pool_emb.shape[0], chunk_size)
    parts = []
    for start in range(0, query_emb.shape[0], step):
        rows = slice(start, start + step)
        scores = query_emb[rows].to(torch.float32) @ pool_emb.T
        relevant = query_groups[rows, None] == pool_groups[None, :]
        if exclude is not None:
            _remove_items(scores, relevant, exclude[rows].to(device))
        chunk_targets = None if targets is None else targets[rows].to(device)
        if exclude is not None and chunk_targets is not None:
            if (chunk_targets == exclude[rows].to(device)[:, None]).any():
                raise ValueError("a target item is also an excluded item")
        parts.append(score_metrics(scores, relevant, k=k, ks=ks, targets=chunk_targets))
    return _concat(parts, ks, with_ranks=targets is not None, n_queries=query_emb.shape[0])


def _remove_items(scores: Tensor, relevant: Tensor, exclude: Tensor) -> None:
    """In place: give each query's excluded item score -inf and mark it irrelevant.

    A -inf item ranks after every finite score, so it cannot displace any other item
    in the top k, in ``rank_among_irrelevant`` counts, or take part in AP/Recall.
    """
    rows = (exclude >= 0).nonzero().squeeze(1)
    cols = exclude[rows]
    scores[rows, cols] = float("-inf")
    relevant[rows, cols] = False


def _concat(parts: list[QueryMetrics], ks: Sequence[int], with_ranks: bool, n_queries: int) -> QueryMetrics:
    if not parts:  # zero queries
        empty = torch.zeros(n_queries, dtype=torch.float64)
        return QueryMetrics(ap=empty, recall={int(kk): empty for kk in ks}, n_relevant=empty.long())
    return QueryMetrics(
        ap=torch.cat([p.ap for p in parts]).cpu(),
        recall={int(kk): torch.cat([p.recall[int(kk)] for p in parts]).cpu() for kk in ks},
        n_relevant=torch.cat([p.n_relevant for p in parts]).cpu(),
        target_ranks=torch.cat([p.target_ranks for p in parts]).cpu() if with_ranks else None,
    )


__all__ = [
    "QueryMetrics",
    "average_precision_at_k",
    "rank_among_irrelevant",
    "ranking_keys",
    "recall_at_k",
    "retrieval_metrics",
    "score_metrics",
    "topk_order",
]
