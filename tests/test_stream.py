"""Streamed training (train_loading="stream"): per-step composition, rank agreement, the real trial.

Fixture values reveal their source: sample i has a uniform image whose red channel is i,
and its caption in language L reads ``"L:i"``; the test tokenizer turns that caption into
``[i, index of L]``, so a batch shows which sample and which language every item came from.
"""

import io

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from trainables.composition import ComposerError, MissingCaptionError
from trainables.config import ConfigError, TrialConfig
from trainables.data.shards import ShardWriter
from trainables.languages import LANGUAGES
from trainables.stream import StreamComposer, StreamTrainSet

LANG_IDS = {lang: j for j, lang in enumerate(LANGUAGES)}


def png(i: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (i, 7, 9)).save(out, format="PNG")
    return out.getvalue()


def languages_of(i: int) -> list[str]:
    """Sample i has en always, plus one more language chosen by i."""
    return ["en", LANGUAGES[1 + i % (len(LANGUAGES) - 1)]]


def write_corpus(dest, n: int, per_shard: int, corrupt=()) -> None:
    with ShardWriter(dest, per_shard=per_shard, prefix="train") as writer:
        for i in range(n):
            image = b"garbage" if i in corrupt else png(i)
            writer.add(f"{i:05d}", image, "png", {lang: f"{lang}:{i}" for lang in languages_of(i)})


def source_tokenize(texts: list[str]) -> torch.Tensor:
    """``"L:i"`` -> ``[i, id of L]``: the test's stand-in tokenizer."""
    rows = [[int(t.split(":")[1]), LANG_IDS[t.split(":")[0]]] for t in texts]
    return torch.tensor(rows, dtype=torch.int64)


def composer(world=1, rank=0, **kw) -> StreamComposer:
    args = dict(ratio=0.5, mode="per_batch", global_batch_size=8, rank=rank, world_size=world, seed=3,
                steps_per_epoch=10)
    args.update(kw)
    return StreamComposer(LANGUAGES, **args)


def full_captions(b: int) -> list[dict]:
    return [{lang: f"{lang}:{i}" for lang in LANGUAGES} for i in range(b)]


# ---------------------------------------------------------------------------
# one composition rule: the streamed and the planned path agree
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode, missing", [("per_batch", False), ("per_batch", True), ("within_batch", False)])
def test_the_stream_composes_as_the_plan_does_for_the_same_samples(mode, missing):
    """Fed the planned path's samples in its order, the stream draws the same languages, the same
    monolingual slots and the same redraws (within_batch with missing captions differs on purpose:
    only the plan can prefer samples that have the step language)."""
    from trainables.composer import BatchComposer

    n, batch = 120, 12
    table = torch.ones(n, len(LANGUAGES), dtype=torch.bool)
    if missing:  # sample i has only en and one more language (as in languages_of)
        table[:] = False
        for i in range(n):
            table[i, [LANG_IDS[lang] for lang in languages_of(i)]] = True
    settings = dict(ratio=0.4, mode=mode, global_batch_size=batch, rank=0, world_size=1, seed=11)
    plan = BatchComposer(table, LANGUAGES, steps_per_epoch=6, **settings).plan_epoch(2)
    stream = StreamComposer(LANGUAGES, steps_per_epoch=6, **settings)
    for step in range(plan.num_steps):
        captions = [{lang: f"{lang}:{i}" for j, lang in enumerate(LANGUAGES) if table[i, j]}
                    for i in plan.indices[step].tolist()]
        lang_ids, _ = stream.assign(2, step, captions)
        assert torch.equal(lang_ids, plan.lang_ids[step]), step
    assert plan.redrawn.any() == missing
    stats = stream.stats()
    assert stats["composition/redraws"] == plan.redrawn.sum().item()
    assert stats["composition/mono_share"] == pytest.approx(plan.mono.double().mean().item())
    assert stats["composition/mono_step_share"] == pytest.approx(plan.mono_step.double().mean().item())


