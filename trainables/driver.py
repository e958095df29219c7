"""The trial driver: builds and fits one Ray Train ``TorchTrainer`` for a :class:`TrialConfig`.

Ray's three layers, each small: ``study/`` builds the Tuner; this module builds the
TorchTrainer of one trial; :func:`trainables.train.train_worker` trains on each
worker. The trainer's run name is the trial's name (never a timestamp): Ray Train
restores a run from its storage by name, so a restarted trial finds its checkpoints.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence

from trainables.config import TrialConfig
from trainables.errors import TrialFailed, root_cause

# Faster detection of finished/failed worker groups: a shorter per-trial teardown than Ray's
# default of 2 s (measured: docs/performance.md). The one place this value lives;
# study/cluster.py passes it on to Ray. setdefault: a user's value wins.
HEALTH_CHECK_INTERVAL_S = "0.5"
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", HEALTH_CHECK_INTERVAL_S)


def ray_worker_entry(payload: dict[str, Any]) -> None:
    """What Ray Train runs on every worker: train ``payload["config"]`` (the trial's TrialConfig,
    as built and validated once by the trial) in a Ray Train session."""
    # On the worker only: the driver (imported by the study's CLI) never loads torch's training stack
    from trainables.session import RaySession
    from trainables.train import train_worker

    config: TrialConfig = payload["config"]
    train_worker(config, RaySession(config.use_gpu), payload["tracking"])


def build_trainer(config: TrialConfig, *, name: str, storage_path: str, tracking=None,
                  callbacks: Sequence = (), max_failures: int = 0,
                  resources_per_worker: Optional[dict] = None,
                  train_loop: Callable[[dict], None] = ray_worker_entry):
    """A ``TorchTrainer`` for one trial.

    ``config.num_workers`` workers (1 CPU each, plus 1 GPU each with ``use_gpu``),
    gloo on CPU and NCCL on GPU; ``max_failures`` restarts of the worker group from
    the latest checkpoint; the two newest checkpoints are kept; a local ``storage_path`` is
    written in whole files only (:mod:`trainables.storage_fs`). ``train_loop`` is the
    per-worker function; it receives ``{"config": TrialConfig, "tracking": TrackingInfo | None}``
    (default :func:`ray_worker_entry`, which trains; another one, e.g. a test's, may wrap it).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from trainables.storage_fs import storage_filesystem  # imports pyarrow: the CLI imports this module, needs none

    if "://" not in storage_path:  # Ray expands "~" only for the file systems it picks itself, not for ours
        storage_path = os.path.expanduser(storage_path)
    return TorchTrainer(
        train_loop,
        train_loop_config={"config": config, "tracking": tracking},
        torch_config=TorchConfig(backend="nccl" if config.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=config.num_workers,
            use_gpu=config.use_gpu,
            resources_per_worker=resources_per_worker,
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem(storage_path),  # whole files only: a full disk corrupts nothing
            callbacks=list(callbacks),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )


def fit_trial(config: TrialConfig, **kwargs):
    """Build and fit the trainer; raise :class:`TrialFailed` with the root cause on failure."""
    trainer = build_trainer(config, **kwargs)
    try:
        result = trainer.fit()
    except Exception as err:  # Ray wraps the worker's exception; surface its message
        raise TrialFailed(root_cause(err)) from err
    if getattr(result, "error", None) is not None:
        raise TrialFailed(root_cause(result.error))
    return result


