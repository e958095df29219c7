"""Invariants of the batch composer on tiny fixtures.

Fixture conventions (values reveal their source):
  * ``full(n, langs)``: every sample has every caption.
  * ``missing_own(n)``: sample i lacks exactly language ``i % L``, so any redraw or
    error can be traced back to the sample index.
"""

from __future__ import annotations

import math

import pytest
import torch

from trainables.composer import BatchComposer
from trainables.composition import ComposerError, MissingCaptionError
from trainables.config import TrialConfig

LANGS = ("en", "de", "fr", "ja")


def full(n: int, num_langs: int = len(LANGS)) -> torch.Tensor:
    """[n, L] all True."""
    return torch.ones(n, num_langs, dtype=torch.bool)


def missing_own(n: int, num_langs: int = len(LANGS)) -> torch.Tensor:
    """[n, L]: sample i lacks exactly language i % L."""
    table = full(n, num_langs)
    table[torch.arange(n), torch.arange(n) % num_langs] = False
    return table


def make(available=None, **kw) -> BatchComposer:
    args = dict(ratio=0.5, mode="per_batch", global_batch_size=8, rank=0, world_size=2, seed=7)
    args.update(kw)
    return BatchComposer(full(64) if available is None else available, LANGS, **args)


# ---------------------------------------------------------------- composition
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.77, 1.0])
@pytest.mark.parametrize("batch", [8, 12])
def test_within_batch_exact_mono_count(ratio, batch):
    comp = make(full(240), mode="within_batch", ratio=ratio, global_batch_size=batch, world_size=4)
    plan = comp.plan_epoch(0)
    k = round(ratio * batch)
    assert (plan.mono.sum(dim=1) == k).all()
    for s in range(plan.num_steps):
        if k:
            assert (plan.lang_ids[s][plan.mono[s]] == plan.step_lang[s]).all()
        else:
            assert plan.step_lang[s] == -1
    assert plan.redrawn.sum() == 0


def test_within_batch_mono_positions_vary_across_ranks():
    comp = make(full(800), mode="within_batch", ratio=0.5, global_batch_size=8, world_size=2)
    plan = comp.plan_epoch(0)
    rank0_share = plan.mono[:, :4].double().mean(dim=1)
    assert len(set(rank0_share.tolist())) > 1  # not always the first rank's slice
    assert plan.mono.double().mean() == 0.5


def test_within_batch_prefers_items_having_step_language():
    # each sample lacks one language: the k = B/2 monolingual slots go to samples that have the
    # step language first, so a step loses a monolingual slot only when fewer than k samples have it
    table = missing_own(400)
    plan = make(table, mode="within_batch", ratio=0.5, global_batch_size=8).plan_epoch(0)
    having = table[plan.indices, plan.step_lang[:, None].expand_as(plan.indices)].sum(dim=1)
    assert torch.equal(plan.mono.sum(dim=1), having.clamp(max=4))
    assert (having < 4).any()  # the fixture reaches steps with too few samples in the step language


@pytest.mark.parametrize("ratio", [0.0, 0.3, 1.0])
def test_per_batch_mono_step_share_binomial(ratio):
    steps = 2000
    comp = make(full(64), ratio=ratio, steps_per_epoch=steps)
    plan = comp.plan_epoch(3)
    share = plan.mono_step.double().mean().item()
    sigma = math.sqrt(ratio * (1 - ratio) / steps)
    assert abs(share - ratio) <= 4 * sigma + 1e-12
    # mono steps: a single language; mono share equals mono step share (no redraws)
    for s in torch.nonzero(plan.mono_step).flatten()[:50]:
        assert (plan.lang_ids[s] == plan.step_lang[s]).all()
    assert (plan.step_lang[~plan.mono_step] == -1).all()
    assert plan.mono.double().mean().item() == pytest.approx(share)


def test_per_batch_cross_steps_mix_languages():
    plan = make(full(400), ratio=0.0, global_batch_size=16).plan_epoch(0)
    distinct = [len(set(row.tolist())) for row in plan.lang_ids]
    assert min(distinct) >= 2 and not plan.mono.any()


