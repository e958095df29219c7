"""A full disk stops the study instead of failing trials (docs/reliability.md, "The storage path or
the data cache fills").

A write that finds its file system full (the storage path, the data cache) says nothing about a
trial's settings, and every trial after it would meet the same full disk. Failing the trial
would tell the searcher it failed (Optuna records it FAIL, and a resume never trains it again).
So the trial asks its study to stop, and waits; the study stops as on Ctrl-C (Tune keeps the
trial unfinished, so ``--resume`` continues it from its last checkpoint) and prints one line
naming the full place (:mod:`study.execute`).

* A trial asks through :class:`StopRequests`, a named Ray actor in the study's job (each driver
  has its own namespace) that the first asking trial creates; it holds no CPU.
* The driver's :class:`StopWatch` looks for that actor once a second while Tune runs. It also
  filters the loggers through which Tune reports a failed save of its experiment state (Tune
  saves in a background thread and only logs the error): such a record asks for the stop too.
  Either way it interrupts Tune once, as Ctrl-C does.
* Ray logs a full disk with a traceback, in the driver (Tune) and in Ray Train's controller
  process; the study's one line says it instead. :class:`FullDiskRecords` drops those records:
  the driver's :class:`StopWatch` installs it, and so does :func:`quiet_full_disk_logs` in every
  Ray worker process (the setup hook of :func:`study.cluster.start_ray`).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import threading
import time
from typing import Callable, Optional

import ray

from trainables.errors import is_out_of_space, mentions_full_disk, out_of_space_line

MAILBOX = "mlclip-study-stop"
# How long a trial that asked waits to be stopped: the driver looks once a second and Tune then
# stops its trials within seconds; a trial still running after this fails with its reason.
STOP_WAIT_S = 300.0
POLL_S = 1.0
# Ray's loggers that report a full storage path with a traceback: Tune's save of its experiment
# state and its syncer (ray/tune/execution/experiment_state.py, ray/train/_internal/syncer.py, in
# the driver) and Ray Train's controller (its control loop, in the controller's process).
FULL_DISK_LOGGERS = (
    "ray.tune.execution.experiment_state",
    "ray.train._internal.syncer",
    "ray.train.v2._internal.execution.controller.controller",
)


@ray.remote(num_cpus=0)
class StopRequests:
    """The study's mailbox for stop requests: the first reason asked is the one the study prints."""

    def __init__(self) -> None:
        self.reason: Optional[str] = None

    def ask(self, reason: str) -> None:
        """Record ``reason`` unless a trial asked first."""
        self.reason = self.reason or reason

    def first(self) -> Optional[str]:
        """The first reason asked (None before any)."""
        return self.reason


def ask_study_to_stop(reason: str, wait_s: float = STOP_WAIT_S) -> None:
    """From a trial: ask the study to stop for ``reason`` (one line), then wait up to ``wait_s``
    for it to end this trial. Returns at once when the mailbox cannot be reached (no study driver
    behind this trial), and after ``wait_s`` otherwise: the caller then fails the trial."""
    try:
        mailbox = StopRequests.options(name=MAILBOX, get_if_exists=True).remote()
        ray.get(mailbox.ask.remote(reason), timeout=60)
    except Exception:  # noqa: BLE001 - no mailbox: the trial fails with its reason, as before
        return
    time.sleep(wait_s)


class FullDiskRecords(logging.Filter):
    """Drops a log record that reports a full disk (by its exception, or by the traceback text in
    its message), calling ``on_full(exception or None)`` first."""

    def __init__(self, on_full: Optional[Callable[[Optional[BaseException]], None]] = None):
        super().__init__()
        self.on_full = on_full

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: A003 - logging.Filter's hook
        err = record.exc_info[1] if record.exc_info else None
        if not ((err is not None and is_out_of_space(err)) or mentions_full_disk(record.getMessage())):
            return True
        if self.on_full is not None:
            self.on_full(err)
        return False


def quiet_full_disk_logs() -> None:
    """Ray's worker-process setup hook (:func:`study.cluster.start_ray`): in this process, Ray's
    records of a full disk are dropped (:class:`FullDiskRecords`); the study reports it in one line."""
    for name in FULL_DISK_LOGGERS:
        logging.getLogger(name).addFilter(FullDiskRecords())


class StopWatch:
    """The driver's side (see the module docstring); use as ``with StopWatch(storage) as watch:``
    around ``tuner.fit()``. ``reason`` is the first stop reason, None while there is none."""

    def __init__(self, storage_path: str):
        self.storage_path = storage_path
        self.reason: Optional[str] = None
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="mlclip-stop-watch", daemon=True)
        self._records = FullDiskRecords(on_full=self._storage_full)

    def __enter__(self) -> "StopWatch":
        for name in FULL_DISK_LOGGERS:
            logging.getLogger(name).addFilter(self._records)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join(timeout=5)
        for name in FULL_DISK_LOGGERS:
            logging.getLogger(name).removeFilter(self._records)
        if self.reason is None:
            # A trial may have asked after the watch's last look (Tune returned meanwhile): the study
            # still stops for it, or that trial's KILLED run would stand as a finished study's.
            late = self._asked(timeout_s=5)
            with self._lock:
                self.reason = self.reason or late

    def _asked(self, timeout_s: float = 30) -> Optional[str]:
        """The first reason a trial left in the mailbox; None when none did, or none can be read now
        (no mailbox yet, Ray going down, a slow GCS, or the asking trial ended meanwhile)."""
        try:
            return ray.get(ray.get_actor(MAILBOX).first.remote(), timeout=timeout_s) or None
        except Exception:  # noqa: BLE001 - see above: the caller looks again, or the study ends as it was
            return None

    def stop(self, reason: str) -> None:
        """Stop the study for ``reason``: the first call interrupts Tune (SIGINT, Tune's graceful
        stop); later calls change nothing."""
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
        os.kill(os.getpid(), signal.SIGINT)

    def _storage_full(self, err: Optional[BaseException]) -> None:
        """Tune could not save its state in the storage path: stop, naming it."""
        cause = err if err is not None else OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.stop(out_of_space_line("storage path", self.storage_path, cause))

    def _watch(self) -> None:
        # Once a second until Tune returns, a reason arrives, or Ray goes down (nothing more to watch)
        while not self._done.wait(POLL_S) and self.reason is None and ray.is_initialized():
            reason = self._asked()
            if reason:
                self.stop(reason)
