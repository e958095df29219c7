"""What a person sees while a study runs: one line per trial event, in place of Tune's reporter.

Tune's own output (its "Configuration for experiment" box naming the search algorithm, its
TensorBoard hint, its per-result boxes of ~20 metrics) speaks Tune's terms; the study's lines
name a trial the way its MLflow child run is named (``r=0.549 s=2 · 2cd32ce8``) and show the
objective, so the progress reads like the answer that follows it. :func:`tune_output_env`
turns Tune's reporter off; :class:`StudyProgress`, a Tune callback, prints instead.

``verbose`` (the CLI's ``--verbose``): 0 quiet; 1 (default) each trial's start, evaluations
and end; 2 also the mAP@100 of every family at each evaluation.
"""

from __future__ import annotations

import os
import time
from typing import Any, Mapping, Optional, Sequence

from ray.tune import Callback

from study import console
from trainables.languages import FAMILIES
from trainables.metric_names import BIAS_METRIC, FAMILY_METRIC, logged_name
from trainables.mlflow_layout import trial_run_name

# Tune's states as the study names them (counted on every line: how far the study is).
_STATES = (("RUNNING", "running"), ("TERMINATED", "done"), ("ERROR", "failed"))


def tune_output_env() -> None:
    """Tune prints nothing of its own: its older output path, at verbosity 0, takes no reporter
    (the newer one prints its configuration box whatever the verbosity). Set before ``fit``."""
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"


def trial_label(trial: Any) -> str:
    """A trial as its MLflow child run is named: :func:`trainables.mlflow_layout.trial_run_name` of
    the Tune config, the call :func:`study.trial.run_trial` makes."""
    return trial_run_name(trial.trial_id, getattr(trial, "config", None) or {})


class StudyProgress(Callback):
    """A Tune callback that prints one line per trial event (see the module docstring).

    ``objective``: the metric shown first (a logged or source name, as the trial reports it under
    both); ``planned``: the trial count shown on every line (None: unknown), ``at_most`` when the
    study may stop before it (raced seeds); ``verbose``: 0-2.
    A line reads ``[  3:05] done      r=0.549 s=2 · 2cd32ce8  multi 0.121  (5 done, 2 running of 12)``.
    """

    def __init__(self, objective: str, planned: Optional[int] = None, verbose: int = 1, at_most: bool = False):
        self.objective, self.planned, self.verbose, self.at_most = objective, planned, verbose, at_most
        self._start = time.monotonic()
        self._started: dict[str, float] = {}  # trial id -> when this fit saw it start

    def setup(self, **info: Any) -> None:  # noqa: D102 - Tune calls it once per fit (a resume included)
        self._start, self._started = time.monotonic(), {}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:  # noqa: D102
        self._started[trial.trial_id] = time.monotonic()
        self._say("started", trial, trials, now="RUNNING")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: Mapping[str, Any], **info: Any) -> None:  # noqa: D102
        values = self.values_text(result)
        if values:  # epochs without an evaluation have no objective: nothing worth a line
            epoch = result.get("epoch")
            self._say(f"epoch {int(epoch)}" if isinstance(epoch, (int, float)) else "result", trial, trials, values)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:  # noqa: D102
        values = self.values_text(trial.last_result or {}, families=False)
        self._say("done", trial, trials, "  ".join(filter(None, [values, self._took(trial)])), now="TERMINATED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:  # noqa: D102
        self._say("failed", trial, trials, "  ".join(filter(None, [self._took(trial), "(the reason is listed at the end)"])),
                  now="ERROR")

    def values_text(self, result: Mapping[str, Any], families: Optional[bool] = None) -> str:
        """The objective and the bias of ``result`` (and, at verbose 2, mAP@100 per family); '' without the objective."""
        objective = result.get(self.objective)
        if not isinstance(objective, (int, float)):
            return ""
        parts = [f"{logged_name(self.objective)} {objective:.3f}"]
        bias = result.get(BIAS_METRIC)
        if isinstance(bias, (int, float)):
            parts.append(f"bias {bias:.1f}")
        images = result.get("eval/images")  # intermediate evaluations rank a subset: their values run higher
        if isinstance(images, (int, float)):
            parts.append(f"({int(images)} test images)")
        if (self.verbose >= 2) if families is None else families:
            parts += [f"{f} {result[FAMILY_METRIC.format(f)]:.3f}" for f in FAMILIES
                      if isinstance(result.get(FAMILY_METRIC.format(f)), (int, float))]
        return "  ".join(parts)

    def counts_text(self, trials: Sequence[Any], trial: Any = None, now: Optional[str] = None) -> str:
        """``5 done, 2 running of 12``: the trials by state (states with none are left out), with
        ``trial`` counted in state ``now`` (Tune tells a callback before it updates the status)."""
        statuses = [now if now and t is trial else t.status for t in trials]
        counts = [f"{statuses.count(state)} {word}" for state, word in _STATES if state in statuses]
        return ", ".join(counts) + (f" of {'at most ' if self.at_most else ''}{self.planned}" if self.planned else "")

    def _took(self, trial: Any) -> str:
        start = self._started.get(trial.trial_id)
        return f"in {time.monotonic() - start:.0f} s" if start is not None else ""

    def _say(self, event: str, trial: Any, trials: Sequence[Any], values: str = "", now: Optional[str] = None) -> None:
        if self.verbose < 1:
            return
        minutes, seconds = divmod(int(time.monotonic() - self._start), 60)
        line = f"[{minutes:3d}:{seconds:02d}] {event:<9} {trial_label(trial)}"
        console.say("  ".join(part for part in (line, values, f"({self.counts_text(trials, trial, now)})") if part))


__all__ = ["StudyProgress", "tune_output_env", "trial_label"]
