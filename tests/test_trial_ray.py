"""The trial on Ray Train: 2 DDP workers report metrics and checkpoints; a re-fit resumes."""

import math

import pytest

import ray


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_two_workers_report_checkpoint_and_resume(ray_local, tiny_config, tmp_path):
    """A 2-worker trial stopped after epoch 1 resumes at epoch 2 from its checkpoint (same name and
    storage); a trial whose settings changed refuses the checkpoint instead of continuing it."""
    from tests.standins import MarkedWorker
    from trainables.driver import TrialFailed, fit_trial
    from trainables.session import load_checkpoint

    config = tiny_config.replace(num_workers=2, epochs=2)
    marks = tmp_path / "marks"
    marks.mkdir()
    run = dict(name="trial_two_workers", storage_path=str(tmp_path / "runs"))
    with pytest.raises(TrialFailed, match="stopped after epoch 1"):
        fit_trial(config, train_loop=MarkedWorker(str(marks), stop_after=1), **run)
    assert sorted(p.name.split(".pid")[0] for p in marks.iterdir()) == ["rank0.epoch1", "rank1.epoch1"]

    for path in marks.iterdir():
        path.unlink()
    resumed = fit_trial(config, train_loop=MarkedWorker(str(marks)), **run)
    assert sorted(p.name.split(".pid")[0] for p in marks.iterdir()) == ["rank0.epoch2", "rank1.epoch2"]  # not epoch 1
    assert resumed.metrics["epoch"] == 2.0
    assert math.isfinite(resumed.metrics["map10/multilingual"])
    assert 0.0 <= resumed.metrics["composition/mono_share"] <= 1.0
    with resumed.checkpoint.as_directory() as directory:
        saved = load_checkpoint(directory)
    assert saved["epoch"] == 1 and saved["config"]["num_workers"] == 2

    with pytest.raises(TrialFailed, match=r"written with other settings: epochs \(2 -> 3\)"):
        fit_trial(config.replace(epochs=3), **run)


@pytest.mark.slow
def test_worker_error_surfaces_as_trial_failed(ray_local, tiny_config, tmp_path):
    from trainables.driver import TrialFailed, fit_trial

    config = tiny_config.replace(eval_data=str(tmp_path / "no_such_xtd_folder"), epochs=1)
    with pytest.raises(TrialFailed, match="no_such_xtd_folder"):
        fit_trial(config, name="trial_bad_data", storage_path=str(tmp_path))


@pytest.mark.slow
def test_two_workers_stream_uneven_shard_splits(ray_local, tiny_config, synthetic_shards, tmp_path):
    """Shards of 96, 96 and 64 samples over 2 workers: uneven splits, one step count on both ranks."""
    from trainables.data.shards import ShardStream, count_samples
    from trainables.driver import fit_trial

    shards, test_dir = synthetic_shards
    config = tiny_config.replace(num_workers=2, epochs=1, train_loading="stream", train_data=str(shards),
                                 eval_data=str(test_dir))
    result = fit_trial(config, name="trial_stream", storage_path=str(tmp_path / "runs"))
    order = ShardStream(shards, image_size=32, seed=config.seed).shard_order()  # epoch 0's order
    split = [sum(count_samples(shard) for shard in order[rank::2]) for rank in (0, 1)]
    assert sorted(split) in ([96, 160], [64, 192])
    steps = min(split) // 16  # local batch 16: the smaller split decides
    assert result.metrics["train/steps"] == steps
    assert result.metrics["data/stream_dropped"] == 256 - 32 * steps
    assert math.isfinite(result.metrics["map10/multilingual"])
    assert sum(v for k, v in result.metrics.items() if k.startswith("composition/lang_share/")) == pytest.approx(1)
