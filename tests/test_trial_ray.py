"""The trial on Ray Train: 2 DDP workers report metrics and checkpoints; a re-fit resumes."""

import math

import pytest

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_two_workers_report_checkpoint_and_resume(ray_local, tiny_config, tmp_path):
    from trainables.driver import fit_trial
    from trainables.session import load_state

    config = tiny_config.replace(num_workers=2, epochs=1)
    result = fit_trial(config, name="trial_two_workers", storage_path=str(tmp_path))
    assert result.metrics["epoch"] == 1.0
    assert math.isfinite(result.metrics["map10/multilingual"])
    assert 0.0 <= result.metrics["composition/mono_share"] <= 1.0
    assert result.checkpoint is not None
    with result.checkpoint.as_directory() as directory:
        assert load_state(directory)["config"]["num_workers"] == 2

    # Same name + storage: Ray Train finds the run's checkpoints and the loop resumes at epoch 2.
    resumed = fit_trial(config.replace(epochs=2), name="trial_two_workers", storage_path=str(tmp_path))
    assert resumed.metrics["epoch"] == 2.0
    history = resumed.metrics_dataframe
    assert list(history["epoch"]) == [1.0, 2.0]
    # Epoch 1's row is the restored record of the first fit (identical timing), not a re-run.
    assert history["train/epoch_time_s"].iloc[0] == result.metrics["train/epoch_time_s"]


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