def test_ratio_one_all_monolingual():
    plan = make(full(400), ratio=1.0, mode="per_batch").plan_epoch(0)
    assert plan.mono.all() and plan.mono_step.all()
    assert all(len(set(row.tolist())) == 1 for row in plan.lang_ids)


# ---------------------------------------------------------------- DDP agreement
def test_rank_slices_disjoint_and_cover_global_batch():
    comps = [make(full(100), global_batch_size=8, world_size=4, rank=r) for r in range(4)]
    plan = comps[0].plan_epoch(1)
    per_rank = [list(c.local_batches(1)) for c in comps]
    for s in range(plan.num_steps):
        idx = [per_rank[r][s][1] for r in range(4)]
        langs = [per_rank[r][s][2] for r in range(4)]
        assert all(per_rank[r][s][0] == s for r in range(4))
        assert len(set(torch.cat(idx).tolist())) == 8  # disjoint
        assert torch.equal(torch.cat(idx), plan.indices[s]) and torch.equal(torch.cat(langs), plan.lang_ids[s])


@pytest.mark.parametrize("mode", ["per_batch", "within_batch"])
def test_all_ranks_agree_on_plan(mode):
    plans = [make(missing_own(100), mode=mode, world_size=4, rank=r).plan_epoch(2) for r in range(4)]
    for other in plans[1:]:
        for field in ("indices", "lang_ids", "mono", "step_lang", "redrawn"):
            assert torch.equal(getattr(plans[0], field), getattr(other, field))
    # the global plan does not depend on the world size either
    assert torch.equal(make(missing_own(100), mode=mode, world_size=1).plan_epoch(2).lang_ids, plans[0].lang_ids)


def test_plan_reproducible_and_epoch_dependent():
    a, b = make(seed=3).plan_epoch(0), make(seed=3).plan_epoch(0)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.lang_ids, b.lang_ids)
    assert not torch.equal(a.indices, make(seed=3).plan_epoch(1).indices)
    assert not torch.equal(a.indices, make(seed=4).plan_epoch(0).indices)
    torch.manual_seed(0)  # global random state must not matter
    c = make(seed=3).plan_epoch(0)
    torch.manual_seed(99)
    assert torch.equal(c.indices, make(seed=3).plan_epoch(0).indices)


def test_epoch_is_a_pass_over_samples():
    plan = make(full(20), global_batch_size=8).plan_epoch(0)
    assert plan.num_steps == 2 and len(set(plan.indices.flatten().tolist())) == 16  # drop_last
    padded = make(full(20), global_batch_size=8, drop_last=False).plan_epoch(0)
    assert padded.num_steps == 3 and set(padded.indices.flatten().tolist()) == set(range(20))
    assert all(len(set(row.tolist())) == 8 for row in padded.indices)  # no duplicate inside a batch
    longer = make(full(20), global_batch_size=8, steps_per_epoch=5).plan_epoch(0)
    assert longer.num_steps == 5 and all(len(set(row.tolist())) == 8 for row in longer.indices)


# ---------------------------------------------------------------- languages
def test_languages_outside_train_never_drawn():
    comp = make(full(400), train_languages=["en", "jp"], ratio=0.4, mode="within_batch")
    plan = comp.plan_epoch(0)
    assert set(plan.lang_ids.unique().tolist()) == {LANGS.index("en"), LANGS.index("ja")}


def test_size_weighting_follows_counts():
    table = torch.zeros(4000, 4, dtype=torch.bool)
    table[:, 0] = True  # en: 4000 captions
    table[:1000, 1] = True  # de: 1000; fr: 0; ja: 2000
    table[2000:, 3] = True
    comp = make(table, language_weighting="size", ratio=0.0, global_batch_size=40)
    weights = comp.language_weights.tolist()
    assert weights == pytest.approx([4 / 7, 1 / 7, 0.0, 2 / 7])
    plan = comp.plan_epoch(0)
    counts = torch.bincount(plan.lang_ids.flatten(), minlength=4).double() / plan.lang_ids.numel()
    assert counts[0] > counts[3] > counts[1] > 0 and counts[2] == 0
    assert torch.equal(make(table).language_weights, torch.tensor([1 / 3, 1 / 3, 0, 1 / 3], dtype=torch.float64))


