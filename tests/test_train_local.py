"""The per-worker function without Ray: trains, reports, checkpoints, resumes, fails clearly."""

import math

import pytest
import torch

from trainables.session import load_checkpoint
from trainables.train import NonFiniteLossError, run_local


def test_trains_and_reports_every_epoch(tiny_config, tmp_path):
    reports = run_local(tiny_config, checkpoint_dir=tmp_path)
    assert [r["epoch"] for r in reports] == [1.0, 2.0]
    last = reports[-1]
    for key in ("train/loss", "train/samples_per_s", "composition/mono_share", "map10/multilingual",
                "map10/multilingual/family/romance", "map10/monolingual", "map10/crosslingual", "bias/multilingual"):
        assert key in last and math.isfinite(last[key]), key
    assert reports[1]["train/loss"] < reports[0]["train/loss"]  # it learns something
    saved = load_checkpoint(tmp_path)
    assert saved["epoch"] == 1 and saved["config"]["ratio"] == 0.5


class _Interrupted(Exception):
    pass


def test_resume_continues_after_last_epoch(tiny_config, tmp_path):
    from trainables.session import LocalSession
    from trainables.train import train_worker

    class StopAfterFirstEpoch(LocalSession):
        def report(self, metrics, state):
            super().report(metrics, state)  # the checkpoint is written before the "crash"
            raise _Interrupted

    with pytest.raises(_Interrupted):
        train_worker(tiny_config, StopAfterFirstEpoch(checkpoint_dir=tmp_path))
    resumed = run_local(tiny_config, checkpoint_dir=tmp_path)
    assert [r["epoch"] for r in resumed] == [2.0]
    straight = run_local(tiny_config, checkpoint_dir=tmp_path / "fresh")
    # Same seed, same composer order, deterministic CPU kernels: resuming changes nothing.
    assert resumed[0]["train/loss"] == pytest.approx(straight[1]["train/loss"], rel=1e-6)
    assert resumed[0]["map10/multilingual"] == pytest.approx(straight[1]["map10/multilingual"], abs=1e-6)


def test_same_seed_same_metrics(tiny_config):
    a = run_local(tiny_config.replace(epochs=1))
    b = run_local(tiny_config.replace(epochs=1))
    assert a[0]["train/loss"] == b[0]["train/loss"]
    assert a[0]["map10/multilingual"] == b[0]["map10/multilingual"]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_config, tmp_path, monkeypatch):
    import trainables.train as train_mod

    real_epoch, good = train_mod.train_one_epoch, {}

    def poisoned_in_epoch_2(state, *args, **kwargs):
        if state.epoch == 1:  # the second epoch: keep the weights after epoch 1, then poison them
            model = train_mod._unwrap(state.model)
            good.update({k: v.clone() for k, v in model.state_dict().items()})
            with torch.no_grad():
                model.logit_scale.fill_(float("nan"))
        return real_epoch(state, *args, **kwargs)

    monkeypatch.setattr(train_mod, "train_one_epoch", poisoned_in_epoch_2)
    with pytest.raises(NonFiniteLossError, match="non-finite training loss in epoch 2"):
        run_local(tiny_config.replace(epochs=2), checkpoint_dir=tmp_path)
    kept = load_checkpoint(tmp_path)
    assert kept["epoch"] == 0 and good
    assert all(torch.equal(kept["model"][k], good[k]) for k in good)


def test_a_checkpoint_of_other_settings_is_refused_not_continued(tiny_config, tmp_path):
    """A resumed trial whose settings changed (here lr) stops with one line naming the field; a
    change of where things live or how many workers (data_cache, num_workers) is no change."""
    from trainables.config import ConfigError, resume_differences

    run_local(tiny_config.replace(epochs=1), checkpoint_dir=tmp_path)
    saved = load_checkpoint(tmp_path)["config"]
    with pytest.raises(ConfigError, match=r"written with other settings: lr \(0\.001 -> 0\.002\); start the trial afresh"):
        run_local(tiny_config.replace(epochs=1, lr=2e-3), checkpoint_dir=tmp_path)
    assert resume_differences(saved, tiny_config.replace(epochs=1, num_workers=2, data_cache=str(tmp_path))) == []
    assert resume_differences(saved, tiny_config.replace(epochs=1, ratio=0.25, seed=3)) == [
        "ratio (0.5 -> 0.25)", "seed (0 -> 3)"]


class _NoSharedCopy:
    """A Ray Train checkpoint whose shared temporary copy (``as_directory``) must not be used."""

    def __init__(self, checkpoint):
        self._checkpoint = checkpoint

    def __getattr__(self, name):
        return getattr(self._checkpoint, name)

    def as_directory(self):
        raise AssertionError("as_directory shares one temporary folder among a node's ranks")


@pytest.mark.parametrize("whole_files", [True, False], ids=["local-whole-files", "other-filesystem"])
def test_a_ray_worker_reads_its_checkpoint_without_a_folder_shared_with_other_ranks(tmp_path, monkeypatch, whole_files):
    """Each rank of a resumed Ray trial reads the checkpoint in place (a local storage path) or from
    a copy of its own (any other file system): Ray's shared copy races between ranks."""
    import pyarrow.fs
    import ray.train

    from trainables.session import RaySession, save_checkpoint
    from trainables.storage_fs import storage_filesystem

    stored = tmp_path / "checkpoint_epoch_0001"
    stored.mkdir()
    save_checkpoint({"epoch": 1, "weights": torch.arange(4.0)}, stored)
    filesystem = storage_filesystem(str(tmp_path)) if whole_files else pyarrow.fs.SubTreeFileSystem("/", pyarrow.fs.LocalFileSystem())
    checkpoint = _NoSharedCopy(ray.train.Checkpoint(str(stored), filesystem=filesystem))
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: checkpoint)
    state = RaySession.__new__(RaySession).latest_state()  # no train context needed to read
    assert state["epoch"] == 1 and torch.equal(state["weights"], torch.arange(4.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch_0001"]  # nothing left beside it
