"""Step-level progress inside a trial's epoch, written by rank 0 only.

On a terminal (a trial run in this process with ``run_local``): a ``tqdm`` bar. Otherwise
(every Ray worker: its output is a pipe that Ray forwards to the study's console) one line
every ``progress_every_s`` seconds of the trial config (default 10; 0 switches it off)::

    r=0.02 s=1 epoch=1/4 step=120/200 loss=3.912 samples/s=58.1 eta=2m05s

Every word of that line holds a digit on purpose: Ray's log deduplication drops the words
with digits and folds lines that are then equal across processes into "[repeated Nx across
cluster]"; a line with nothing left is never folded, so two concurrent trials both show.
The ETA is the training time left in the trial at the current rate (evaluations excluded).
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Optional, TextIO

from trainables.mlflow_layout import ratio_label

DEFAULT_EVERY_S = 10.0


def format_duration(seconds: float) -> str:
    """``75`` -> ``1m15s``, ``3725`` -> ``1h02m``, ``9`` -> ``9s`` (always with a digit)."""
    s = max(0, int(round(seconds)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class StepProgress:
    """Progress of one epoch: :meth:`update` after every step, :meth:`close` after the last.

    ``label``: what names the trial (e.g. ``r=0.02 s=1``); ``epoch`` is 0-based, ``epochs`` the
    trial's total, ``steps`` this epoch's global steps, ``batch_size`` the global batch. The
    loss (a running sum, possibly on a GPU) is read only when a line is written, so the loop
    never waits on the device for it between lines.
    """

    def __init__(self, label: str, epoch: int, epochs: int, steps: int, batch_size: int, enabled: bool = True,
                 every_s: Optional[float] = None, stream: Optional[TextIO] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.label, self.epoch, self.epochs, self.steps, self.batch_size = label, epoch, epochs, steps, batch_size
        self.stream = stream or sys.stdout
        self.every_s = DEFAULT_EVERY_S if every_s is None else every_s
        self.enabled = enabled and self.every_s > 0
        self.clock = clock
        self.started = self._next = clock()
        self._next += self.every_s
        self._bar = self._make_bar() if self.enabled and _is_terminal(self.stream) else None

    def _make_bar(self) -> Any:
        from tqdm import tqdm

        return tqdm(total=self.steps, desc=f"{self.label} epoch {self.epoch + 1}/{self.epochs}", file=self.stream,
                    leave=False, dynamic_ncols=True)

    def update(self, done: int, loss_sum: Any) -> None:
        """After ``done`` steps of this epoch, with ``loss_sum`` the sum of their losses."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(done - self._bar.n)
        now = self.clock()
        if now < self._next:
            return
        self._next = now + self.every_s
        loss = float(loss_sum) / max(done, 1)
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.3f}", refresh=True)
        else:
            print(self.line(done, loss, now - self.started), file=self.stream, flush=True)

    def line(self, done: int, loss: float, elapsed: float) -> str:
        """The progress line after ``done`` steps in ``elapsed`` seconds (see the module docstring)."""
        rate = done / elapsed if elapsed > 0 else 0.0
        left = (self.steps - done) + (self.epochs - self.epoch - 1) * self.steps
        eta = format_duration(left / rate) if rate > 0 else "0s?"
        return (f"{self.label} epoch={self.epoch + 1}/{self.epochs} step={done}/{self.steps} loss={loss:.3f} "
                f"samples/s={rate * self.batch_size:.1f} eta={eta}")

    def close(self) -> None:
        """End the epoch's bar (lines need no closing)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def trial_label(config: Any) -> str:
    """``r=0.0203 s=1``: the ratio (as :func:`~trainables.mlflow_layout.ratio_label` writes it) and
    the seed that tell a study's trials apart on the console."""
    return f"r={ratio_label(config.ratio)} s={config.seed}"


def epoch_progress(config: Any, epoch: int, steps: int, rank: int) -> StepProgress:
    """The progress of ``epoch`` for this rank: rank 0 reports, the others stay silent."""
    return StepProgress(trial_label(config), epoch, config.epochs, steps, config.batch_size, enabled=rank == 0,
                        every_s=config.progress_every_s)
