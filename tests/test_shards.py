"""WebDataset shards: writing, shard specs, the rank x worker split, loading, corrupt input."""

import io
import json
import tarfile
from collections import Counter

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from trainables.config import TrialConfig
from trainables.data.shards import (ShardStream, ShardWriter, collate_samples, count_samples, expand_shards,
                                    iter_shard, load_shards)
from trainables.data.sources import load_train_set
from trainables.data.types import DataError

LANGS = ["en", "de", "jp", "ko"]


def png(i: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (10, 6), (i * 7 % 256, 100, 200)).save(out, format="PNG")
    return out.getvalue()


def write_corpus(dest, n=22, per_shard=3, corrupt=()):
    """``n`` samples in ceil(n / per_shard) shards; indices in ``corrupt`` get undecodable images."""
    with ShardWriter(dest, per_shard=per_shard, prefix="train") as writer:
        for i in range(n):
            image = b"garbage" if i in corrupt else png(i)
            writer.add(f"{i:05d}", image, "png", {LANGS[i % 4]: f"caption {i}", "en": f"image {i}"})
    return writer.paths


def test_writer_and_shard_specs(tmp_path):
    paths = write_corpus(tmp_path / "s", n=10, per_shard=3)
    assert [p.name for p in paths] == [f"train-{i:06d}.tar" for i in range(4)]
    assert not list((tmp_path / "s").glob("*.part"))
    assert expand_shards(tmp_path / "s") == paths
    assert expand_shards(str(tmp_path / "s" / "*.tar")) == paths
    assert expand_shards(str(tmp_path / "s" / "train-{000001..000002}.tar")) == paths[1:3]
    assert expand_shards(f"{paths[0]}::{paths[3]}") == [paths[0], paths[3]]
    assert [count_samples(p) for p in paths] == [3, 3, 3, 1]
    with pytest.raises(DataError, match="no shards match"):
        expand_shards(str(tmp_path / "s" / "nope-*.tar"))
    with pytest.raises(DataError, match="shards must be local paths"):
        expand_shards("s3://bucket/train-{0..3}.tar")
    with pytest.raises(DataError, match="shard not found"):
        expand_shards(str(tmp_path / "s" / "train-{000007..000008}.tar"))


def test_shards_are_webdataset_compatible(tmp_path):
    import webdataset as wds

    paths = write_corpus(tmp_path, n=4, per_shard=4)
    samples = list(wds.WebDataset(str(paths[0]), shardshuffle=False))
    assert [s["__key__"] for s in samples] == ["00000", "00001", "00002", "00003"]
    assert json.loads(samples[1]["json"])["captions"] == {"de": "caption 1", "en": "image 1"}


def keys_of_rank(paths, rank, epoch, workers=2):
    stream = ShardStream(paths, image_size=8, rank=rank, world_size=2, seed=3)
    stream.set_epoch(epoch)
    loader = DataLoader(stream, batch_size=4, num_workers=workers, collate_fn=collate_samples)
    keys, skipped = [], Counter()
    for batch in loader:
        assert batch["images"].shape[1:] == (3, 8, 8)
        keys += batch["keys"]
        skipped.update(batch["skipped"])
    return keys, skipped


@pytest.mark.parametrize("per_shard", [3, 12])  # 8 shards >= 4 splits; 2 shards < 4 splits
def test_stream_splits_by_rank_and_worker_without_loss_or_repeat(tmp_path, per_shard):
    paths = write_corpus(tmp_path, n=22, per_shard=per_shard, corrupt={5})
    for epoch in (0, 1):
        seen, skipped = [], Counter()
        for rank in (0, 1):
            keys, skips = keys_of_rank(paths, rank, epoch)
            assert keys, f"rank {rank} got no samples"
            seen += keys
            skipped.update(skips)
        assert len(seen) == len(set(seen)) == 21  # none twice
        assert skipped == {"unreadable_images": 1}  # and none lost: 21 + 1 = 22
        assert "train-000001/00005" not in seen if per_shard == 3 else "train-000000/00005" not in seen


def test_load_shards_counts_skips(tmp_path):
    write_corpus(tmp_path / "s", n=7, per_shard=3, corrupt={2})
    with tarfile.open(tmp_path / "s" / "extra.tar", "w") as tar:  # a sample with captions but no image
        data = json.dumps({"en": "flat captions, no image"}).encode()
        info = tarfile.TarInfo("lonely.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    data = load_shards(tmp_path / "s", image_size=8)
    assert data.images.shape == (6, 3, 8, 8) and data.images.dtype == torch.uint8
    assert data.skipped["unreadable_images"] == 1 and data.skipped["missing_images"] == 1
    assert data.captions[0] == {"en": "image 0"} and data.captions[2] == {"ko": "caption 3", "en": "image 3"}
    assert data.names[0] == "train-000000/00000"
    with pytest.raises(DataError, match="sample 00002: unreadable image"):
        load_shards(tmp_path / "s", image_size=8, unreadable_policy="error")


def test_same_shard_names_in_two_folders_are_all_loaded(tmp_path):
    write_corpus(tmp_path / "a", n=3, per_shard=3)
    write_corpus(tmp_path / "b", n=3, per_shard=3)
    data = load_shards(f"{tmp_path / 'a'}::{tmp_path / 'b'}", image_size=8)
    assert len(data) == 6 and data.skipped["duplicate_samples"] == 0


def test_load_train_set_from_shards(tmp_path):
    write_corpus(tmp_path / "s", n=5, per_shard=2)
    config = TrialConfig(train_data=str(tmp_path / "s" / "train-{000000..000002}.tar"), eval_data=str(tmp_path),
                         image_size=8)
    data, eval_dir = load_train_set(config)
    assert len(data) == 5 and eval_dir == tmp_path


@pytest.mark.parametrize("keep", [512 * 8, 512 * 8 + 700, 0])  # cut at a header, inside a member, not a tar
def test_corrupt_shard_is_one_clear_error(tmp_path, keep):
    paths = write_corpus(tmp_path, n=6, per_shard=6)
    raw = paths[0].read_bytes()
    paths[0].write_bytes(raw[:keep] if keep else b"\x00garbage" * 100)
    with pytest.raises(DataError, match=r"corrupt shard .*train-000000.tar"):
        load_shards(paths[0], image_size=8)
    with pytest.raises(DataError, match=r"corrupt shard"):
        list(iter_shard(paths[0]))


def _raw_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_bad_captions_in_a_shard(tmp_path):
    no_json = _raw_tar(tmp_path / "a.tar", [("k1.png", png(1))])
    with pytest.raises(DataError, match=r"shard a.tar sample k1: no captions"):
        list(iter_shard(no_json))
    unknown = _raw_tar(tmp_path / "b.tar", [("k2.png", png(2)), ("k2.json", b'{"captions": {"xx": "hi"}}')])
    with pytest.raises(DataError, match=r"shard b.tar sample k2: unknown language code 'xx'"):
        list(iter_shard(unknown))