# ---------------------------------------------------------------------------
# the composer
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["per_batch", "within_batch"])
def test_every_rank_draws_the_same_global_step(mode):
    single = composer(mode=mode)
    halves = [composer(world=2, rank=r, mode=mode) for r in (0, 1)]
    for step in range(20):
        whole = single.step_draws(1, step)
        parts = [c.step_draws(1, step) for c in halves]
        assert parts[0]["step_lang"] == parts[1]["step_lang"] == whole["step_lang"]
        assert parts[0]["mono_step"] == parts[1]["mono_step"] == whole["mono_step"]
        assert torch.equal(torch.cat([p["lang"] for p in parts]), whole["lang"])
        assert torch.equal(torch.cat([p["mono_slot"] for p in parts]), whole["mono_slot"])
    assert not torch.equal(single.step_draws(1, 0)["lang"], single.step_draws(2, 0)["lang"])  # epochs differ


def test_within_batch_holds_exactly_round_r_times_b_monolingual_slots():
    for ratio, expected in ((0.0, 0), (0.3, 2), (0.5, 4), (1.0, 8)):  # round(0.3 * 8) = 2
        c = composer(ratio=ratio, mode="within_batch")
        for step in range(10):
            draws = c.step_draws(0, step)
            assert int(draws["mono_slot"].sum()) == expected
            assert (draws["lang"][draws["mono_slot"]] == draws["step_lang"]).all()


def test_per_batch_ratio_is_the_share_of_monolingual_steps():
    c = composer(ratio=0.25, global_batch_size=4)
    mono = [c.step_draws(0, s)["mono_step"] for s in range(2000)]
    assert abs(sum(mono) / len(mono) - 0.25) < 0.03
    assert all(composer(ratio=1.0).step_draws(0, s)["mono_step"] for s in range(50))
    assert not any(composer(ratio=0.0).step_draws(0, s)["mono_slot"].any() for s in range(50))


def test_the_drawn_caption_is_used_and_stats_count_it():
    c = composer(ratio=1.0)
    lang_ids, texts = c.assign(0, 4, full_captions(8))
    step_lang = c.step_draws(0, 4)["step_lang"]
    assert (lang_ids == step_lang).all()
    assert texts == [f"{LANGUAGES[step_lang]}:{i}" for i in range(8)]
    stats = c.stats()
    assert stats["composition/mono_share"] == 1.0 and stats["composition/mono_step_share"] == 1.0
    assert stats["composition/lang_share/" + LANGUAGES[step_lang]] == 1.0 and stats["composition/redraws"] == 0


def test_a_missing_caption_is_redrawn_among_the_samples_own_train_languages():
    c = composer(ratio=1.0, train_languages=("en", "de", "fr"))
    captions = [{"fr": f"fr:{i}", "zh": f"zh:{i}", "en": f"en:{i}"} if i % 2 else {"de": f"de:{i}"} for i in range(8)]
    redraws = 0
    for step in range(30):
        lang_ids, texts = c.assign(0, step, captions)
        for i, (lang, text) in enumerate(zip(lang_ids.tolist(), texts)):
            assert text == captions[i][LANGUAGES[lang]]  # the sample's own caption, in the id's language
            assert LANGUAGES[lang] in ("en", "de", "fr")  # zh is not a train language
        redraws = c.stats()["composition/redraws"]
    assert redraws > 0
    with pytest.raises(MissingCaptionError, match="sample k1 has no caption"):
        strict = composer(ratio=1.0, missing_caption_policy="error", train_languages=("de", "fr"))
        for step in range(30):
            strict.assign(0, step, [{"de": "de:0"}, {"fr": "fr:1"}] * 4, keys=[f"k{i}" for i in range(8)])


def test_composer_state_refuses_an_in_memory_checkpoint():
    c = composer()
    c.load_state_dict(c.state_dict())
    with pytest.raises(ComposerError, match="not a streamed one"):
        c.load_state_dict({"seed": 0, "epoch": 1, "step": 3, "global_batch_size": 8})


def test_config_checks_streaming_inputs():
    with pytest.raises(ConfigError, match="train_loading='stream'.*shard spec"):
        TrialConfig(train_loading="stream")
    with pytest.raises(ConfigError, match="language_weighting='size'"):
        TrialConfig(train_loading="stream", train_data="s/*.tar", language_weighting="size")
    with pytest.raises(ConfigError, match="train_loading='disk'"):
        TrialConfig(train_loading="disk")


