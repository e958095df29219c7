"""Stand-in trial functions for testing the study plumbing (Tune, Optuna, MLflow) quickly.

They follow the contract of ``trainables.driver.fit_trial`` and report deterministic metrics
derived from the trial config, shaped like the real ones: mAP@100 per family peaks at a
family-specific ratio, so the study's table, best config and figure mean something.
Select one with the hidden ``--trial-fn`` flag of ``study.run``:

* ``study.testing:fit_trial_train`` runs a real ``TorchTrainer`` (Train V2 worker group,
  ``TuneReportCallback``, rank-0 MLflow logging, per-epoch checkpoints and restore);
* ``study.testing:fit_trial_direct`` skips Ray Train and reports with ``ray.tune.report``.

Test switches (environment, forwarded to Ray workers by the study):
``MLCLIP_FAKE_EPOCH_S`` seconds each epoch sleeps (default 0.2);
``MLCLIP_FAKE_FAIL_ABOVE_RATIO`` trials with a larger ratio fail with a non-finite loss.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from typing import Any, Optional

from trainables.config import TrialConfig
from trainables.languages import FAMILIES, LANGUAGE_FAMILIES
from trainables.tracking import TrackingInfo, TrialRun

# Ratio at which each family's (fake) mAP@100 peaks.
FAMILY_OPTIMA = {
    "germanic": 0.9, "romance": 0.75, "slavic": 0.6, "turkic": 0.45,
    "sinitic": 0.3, "japonic": 0.2, "koreanic": 0.1,
}


class FakeTrialFailed(RuntimeError):
    """A fake trial's failure; ``reason`` is what the study reports."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def fake_metrics(config: TrialConfig, epoch: int) -> dict[str, float]:
    """Deterministic per-epoch metrics of ``config``, with the names the real loop reports."""
    progress = epoch / config.epochs
    temp_factor = 1.0 - 0.3 * abs(math.log(config.temperature / 0.07))
    out: dict[str, float] = {"epoch": float(epoch)}
    per_lang = {}
    for i, (lang, family) in enumerate(LANGUAGE_FAMILIES.items()):
        peak = 1.0 - (config.ratio - FAMILY_OPTIMA[family]) ** 2
        per_lang[lang] = 0.05 + 0.6 * progress * peak * temp_factor + 0.003 * ((config.seed + i) % 3)
    for family in FAMILIES:
        values = [v for lang, v in per_lang.items() if LANGUAGE_FAMILIES[lang] == family]
        out[f"map100/multilingual/family/{family}"] = sum(values) / len(values)
    mean = sum(per_lang.values()) / len(per_lang)
    out.update(
        {
            "train/loss": 4.0 - 3.0 * progress * temp_factor,
            "train/samples_per_s": 100.0,
            "composition/mono_share": float(config.ratio),
            "map100/multilingual": mean,
            "map100/monolingual": mean + 0.05 * config.ratio,
            "map100/crosslingual": mean - 0.05 * config.ratio,
            "bias/multilingual": max(per_lang.values()) - min(per_lang.values()),
        }
    )
    out.update({f"map100/multilingual/lang/{lang}": v for lang, v in per_lang.items()})
    return out


def _maybe_fail(config: TrialConfig, epoch: int) -> None:
    limit = os.environ.get("MLCLIP_FAKE_FAIL_ABOVE_RATIO")
    if limit is not None and config.ratio > float(limit):
        raise FakeTrialFailed(f"non-finite loss (nan) at epoch {epoch}")


def _epoch_pause() -> None:
    time.sleep(float(os.environ.get("MLCLIP_FAKE_EPOCH_S", "0.2")))


def fit_trial_direct(
    config: TrialConfig,
    *,
    name: str,
    storage_path: str,
    tracking: Optional[TrackingInfo],
    callbacks: Any = (),
    max_failures: int = 0,
    resources_per_worker: Optional[dict] = None,
) -> dict:
    """Fake trial without Ray Train: log to MLflow as rank 0 would and ``ray.tune.report`` each epoch."""
    import ray.tune

    from study.trial import order_metrics

    run = TrialRun(tracking, config)
    try:
        for epoch in range(1, config.epochs + 1):
            _epoch_pause()
            _maybe_fail(config, epoch)
            metrics = fake_metrics(config, epoch)
            run.log_epoch(metrics, epoch)
            ray.tune.report(order_metrics(metrics, ("map100/multilingual", "bias/multilingual", "train/loss")))
    except FakeTrialFailed as err:
        run.finish("FAILED", err.reason)
        raise
    run.finish()
    return metrics


def _fake_worker_loop(loop_config: dict) -> None:
    """Per-worker loop of :func:`fit_trial_train`: resumes from the latest checkpoint."""
    import ray.train

    config = TrialConfig.from_dict(loop_config["config"])
    rank = ray.train.get_context().get_world_rank()
    start = 1
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            with open(os.path.join(folder, "state.json"), encoding="utf-8") as src:
                start = json.load(src)["epoch"] + 1
    run = TrialRun(loop_config["tracking"] if rank == 0 else None, config)
    try:
        for epoch in range(start, config.epochs + 1):
            _epoch_pause()
            _maybe_fail(config, epoch)
            metrics = fake_metrics(config, epoch)
            run.log_epoch(metrics, epoch)
            with tempfile.TemporaryDirectory() as folder:
                saved = None
                if rank == 0:
                    with open(os.path.join(folder, "state.json"), "w", encoding="utf-8") as out:
                        json.dump({"epoch": epoch}, out)
                    saved = ray.train.Checkpoint.from_directory(folder)
                ray.train.report(metrics, checkpoint=saved)
    except FakeTrialFailed as err:
        run.finish("FAILED", err.reason)
        raise
    run.finish()


def fit_trial_train(
    config: TrialConfig,
    *,
    name: str,
    storage_path: str,
    tracking: Optional[TrackingInfo],
    callbacks: Any = (),
    max_failures: int = 0,
    resources_per_worker: Optional[dict] = None,
):
    """Fake trial on a real ``TorchTrainer`` (Train V2), per the ``fit_trial`` contract."""
    import ray.train
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        _fake_worker_loop,
        train_loop_config={"config": config.to_dict(), "tracking": tracking},
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.num_workers, use_gpu=config.use_gpu, resources_per_worker=resources_per_worker
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=list(callbacks),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as err:  # Train V2 raises TrainingFailedError
        from study.trial import failure_reason

        raise FakeTrialFailed(failure_reason(err)) from err
    if getattr(result, "error", None) is not None:
        raise FakeTrialFailed(str(result.error))
    return result
