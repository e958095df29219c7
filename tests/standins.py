"""Stand-in trials for testing the study plumbing (Tune, Optuna, MLflow) quickly.

A stand-in follows the contract of ``trainables.driver.fit_trial`` (the ``fit`` that
``study.run.main`` accepts) and reports deterministic metrics derived from the trial config,
shaped like the real ones: mAP@100 per family peaks at a family-specific ratio, so the
study's table, best config and figure mean something.

* :class:`DirectStandIn` skips Ray Train and reports with ``ray.tune.report``;
* :class:`TrainStandIn` runs the product's own ``trainables.driver.fit_trial`` (the real
  ``build_trainer``: Train V2 worker group, ``TuneReportCallback``, rank-0 MLflow logging,
  per-epoch checkpoints and restore) with :class:`FakeWorkerLoop` as the per-worker function.

Both are plain picklable objects: how long an epoch sleeps and above which ratio a trial fails
travel with them to the Ray workers, with no environment switch. A study subprocess runs one
with ``python -m tests.standins {direct,train} [--epoch-s S] [--fail-above R] [--hold-dir DIR] STUDY-ARGS...``
(:func:`standin_command`; :func:`repo_env` makes ``tests`` importable there and on the workers).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from trainables.config import TrialConfig
from trainables.languages import FAMILIES, LANGUAGE_FAMILIES
from trainables.trial_run import TrackingInfo, TrialRun

REPO = Path(__file__).resolve().parents[1]

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


@dataclass(frozen=True)
class Behaviour:
    """What a stand-in epoch does: with a ``hold_dir``, wait while a file ``hold.epoch{E}`` exists
    there (at most 5 minutes; a test's way to act at a known point), then add a line to its
    ``ran.epoch{E}`` (how often epoch E started); sleep ``epoch_s``; fail (non-finite loss) when
    ratio > ``fail_above``."""

    epoch_s: float = 0.2
    fail_above: Optional[float] = None
    hold_dir: Optional[str] = None

    def epoch(self, config: TrialConfig, epoch: int) -> dict[str, float]:
        """Maybe wait, sleep, maybe fail, and return the epoch's fake metrics."""
        if self.hold_dir:
            hold, deadline = Path(self.hold_dir) / f"hold.epoch{epoch}", time.monotonic() + 300
            while hold.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            with open(Path(self.hold_dir) / f"ran.epoch{epoch}", "a", encoding="utf-8") as ran:
                ran.write(f"{config.ratio}\n")
        time.sleep(self.epoch_s)
        if self.fail_above is not None and config.ratio > self.fail_above:
            raise FakeTrialFailed(f"non-finite loss (nan) at epoch {epoch}")
        return fake_metrics(config, epoch)


@dataclass(frozen=True)
class DirectStandIn:
    """A fake trial without Ray Train: logs to MLflow as rank 0 would and ``ray.tune.report``s each epoch."""

    behaviour: Behaviour = Behaviour()

    def __call__(self, config: TrialConfig, *, name: str, storage_path: str, tracking: Optional[TrackingInfo],
                 callbacks: Any = (), max_failures: int = 0, resources_per_worker: Optional[dict] = None) -> dict:
        import ray.tune

        from study.trial import order_metrics

        run = TrialRun(tracking, config)
        try:
            for epoch in range(1, config.epochs + 1):
                metrics = self.behaviour.epoch(config, epoch)
                run.log_epoch(metrics, epoch)
                ray.tune.report(order_metrics(metrics, ("map100/multilingual", "bias/multilingual", "train/loss")))
        except FakeTrialFailed as err:
            run.finish("FAILED", err.reason)
            raise
        run.finish()
        return metrics


@dataclass(frozen=True)
class FakeWorkerLoop:
    """A per-worker function for ``trainables.driver.build_trainer``: fake epochs, real session.

    It checkpoints through :class:`trainables.session.RaySession` (rank 0) and resumes after the
    last checkpointed epoch, as :func:`trainables.train.train_worker` does.
    """

    behaviour: Behaviour = Behaviour()

    def __call__(self, payload: dict) -> None:
        from trainables.session import RaySession

        config: TrialConfig = payload["config"]
        session = RaySession(use_gpu=False)
        saved = session.latest_state()
        run = TrialRun(payload["tracking"] if session.rank == 0 else None, config)
        try:
            for epoch in range((saved["epoch"] + 1) if saved else 1, config.epochs + 1):
                metrics = self.behaviour.epoch(config, epoch)
                run.log_epoch(metrics, epoch)
                session.report(metrics, {"epoch": epoch} if session.rank == 0 else None)
        except FakeTrialFailed as err:
            run.finish("FAILED", err.reason)
            raise
        run.finish()


@dataclass(frozen=True)
class TrainStandIn:
    """The product's ``fit_trial`` (real ``build_trainer``) with :class:`FakeWorkerLoop` on the workers."""

    behaviour: Behaviour = Behaviour()

    def __call__(self, config: TrialConfig, **kwargs: Any):
        from trainables.driver import fit_trial

        return fit_trial(config, train_loop=FakeWorkerLoop(self.behaviour), **kwargs)


class MarkingSession:
    """A session that lets a test see (and pause) each epoch start of a real training loop.

    It wraps the worker's real session. Where epoch ``E`` starts (after the checkpoint lookup
    for the first epoch, after the report of ``E - 1`` for the others) it writes an empty file
    ``rank{R}.epoch{E}.pid{P}`` into ``folder``; while a file ``hold.rank{R}.epoch{E}`` exists
    there, it waits (at most 5 minutes), so the test can kill the worker by pid at that point.
    """

    def __init__(self, inner: Any, folder: Path, epochs: int, stop_after: Optional[int] = None):
        self.inner, self.folder, self.epochs, self.stop_after = inner, folder, epochs, stop_after
        self.rank, self.world_size, self.device = inner.rank, inner.world_size, inner.device

    def _epoch_starts(self, epoch: int) -> None:
        if epoch > self.epochs:
            return
        (self.folder / f"rank{self.rank}.epoch{epoch}.pid{os.getpid()}").touch()
        hold, deadline = self.folder / f"hold.rank{self.rank}.epoch{epoch}", time.monotonic() + 300
        while hold.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def latest_state(self) -> Optional[dict]:
        saved = self.inner.latest_state()
        self._epoch_starts(int(saved["epoch"]) + 2 if saved else 1)  # saved["epoch"]: 0-based, done
        return saved

    def report(self, metrics: dict, state: Optional[dict]) -> None:
        self.inner.report(metrics, state)
        if self.stop_after is not None and int(metrics["epoch"]) >= self.stop_after:
            _wait_registered(f"checkpoint_epoch_{int(metrics['epoch']):04d}")
            raise StandInInterrupt(f"stopped after epoch {int(metrics['epoch'])}, its checkpoint written")
        self._epoch_starts(int(metrics["epoch"]) + 1)


def _wait_registered(checkpoint: str, timeout_s: float = 120.0) -> None:
    """Wait until Ray Train's controller lists ``checkpoint`` in its run snapshot (a local storage path).

    A worker that fails right after its report races the controller: a failure seen before every
    rank's report is registered loses the checkpoint (Ray Train tears the group down, rank 0 maybe
    still copying it). Stopping only once it is registered makes "stopped after epoch E" exact.
    """
    import ray.train

    snapshot = Path(ray.train.get_context().get_storage().checkpoint_manager_snapshot_path)  # DeveloperAPI
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not (snapshot.is_file() and checkpoint in snapshot.read_text(errors="ignore")):
        time.sleep(0.05)


class StandInInterrupt(RuntimeError):
    """A worker stopped on purpose (:class:`MarkingSession` with ``stop_after``)."""


@dataclass(frozen=True)
class MarkedWorker:
    """The product's per-worker training (``train_worker`` in a ``RaySession``) under a
    :class:`MarkingSession`; with ``stop_after`` every worker stops after that epoch's report."""

    folder: str
    stop_after: Optional[int] = None

    def __call__(self, payload: dict) -> None:
        from trainables.session import RaySession
        from trainables.train import train_worker

        config: TrialConfig = payload["config"]
        session = MarkingSession(RaySession(config.use_gpu), Path(self.folder), config.epochs, self.stop_after)
        train_worker(config, session, payload["tracking"])


STANDINS = {"direct": DirectStandIn, "train": TrainStandIn}


def repo_env(env: dict) -> dict:
    """``env`` with this checkout on ``PYTHONPATH``: a study subprocess and its Ray workers import ``tests``."""
    paths = [str(REPO), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    return {**env, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


def standin_command(kind: str, *study_args: str, epoch_s: float = 0.2, fail_above: Optional[float] = None,
                    hold_dir: Optional[str] = None) -> list[str]:
    """The command line of a study whose trials are stand-ins of ``kind`` (``direct`` or ``train``)."""
    extra = ["--fail-above", str(fail_above)] if fail_above is not None else []
    extra += ["--hold-dir", hold_dir] if hold_dir is not None else []
    return [sys.executable, "-m", "tests.standins", kind, "--epoch-s", str(epoch_s), *extra, *study_args]


def main(argv: Optional[list[str]] = None) -> int:
    """``study.run``'s entry point with a stand-in ``fit``; unknown flags are the study's."""
    parser = argparse.ArgumentParser(prog="python -m tests.standins", allow_abbrev=False)
    parser.add_argument("kind", choices=sorted(STANDINS))
    parser.add_argument("--epoch-s", type=float, default=0.2)
    parser.add_argument("--fail-above", type=float)
    parser.add_argument("--hold-dir")
    args, study_args = parser.parse_known_args(argv)
    from study.run import main as study_main

    fit = STANDINS[args.kind](Behaviour(args.epoch_s, args.fail_above, args.hold_dir))
    return study_main(study_args, fit=fit)


if __name__ == "__main__":
    from study.console import exit_quietly
    from tests.standins import main as importable_main  # its stand-ins pickle by reference, not as __main__'s

    exit_quietly(importable_main())