# ---------------------------------------------------------------------------
# the stream, one rank
# ---------------------------------------------------------------------------
def stream_config(tmp_path, **kw) -> TrialConfig:
    base = dict(train_loading="stream", train_data=str(tmp_path / "shards"), eval_data=str(tmp_path / "xtd"),
                batch_size=4, image_size=8, seed=5, steps_per_epoch=None)
    base.update(kw)
    return TrialConfig(**base)


def read_epoch(data: StreamTrainSet, comp: StreamComposer, epoch: int) -> list[tuple[int, int, int]]:
    """(sample id from the image, sample id from the tokens, language id) of every item of the epoch."""
    out = []
    for step, images, tokens in data.epoch_batches(comp, epoch):
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 8, 8)
        out += [(int(img[0, 0, 0]), int(tok[0]), int(tok[1])) for img, tok in zip(images, tokens)]
    return out


@pytest.mark.parametrize("loader_workers", [0, 2])
def test_one_pass_delivers_every_usable_sample_once_with_its_own_caption(tmp_path, loader_workers):
    write_corpus(tmp_path / "shards", n=23, per_shard=5, corrupt={4, 9})
    config = stream_config(tmp_path, loader_workers=loader_workers)
    data = StreamTrainSet(config, source_tokenize, rank=0, world_size=1)
    comp = StreamComposer.from_config(config, LANGUAGES, 0, 1, data.nominal_steps)
    assert data.num_samples == 23 and data.nominal_steps == 5

    items = read_epoch(data, comp, epoch=0)
    assert all(image_id == token_id for image_id, token_id, _ in items)  # the caption belongs to the image
    assert all(LANGUAGES[lang] in languages_of(i) for i, _, lang in items)
    ids = [i for i, _, _ in items]
    assert len(ids) == len(set(ids)) == 20  # 21 usable samples, batches of 4: one left over
    assert set(ids) <= set(range(23)) - {4, 9}
    assert data.skipped == {"missing_images": 0, "unreadable_images": 2, "no_train_caption": 0, "stream_dropped": 1}

    again = read_epoch(data, comp, epoch=0)
    assert again == items  # an epoch is reproducible
    assert [i for i, _, _ in read_epoch(data, comp, epoch=1)] != ids  # the next epoch reshuffles the shards


def test_samples_without_a_train_language_caption_are_counted_not_composed(tmp_path):
    write_corpus(tmp_path / "shards", n=23, per_shard=5)
    only = LANGUAGES[1]  # samples 0, 10 and 20 have it (see languages_of)
    config = stream_config(tmp_path, batch_size=2, train_languages=(only,))
    data = StreamTrainSet(config, source_tokenize, rank=0, world_size=1)
    comp = StreamComposer.from_config(config, LANGUAGES, 0, 1, data.nominal_steps)
    items = read_epoch(data, comp, epoch=0)
    assert len(items) == 2 and {i for i, _, _ in items} <= {0, 10, 20}
    assert all(LANGUAGES[lang] == only for _, _, lang in items)
    assert data.skipped["no_train_caption"] == 20 and data.skipped["stream_dropped"] == 1


def test_steps_per_epoch_continues_into_new_passes(tmp_path):
    write_corpus(tmp_path / "shards", n=10, per_shard=5)
    config = stream_config(tmp_path, steps_per_epoch=7)
    data = StreamTrainSet(config, source_tokenize, rank=0, world_size=1)
    comp = StreamComposer.from_config(config, LANGUAGES, 0, 1, data.nominal_steps)
    ids = [i for i, _, _ in read_epoch(data, comp, epoch=0)]
    assert len(ids) == 28 and set(ids) == set(range(10))  # 2.8 passes over 10 samples
    drawn_mono = [comp.step_draws(0, step)["mono_step"] for step in range(7)]
    assert comp.stats()["composition/mono_step_share"] == sum(drawn_mono) / 7  # every step counted once
    assert data.skipped["stream_dropped"] == 0


