"""Tests of trainables.metrics against hand-computed values and a loop-based reference.

The reference below re-implements trec_eval's map_cut independently (plain Python
loops over a sorted list), using the module's documented tie rule (descending score,
then ascending index). Data compared with it is tie-free unless a test says otherwise.
"""

from __future__ import annotations

import math

import pytest
import torch

from trainables.metrics import (
    average_precision_at_k,
    rank_among_irrelevant,
    ranking_keys,
    recall_at_k,
    retrieval_metrics,
    score_metrics,
    topk_order,
)

# ---------------------------------------------------------------- reference


def ref_order(scores: list[float]) -> list[int]:
    """Pool indices by descending score, ties by ascending index."""
    return sorted(range(len(scores)), key=lambda j: (-scores[j], j))


def ref_ap(scores: list[float], relevant: list[bool], k: int) -> float:
    """trec_eval map_cut_k for one query: sum of precision at relevant ranks <= k, / total relevant."""
    n_rel = sum(relevant)
    if n_rel == 0:
        return 0.0
    hits, total = 0, 0.0
    for rank, j in enumerate(ref_order(scores)[:k], start=1):
        if relevant[j]:
            hits += 1
            total += hits / rank
    return total / n_rel


def ref_recall(scores: list[float], relevant: list[bool], k: int) -> float:
    return 1.0 if any(relevant[j] for j in ref_order(scores)[:k]) else 0.0


def ref_rank_irrelevant(scores: list[float], relevant: list[bool], t: int) -> int:
    return 1 + sum(1 for j in range(len(scores)) if not relevant[j] and scores[j] > scores[t])


