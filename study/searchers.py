"""The study's searchers on Tune's public ``Searcher`` API, and the Tune callbacks they need.

* :class:`SeedSearcher`: which (candidate, seed) each new trial trains, for a space with
  ``search.seeds`` (:mod:`study.race` decides; Optuna or a grid proposes the candidates).
* :class:`ResumeSafeOptuna`: ``OptunaSearch`` for a plain Optuna space, safe to resume after a
  kill that left Tune's saved trial list newer than the searcher (with :class:`TrialStarts`).
* :class:`LimiterSync`: keeps the ``ConcurrencyLimiter``'s live trials those Tune still runs,
  whatever order Tune's saved files reached the storage path in; :class:`RaceSync` does the same
  for a :class:`SeedSearcher`'s race.

:func:`searcher_callbacks` gives the callbacks a searcher needs; :mod:`study.tuning` builds both.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from typing import Any, Optional, Sequence

import numpy as np
from ray.tune import Callback
from ray.tune.search import Searcher

from study import console
from study.race import PENDING, SeedRace, write_race_report
from trainables.errors import one_line


class SeedSearcher(Searcher):
    """Tune's searcher of a study with seeds: which (candidate, seed) each new trial trains.

    The decisions are :class:`study.race.SeedRace`'s (equal seeds, or seeds raced to where the
    answer is uncertain); this class adapts them to Tune's public ``Searcher`` API. Candidates
    come from ``inner`` (Optuna: one proposal per candidate, told the mean of its first
    ``min_seeds`` seeds, so it models the ratio, not one seed's luck) or, for a grid, from
    ``grid`` (the grid's points, without seeds). Its state is plain JSON with the inner
    searcher's own file inside, so a resumed study continues the allocation where it stopped.
    """

    def __init__(self, race: SeedRace, metric: str, mode: str, inner: Any = None, grid: Sequence[dict] = (),
                 report: Optional[str] = None):
        super().__init__(metric=metric, mode=mode)
        self.race, self.inner, self.grid = race, inner, [dict(p) for p in grid]
        self.report = report  # where the race's state is written as it changes (the study reads it at the end)

    def _write_report(self) -> None:
        if self.report:
            write_race_report(self.report, self.race)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:  # noqa: D102 - see Searcher
        if self.inner is None:
            return True
        return self.inner.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str):  # noqa: D102 - see Searcher
        action = self.race.next_action()
        if action[0] == "propose":
            if self.inner is None:
                cand = self.race.add_candidate(self.grid[len(self.race.candidates)])
            else:
                config = self.inner.suggest(trial_id)
                if config is None or config == Searcher.FINISHED:
                    return config
                cand = self.race.add_candidate(config, proposal=trial_id)
            action = ("seed", cand, self.race.next_seed(cand))
        if action[0] == "wait":
            return None
        if action[0] == "finished":
            self._write_report()
            return Searcher.FINISHED
        _, cand, seed = action
        self.race.start(trial_id, cand, seed)
        return {**self.race.candidates[cand]["config"], "seed": seed}

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:  # noqa: D102
        value = None if error or not result else result.get(self.metric)
        cand = self.race.complete(trial_id, value)
        self._write_report()
        if cand is None or self.inner is None:
            return
        candidate = self.race.candidates[cand]
        if candidate["proposal"] is None or candidate.get("told") or not self.race.told(cand):
            return  # Optuna is told once, when the proposal's first min_seeds values are in
        candidate["told"] = True
        values = list(self.race.values(cand).values())[: self.race.plan.min_seeds]
        if values:
            self.inner.on_trial_complete(candidate["proposal"], result={self.metric: float(np.mean(values))})
        else:
            self.inner.on_trial_complete(candidate["proposal"], result=None, error=True)
        self._write_report()

    def save(self, checkpoint_path: str) -> None:  # noqa: D102 - see Searcher
        state = {"race": self.race.state(), "inner": _saved_blob(self.inner), "grid": self.grid}
        with open(checkpoint_path, "w", encoding="utf-8") as f:
            json.dump(state, f)  # plain data: a resumed study never unpickles a file of ours

    def restore(self, checkpoint_path: str) -> None:  # noqa: D102 - see Searcher
        with open(checkpoint_path, encoding="utf-8") as f:
            state = json.load(f)
        _restore_blob(self.inner, state.get("inner"))
        self.race = SeedRace.from_state(state["race"])
        self.grid = state.get("grid", self.grid)


def _saved_blob(searcher: Any) -> Optional[str]:
    """``searcher``'s own saved file (``Searcher.save``), as base64 text to embed in a JSON state."""
    if searcher is None:
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "inner.pkl")
        searcher.save(path)
        with open(path, "rb") as f:
            return base64.b64encode(f.read()).decode("ascii")


def _restore_blob(searcher: Any, blob: Optional[str]) -> None:
    """Restore ``searcher`` from a :func:`_saved_blob` text (its own format, as Tune restores it)."""
    if searcher is None or blob is None:
        return
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "inner.pkl")
        with open(path, "wb") as f:
            f.write(base64.b64decode(blob))
        searcher.restore(path)