# ---------------------------------------------------------------------------
# the stream, two ranks under gloo: uneven splits still end on the same step
# ---------------------------------------------------------------------------
def _rank_worker(rank: int, world: int, root: str, out: str) -> None:
    from pathlib import Path

    dist.init_process_group("gloo", init_method=f"file://{root}/store", rank=rank, world_size=world)
    config = stream_config(Path(root))
    data = StreamTrainSet(config, source_tokenize, rank=rank, world_size=world)
    comp = StreamComposer.from_config(config, LANGUAGES, rank, world, data.nominal_steps)
    steps, ids = 0, []
    for step, images, tokens in data.epoch_batches(comp, 0):
        steps += 1
        ids += [int(t[0]) for t in tokens]
    stats = comp.stats()
    torch.save({"steps": steps, "ids": ids, "skipped": data.skipped, "stats": stats}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_collectives_use_the_gpu_under_nccl(monkeypatch):
    """NCCL has no CPU tensors: the agreement and the counts must go through the current GPU."""
    from trainables import stream

    monkeypatch.setattr(dist, "get_backend", lambda *a: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert stream.collective_device() == torch.device("cuda", 3)
    monkeypatch.setattr(dist, "get_backend", lambda *a: "gloo")
    assert stream.collective_device() == torch.device("cpu")


def test_two_ranks_with_uneven_splits_stop_together(tmp_path):
    # 3 shards over 2 ranks: one rank holds 2 shards (12 samples), the other 1 (6 samples)
    write_corpus(tmp_path / "shards", n=18, per_shard=6)
    out = tmp_path / "out"
    out.mkdir()
    mp.spawn(_rank_worker, args=(2, str(tmp_path), str(out)), nprocs=2, join=True)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["steps"] == ranks[1]["steps"] == 3  # local batch 2: the small rank fills 3 steps
    ids = ranks[0]["ids"] + ranks[1]["ids"]
    assert len(ids) == len(set(ids)) == 12
    assert ranks[0]["skipped"] == ranks[1]["skipped"] and ranks[0]["skipped"]["stream_dropped"] == 6
    assert ranks[0]["stats"] == ranks[1]["stats"]  # reduced over ranks
    assert sum(v for k, v in ranks[0]["stats"].items() if k.startswith("composition/lang_share/")) == pytest.approx(1)


# ---------------------------------------------------------------------------
# the real trial, streamed
# ---------------------------------------------------------------------------
class _Interrupted(Exception):
    pass


def test_a_streamed_trial_trains_evaluates_and_resumes(tmp_path, tiny_config, synthetic_shards):
    from trainables.session import LocalSession, load_checkpoint
    from trainables.train import run_local, train_worker

    shards, test_dir = synthetic_shards
    config = tiny_config.replace(train_loading="stream", train_data=str(shards), eval_data=str(test_dir),
                                 loader_workers=1)

    class StopAfterFirstEpoch(LocalSession):
        def report(self, metrics, state):
            super().report(metrics, state)  # the checkpoint is written before the "crash"
            raise _Interrupted

    with pytest.raises(_Interrupted):
        train_worker(config, StopAfterFirstEpoch(checkpoint_dir=tmp_path / "ckpt"))
    assert load_checkpoint(tmp_path / "ckpt")["composer"]["stream"] is True
    resumed = run_local(config, checkpoint_dir=tmp_path / "ckpt")
    straight = run_local(config, checkpoint_dir=tmp_path / "fresh")
    assert [r["epoch"] for r in resumed] == [2.0] and len(straight) == 2
    last = straight[-1]
    assert last["train/steps"] == 8.0  # 256 samples in batches of 32: one pass
    assert 0.0 < last["map10/multilingual"] <= 1.0 and last["composition/languages_seen"] == 11
    assert last["data/stream_dropped"] == 0 and last["data/unreadable_images"] == 0
    # the same seed gives the same stream and draws: resuming changes nothing
    assert resumed[0]["train/loss"] == pytest.approx(last["train/loss"], rel=1e-6)
    assert resumed[0]["map10/multilingual"] == pytest.approx(last["map10/multilingual"], abs=1e-6)