def test_redraw_counted_and_never_unavailable():
    table = missing_own(400)
    comp = make(table, ratio=0.5, global_batch_size=16)
    plan = comp.plan_epoch(0)
    assert table[plan.indices, plan.lang_ids].all()
    assert plan.redrawn.sum() > 0
    assert not (plan.mono & plan.redrawn).any()
    list(comp.local_batches(0))
    assert comp.stats()["composition/redraws"] == plan.redrawn.sum().item()


def test_samples_without_train_language_are_skipped():
    table = full(40)
    table[:5] = False
    table[5:10] = torch.tensor([False, False, False, True])  # only ja, not a train language
    comp = make(table, train_languages=["en", "de", "fr"], global_batch_size=6)
    plan = comp.plan_epoch(0)
    assert plan.skipped == 10 and plan.indices.min() >= 10
    assert comp.stats()["composition/skipped"] == 10


def test_error_policy_names_sample_and_language():
    table = full(16)
    table[11, :] = torch.tensor([True, False, False, False])  # sample 11 has English only
    with pytest.raises(MissingCaptionError, match=r"sample 11 has no caption in language '(de|fr|ja)'"):
        for seed in range(20):  # some seed draws a non-English language for sample 11
            make(table, seed=seed, ratio=0.0, missing_caption_policy="error",
                 global_batch_size=16, world_size=1).plan_epoch(0)
    assert make(full(16), missing_caption_policy="error", global_batch_size=16).plan_epoch(0).num_steps == 1


# ---------------------------------------------------------------- stats
def test_stats_match_plan_and_are_rank_independent():
    comps = [make(missing_own(300), mode="within_batch", ratio=0.3, world_size=2, rank=r,
                  train_languages=["en", "de", "fr"], global_batch_size=10) for r in range(2)]
    for comp in comps:
        it = comp.local_batches(0)
        for _ in range(7):
            next(it)
    stats = comps[0].stats()
    assert stats == comps[1].stats()
    plan = comps[0].plan_epoch(0)
    assert stats["composition/mono_share"] == pytest.approx(plan.mono[:7].double().mean().item())
    assert stats["composition/mono_share"] == pytest.approx(0.3)
    assert stats["composition/languages_seen"] == 3 and stats["composition/lang_share/ja"] == 0.0
    shares = [stats[f"composition/lang_share/{lang}"] for lang in LANGS]
    assert sum(shares) == pytest.approx(1.0)
    assert shares[0] == pytest.approx((plan.lang_ids[:7] == 0).double().mean().item())
    assert stats["composition/redraws"] == plan.redrawn[:7].sum().item()
    assert all(set(name) <= set("abcdefghijklmnopqrstuvwxyz_/") for name in stats)


def test_from_config():
    cfg = TrialConfig(ratio=0.25, mode="within_batch", batch_size=8, num_workers=2, seed=5,
                      train_languages=("en", "de"), steps_per_epoch=3)
    comp = BatchComposer.from_config(cfg, full(64), LANGS, rank=1, world_size=2)
    assert comp.num_steps(0) == 3 and comp.local_batch_size == 4
    assert (comp.plan_epoch(0).mono.sum(dim=1) == 2).all()


# ---------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(train_languages=["xx"]), "unknown language code 'xx'"),
        (dict(train_languages=["ko"]), "not among the data's languages"),
        (dict(global_batch_size=128), "fewer than global_batch_size"),
    ],
)
def test_bad_data_gives_one_clear_error(kwargs, match):
    """The composer checks its data; the trial settings are TrialConfig's to check (test_config)."""
    with pytest.raises(ComposerError, match=match):
        make(**kwargs)


def test_bad_table_and_languages():
    with pytest.raises(ComposerError, match="unknown language code 'xx'"):
        BatchComposer(full(8, 2), ["en", "xx"], ratio=0.5, mode="per_batch", global_batch_size=4, rank=0,
                      world_size=1, seed=0)
    with pytest.raises(ComposerError, match=r"expected \[N, 4\]"):
        make(full(8, 3))
    with pytest.raises(ComposerError, match="BoolTensor"):
        make(full(64).int())