class TrialStarts(Callback):
    """A Tune callback that keeps each started trial's config, by trial id (for :class:`ResumeSafeOptuna`)."""

    def __init__(self):
        self.configs: dict[str, dict] = {}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:  # noqa: D102
        self.configs[trial.trial_id] = dict(trial.config)


class ResumeSafeOptuna(Searcher):
    """``OptunaSearch`` that survives a study killed while Tune was saving its state.

    Tune saves a study's trial list and its searcher as separate files and copies them to the
    storage path one by one, so a study killed at the wrong moment (SIGKILL, a lost node) can
    resume with a trial the restored searcher never suggested. ``OptunaSearch`` raises a
    ``KeyError`` for such a trial's results, and that error ends the whole study. Here, the
    results of a trial the searcher does not know are told to Optuna as an evaluated point,
    with the config :class:`TrialStarts` saw it start with; the rest goes to ``inner`` as is.
    """

    def __init__(self, inner: Any):
        super().__init__(metric=inner.metric, mode=inner.mode)
        self.inner, self.starts = inner, TrialStarts()
        self.known: set[str] = set()  # trial ids ``inner`` suggested (saved with it, so they agree)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:  # noqa: D102 - see Searcher
        return self.inner.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str):  # noqa: D102 - see Searcher
        config = self.inner.suggest(trial_id)
        if isinstance(config, dict):
            self.known.add(trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:  # noqa: D102 - see Searcher
        if trial_id in self.known:
            self.inner.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:  # noqa: D102
        if trial_id in self.known:
            self.inner.on_trial_complete(trial_id, result=result, error=error)
            return
        config = self.starts.configs.get(trial_id)
        if config is None:
            console.say(f"note: trial {trial_id} (started before a resume) is not in Optuna's history: "
                        "its config was not seen")
            return
        metric = self.inner.metric
        value = None if error or not result else (
            [result.get(m) for m in metric] if isinstance(metric, list) else result.get(metric))
        try:
            self.inner.add_evaluated_point(config, value, error=error or value is None)
        except Exception as err:  # noqa: BLE001 - the study goes on; Optuna's history lacks one trial
            console.say(f"note: trial {trial_id} (started before a resume) is not in Optuna's history: {one_line(err)}")

    def save(self, checkpoint_path: str) -> None:  # noqa: D102 - see Searcher
        with open(checkpoint_path, "w", encoding="utf-8") as f:
            json.dump({"inner": _saved_blob(self.inner), "known": sorted(self.known)}, f)

    def restore(self, checkpoint_path: str) -> None:  # noqa: D102 - see Searcher
        with open(checkpoint_path, encoding="utf-8") as f:
            state = json.load(f)
        _restore_blob(self.inner, state["inner"])
        self.known = set(state["known"])


class LimiterSync(Callback):
    """A Tune callback that keeps the ``ConcurrencyLimiter``'s live trials those Tune still runs.

    The limiter's state is a file of its own, copied to the storage path apart from Tune's trial
    list (see :class:`ResumeSafeOptuna`). A study killed during that copy can resume with the
    limiter counting a trial Tune does not have, or one Tune already finished: with one trial
    at a time the limiter then suggests nothing, ever, and the study hangs. At the start of each
    Tune step, a live trial that Tune finished is told to the searcher with its last result
    (as Tune would have), and one that Tune does not know is dropped.
    """

    def __init__(self, limiter: Any):
        self.limiter = limiter

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:  # noqa: D102 - see Callback
        stale = set(self.limiter.live_trials) - {t.trial_id for t in trials if not t.is_finished()}
        if not stale:
            return
        finished = {t.trial_id: t for t in trials if t.trial_id in stale}
        for trial_id in sorted(stale):
            trial = finished.get(trial_id)
            if trial is not None:  # finished before the saved limiter heard of it
                _tell_end(self.limiter, trial)
            if trial_id in self.limiter.live_trials:  # unknown to Tune (or not removed above)
                self.limiter.live_trials.discard(trial_id)
                self.limiter.num_unfinished_live_trials = max(0, self.limiter.num_unfinished_live_trials - 1)
            console.say(f"note: the searcher's state counted trial {trial_id} as running; "
                        f"{'told it the end Tune recorded' if trial is not None else 'Tune has no such trial'}")


class RaceSync(Callback):
    """A Tune callback that keeps a :class:`SeedSearcher`'s race and Tune's trial list in agreement.

    The searcher's state and Tune's trial list are files saved apart (see :class:`ResumeSafeOptuna`),
    so a resumed study can find them out of step either way:

    * a trial the race counts as running that Tune does not have would make the race wait for it
      forever at the end of its budget (the study would hang): it is dropped, and its seed is free
      again; one that Tune finished is told to the searcher with the end Tune recorded;
    * a trial Tune has that the race never started (it runs again, or finished before the save)
      is taken into the race with its candidate and seed (:meth:`study.race.SeedRace.adopt`), so its
      seed is neither trained twice nor left out of the allocation.

    Each case prints a ``note:`` line. Runs after :class:`LimiterSync` (which may already have told
    the searcher a finished trial's end).
    """

    def __init__(self, searcher: SeedSearcher):
        self.searcher = searcher
        self.refused: set[str] = set()  # trials the race could not take in (said once)

    def _adopt(self, trial: Any) -> bool:
        race = self.searcher.race
        if trial.trial_id in race.trials:
            return True
        if trial.trial_id in self.refused:
            return False
        cand = race.adopt(trial.trial_id, dict(trial.config))
        if cand is None:
            self.refused.add(trial.trial_id)
        what = (f"took it in (candidate {cand + 1}, seed {trial.config.get('seed')})" if cand is not None
                else "its candidate or seed is not the race's to give: the answer counts its run, the race does not")
        console.say(f"note: trial {trial.trial_id} is not in the seed race's saved state; {what}")
        return cand is not None

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:  # noqa: D102
        self._adopt(trial)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:  # noqa: D102 - see Callback
        race, by_id = self.searcher.race, {t.trial_id: t for t in trials}
        for trial_id, entry in list(race.trials.items()):
            if entry["status"] != PENDING:
                continue
            trial = by_id.get(trial_id)
            if trial is None:
                race.forget(trial_id)
                console.say(f"note: the seed race counted trial {trial_id} as running; Tune has no such trial, "
                            "so its seed is free again")
            elif trial.is_finished():
                _tell_end(self.searcher, trial)
                console.say(f"note: the seed race counted trial {trial_id} as running; told it the end Tune recorded")
        for trial in trials:
            if trial.is_finished() and trial.trial_id not in race.trials and self._adopt(trial):
                _tell_end(self.searcher, trial)


def _tell_end(searcher: Any, trial: Any) -> None:
    """Tell ``searcher`` the end Tune recorded for finished ``trial``, as Tune itself would have."""
    searcher.on_trial_complete(trial.trial_id, result=trial.last_result or None, error=trial.status == "ERROR")


def searcher_callbacks(searcher: Any) -> list:
    """The Tune callbacks a searcher needs: :class:`LimiterSync` for the ``ConcurrencyLimiter``,
    :class:`RaceSync` for a :class:`SeedSearcher`, and :class:`ResumeSafeOptuna`'s :class:`TrialStarts`.

    Tune pickles the searcher and the callbacks together (``tuner.pkl``), so a restored study's
    searcher and callbacks still refer to one another."""
    if searcher is None:
        return []
    inner = getattr(searcher, "searcher", None)  # under the ConcurrencyLimiter
    if isinstance(inner, ResumeSafeOptuna):
        return [LimiterSync(searcher), inner.starts]
    if isinstance(inner, SeedSearcher):
        return [LimiterSync(searcher), RaceSync(inner)]
    return [LimiterSync(searcher)]