def random_case(seed: int, q: int = 12, n: int = 150) -> tuple[torch.Tensor, torch.Tensor]:
    """Tie-free scores [q, n]; relevant counts cycle through 0, 1, 3, 40, 120 (> k=100), n."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(q, n, generator=gen)
    counts = [0, 1, 3, 40, 120, n]
    relevant = torch.zeros(q, n, dtype=torch.bool)
    for row in range(q):
        relevant[row, torch.randperm(n, generator=gen)[: counts[row % len(counts)]]] = True
    for row in scores:
        assert len(set(row.tolist())) == n  # tie-free
    return scores, relevant


# ---------------------------------------------------------------- hand-computed


def ap_of(relevant_flags: list[int], k: int = 100) -> float:
    """AP@k of one query whose items are already in rank order (scores 0.9, 0.8, ...)."""
    scores = torch.tensor([[0.9 - 0.1 * i for i in range(len(relevant_flags))]])
    return average_precision_at_k(scores, torch.tensor([relevant_flags], dtype=torch.bool), k=k).item()


def test_ap_hand_computed():
    # relevant at ranks 1 and 3, 2 relevant: (1/1 + 2/3) / 2 = 5/6
    assert ap_of([1, 0, 1, 0, 0]) == pytest.approx(5 / 6)
    # relevant at ranks 2 and 5, cut k=3: only rank 2 counts, / 2 relevant: (1/2) / 2 = 0.25
    assert ap_of([0, 1, 0, 0, 1], k=3) == pytest.approx(0.25)
    # all 5 relevant, k=3 (more relevant than k): (1 + 1 + 1) / 5 = 0.6
    assert ap_of([1, 1, 1, 1, 1], k=3) == pytest.approx(0.6)
    # relevant at rank 4 only: (1/4) / 1
    assert ap_of([0, 0, 0, 1, 0]) == pytest.approx(0.25)
    # relevant at ranks 2, 3, 6 of 3 relevant: (1/2 + 2/3 + 3/6) / 3 = 5/9
    assert ap_of([0, 1, 1, 0, 0, 1]) == pytest.approx(5 / 9)


def test_ap_ranks_by_score_not_position():
    scores = torch.tensor([[0.1, 0.9, 0.5]])  # ranking: item 1, item 2, item 0
    relevant = torch.tensor([[True, False, True]])  # ranks 3 and 2: (1/2 + 2/3) / 2 = 7/12
    assert average_precision_at_k(scores, relevant).item() == pytest.approx(7 / 12)


def test_zero_relevant_queries_score_zero():
    scores, _ = random_case(0, q=3, n=20)
    relevant = torch.zeros(3, 20, dtype=torch.bool)
    assert average_precision_at_k(scores, relevant).tolist() == [0.0, 0.0, 0.0]
    assert all(v.tolist() == [0.0, 0.0, 0.0] for v in recall_at_k(scores, relevant).values())


def test_recall_hand_computed():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]])
    relevant = torch.tensor([[0, 0, 1, 0, 1, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    rec = recall_at_k(scores, relevant, ks=(1, 2, 3, 5))
    # query 0: first hit at rank 3; query 1: first hit at rank 1
    assert rec[1].tolist() == [0.0, 1.0]
    assert rec[2].tolist() == [0.0, 1.0]
    assert rec[3].tolist() == [1.0, 1.0]
    assert rec[5].tolist() == [1.0, 1.0]


def test_k_larger_than_pool():
    scores = torch.tensor([[0.3, 0.2, 0.1]])
    relevant = torch.tensor([[False, False, True]])  # rank 3 of 3: (1/3) / 1
    assert average_precision_at_k(scores, relevant, k=100).item() == pytest.approx(1 / 3)
    assert recall_at_k(scores, relevant, ks=(10,))[10].item() == 1.0


# ---------------------------------------------------------------- reference agreement


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("k", [1, 10, 100, 200])
def test_agrees_with_reference(seed, k):
    scores, relevant = random_case(seed)
    ks = (1, 5, 10, k)
    got = score_metrics(scores, relevant, k=k, ks=ks)
    for q in range(scores.shape[0]):
        s, r = scores[q].tolist(), relevant[q].tolist()
        assert abs(got.ap[q].item() - ref_ap(s, r, k)) < 1e-6
        for kk in ks:
            assert got.recall[kk][q].item() == ref_recall(s, r, kk)
        assert got.n_relevant[q].item() == sum(r)


def test_rank_among_irrelevant_agrees_with_reference():
    scores, relevant = random_case(5, q=6, n=40)
    gen = torch.Generator().manual_seed(1)
    targets = torch.randint(0, 40, (6, 3), generator=gen)
    got = rank_among_irrelevant(scores, relevant, targets)
    for q in range(6):
        for r in range(3):
            want = ref_rank_irrelevant(scores[q].tolist(), relevant[q].tolist(), targets[q, r].item())
            assert got[q, r].item() == want


# ---------------------------------------------------------------- ties


def test_ties_break_by_ascending_index():
    scores = torch.zeros(1, 6)  # all tied: ranking is items 0, 1, 2, 3, 4, 5
    relevant = torch.tensor([[False, True, False, False, False, True]])  # ranks 2 and 6
    assert topk_order(scores, 6).tolist() == [[0, 1, 2, 3, 4, 5]]
    # k=100: (1/2 + 2/6) / 2 = 5/12 ; k=3: (1/2) / 2 = 1/4
    assert average_precision_at_k(scores, relevant, k=100).item() == pytest.approx(5 / 12)
    assert average_precision_at_k(scores, relevant, k=3).item() == pytest.approx(1 / 4)


def test_ties_across_the_cutoff_and_signed_zero():
    scores = torch.tensor([[0.5, 0.0, 0.9, -0.0, 0.0, 0.9]])
    # ranking: 2, 5 (0.9 tie -> lower index first), 0, then 1, 3, 4 (0.0 == -0.0)
    assert topk_order(scores, 4).tolist() == [[2, 5, 0, 1]]
    assert topk_order(scores, 6).tolist() == [[2, 5, 0, 1, 3, 4]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_heavy_ties_match_reference_tie_rule(seed):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (10, 60), generator=gen).float() / 4  # many ties
    relevant = torch.rand(10, 60, generator=gen) < 0.3
    for k in (1, 7, 30, 60):
        order = topk_order(scores, k)
        got = average_precision_at_k(scores, relevant, k=k)
        for q in range(10):
            s = scores[q].tolist()
            assert order[q].tolist() == ref_order(s)[:k]
            assert abs(got[q].item() - ref_ap(s, relevant[q].tolist(), k)) < 1e-6


def test_ties_are_deterministic_and_permutation_consistent():
    scores = torch.tensor([[0.2, 0.7, 0.7, 0.2, 0.7]])
    relevant = torch.tensor([[False, False, True, True, False]])  # ranking 1, 2, 4, 0, 3 -> ranks 2, 5
    results = [average_precision_at_k(scores, relevant, k=3).item() for _ in range(5)]
    assert results == [pytest.approx(0.25)] * 5  # (1/2) / 2, identical every call


def test_ranking_keys_follow_float_order():
    values = [float("-inf"), -3.5, -1e-40, -0.0, 0.0, 1e-40, 2.0, 2.0, float("inf"), -3.5, 7.25]
    scores = torch.tensor([values])
    keys = ranking_keys(scores)[0].tolist()
    by_key = sorted(range(len(values)), key=lambda j: -keys[j])
    assert by_key == ref_order(torch.tensor(values).tolist())
    assert len(set(keys)) == len(values)


def test_fast_path_matches_key_path_on_random_data():
    scores, _ = random_case(7, q=8, n=500)
    for k in (1, 50, 499, 500):
        want = torch.topk(ranking_keys(scores), k, dim=1).indices
        assert torch.equal(topk_order(scores, k), want)


# ---------------------------------------------------------------- chunked API


def embedding_case(seed: int, q: int = 30, n: int = 90, d: int = 8, groups: int = 20):
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(q, d, generator=gen)
    pool = torch.randn(n, d, generator=gen)
    qg = torch.randint(0, groups, (q,), generator=gen)
    pg = torch.randint(0, groups, (n,), generator=gen)
    return query, pool, qg, pg


@pytest.mark.parametrize("chunk_size", [1, 7, 30, 1000, None])
def test_chunked_equals_dense(chunk_size):
    query, pool, qg, pg = embedding_case(0)
    targets = torch.randint(0, 90, (30, 2), generator=torch.Generator().manual_seed(3))
    dense = score_metrics(query @ pool.T, qg[:, None] == pg[None, :], k=10, ks=(1, 5), targets=targets)
    got = retrieval_metrics(query, pool, qg, pg, k=10, ks=(1, 5), targets=targets, chunk_size=chunk_size)
    assert torch.allclose(got.ap, dense.ap, atol=1e-12)
    assert all(torch.equal(got.recall[kk], dense.recall[kk]) for kk in (1, 5))
    assert torch.equal(got.target_ranks, dense.target_ranks)
    assert torch.equal(got.n_relevant, dense.n_relevant)


def test_chunked_agrees_with_reference_including_zero_relevant():
    query, pool, qg, pg = embedding_case(4, groups=60)  # some query groups absent from the pool
    got = retrieval_metrics(query, pool, qg, pg, k=5, ks=(1, 3), chunk_size=4)
    scores = (query @ pool.T).tolist()
    assert (got.n_relevant == 0).any()
    for q in range(len(scores)):
        rel = (pg == qg[q]).tolist()
        assert abs(got.ap[q].item() - ref_ap(scores[q], rel, 5)) < 1e-6
        assert got.recall[3][q].item() == ref_recall(scores[q], rel, 3)


def test_exclude_removes_own_item():
    # Query i is pool item i itself (score 1, a different group); its true match is item i + 3.
    pool = torch.eye(6)
    pool[3:] = torch.nn.functional.normalize(torch.eye(6)[:3] + 0.1 * torch.eye(6)[3:], dim=1)
    query = pool[:3]
    qg, pg = torch.tensor([0, 1, 2]), torch.tensor([10, 11, 12, 0, 1, 2])
    kept = retrieval_metrics(query, pool, qg, pg, k=10, ks=(1,))
    removed = retrieval_metrics(query, pool, qg, pg, k=10, ks=(1,), exclude=torch.tensor([0, 1, 2]))
    assert kept.ap.tolist() == pytest.approx([0.5] * 3)  # match at rank 2 behind the query itself: (1/2) / 1
    assert removed.ap.tolist() == pytest.approx([1.0] * 3)
    assert removed.recall[1].tolist() == [1.0] * 3
    # Excluding a relevant item also removes it from the denominator.
    pg_same = torch.tensor([0, 1, 2, 0, 1, 2])
    got = retrieval_metrics(query, pool, qg, pg_same, k=10, exclude=torch.tensor([0, 1, -1]))
    assert got.n_relevant.tolist() == [1, 1, 2]


def test_excluded_target_is_rejected():
    query, pool, qg, pg = embedding_case(1, q=3, n=9)
    with pytest.raises(ValueError):
        retrieval_metrics(query, pool, qg, pg, exclude=torch.tensor([0, 1, 2]), targets=torch.tensor([[0], [5], [6]]))


def test_input_validation():
    with pytest.raises(ValueError):
        average_precision_at_k(torch.tensor([[float("nan"), 1.0]]), torch.tensor([[True, False]]))
    with pytest.raises(ValueError):
        average_precision_at_k(torch.zeros(2, 3), torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError):
        average_precision_at_k(torch.zeros(2, 3), torch.zeros(2, 3))  # not bool
    query, pool, qg, pg = embedding_case(2)
    with pytest.raises(ValueError):
        retrieval_metrics(query, pool[:, :4], qg, pg)


def test_mean_ap_is_mean_of_per_query_values():
    scores, relevant = random_case(9)
    per_query = [ref_ap(scores[q].tolist(), relevant[q].tolist(), 100) for q in range(scores.shape[0])]
    got = average_precision_at_k(scores, relevant).mean().item()
    assert math.isclose(got, sum(per_query) / len(per_query), abs_tol=1e-6)
