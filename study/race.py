"""Seeds spent where the answer is uncertain: the allocation rule of a study's trials over seeds.

A study compares *candidates* (a proposed or grid point: a ratio, perhaps with other searched
values) on one objective. Each candidate is trained with seeds taken in one fixed order
(``seeds[0]``, ``seeds[1]``, ...), so two candidates always share their first seeds: a seed fixes
the initial weights, the image order and the per-step draws of the composition rule
(:mod:`trainables.composition`), and only what the ratio decides differs. Differences between
candidates are therefore judged *paired*, seed by seed.

:class:`SeedRace` decides, each time a trial slot is free, what to train next:

1. **Every candidate first gets ``min_seeds`` seeds**, in candidate order; a new proposal (Optuna)
   is asked for only when every earlier candidate has its ``min_seeds`` scheduled. So all
   ``n_candidates`` proposals are made before any extra seed is spent: new ratios come first,
   then the remaining budget races among them.
2. **Then one seed at a time goes to the least precise comparison.** The comparisons are the
   ends (ratio 1 vs ratio 0, when both are candidates) and every candidate against the current
   best (the best mean on the objective). A comparison's precision is the half-width of its
   paired interval from the training noise, ``t(1 - alpha/2, n - 1) * sd(d) / sqrt(n)`` over the
   ``n`` seeds both candidates have finished, projected to the seeds already scheduled. The
   widest comparison still above ``target_halfwidth`` gets the next seed (once every one is
   within it, the widest), on its side with fewer seeds (on a tie, the side with the larger seed
   spread). While trials run, a pair whose spread is not known yet gets no seed. A candidate
   that has failed ``min_seeds`` times gets no more.
3. **It stops** when the budget is spent: ``max_trials`` trials, or ``max_minutes`` of
   wall-clock (no trial is started that would end after it, by the median duration of the most
   recent half of the finished trials: the first ones also build the data cache), or
   every candidate has ``len(seeds)`` seeds.

**Error control.** The race never stops because a difference looks significant, nor because
the intervals look narrow enough: both inflate false discoveries. Stopping on significance is
the classic case (a peeking race gave 17% false "differ beyond noise" claims under a flat
truth in ``tests/test_race.py``'s simulation, against a nominal 5%). Stopping on precision is
subtler: the stop happens when the sample sd of the differences is small by chance, and the
final interval is built from that same sd. Measured in a one-comparison simulation (3 to 12
seeds, normal noise): 7-10% false claims at a nominal 5%, and still 6-8% when the stop used
the sd's 90% or 99% upper confidence bound. So the race only *allocates* by precision (which
kept the rate at the fixed design's: 4% in 300 simulated studies) and stops on the budget;
``target_halfwidth`` says where the seeds go first, and the answer reports, per comparison,
how many seeds that target would need. ``tests/test_race.py`` checks the procedure as it runs
(coverage of the true optimum; "differ beyond noise" under a flat truth; the peeking race as
the negative control).

The state is plain data (:meth:`SeedRace.state` / :meth:`SeedRace.from_state`), so a resumed
study continues its allocation where it stopped. :mod:`study.tuning` runs it in Ray Tune.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from scipy import stats

from trainables.atomic import atomic_file

PENDING, DONE, FAILED = "pending", "done", "failed"


@dataclass(frozen=True)
class SeedPlan:
    """How seeds are spent (validated by :mod:`study.spaces`).

    seeds: the seed values, in the order every candidate takes them.
    min_seeds: seeds every candidate gets before any race (``len(seeds)``: equal allocation).
    target_halfwidth: the training-noise half-width every comparison should reach: comparisons
        above it get seeds first (None: the widest first). It is a goal, not a stop (module docstring).
    max_trials: the most trials (None: ``len(seeds)`` per candidate).
    max_minutes: the wall-clock after which no trial starts that would end later (None: no limit).
    confidence: the level of the comparisons' intervals.
    """

    seeds: tuple
    min_seeds: int
    target_halfwidth: Optional[float] = None
    max_trials: Optional[int] = None
    max_minutes: Optional[float] = None
    confidence: float = 0.95

    @property
    def adaptive(self) -> bool:
        """Whether seeds are raced (more seeds than every candidate gets)."""
        return self.min_seeds < len(self.seeds)


@dataclass(frozen=True)
class Comparison:
    """A paired comparison ``a - b`` on the objective, over the ``n`` seeds both have finished."""

    a: int
    b: int
    n: int
    diff: float
    halfwidth: float  # training noise only, at the plan's confidence (inf below 2 shared seeds)
    sd: float


@dataclass
class SeedRace:
    """The allocation state of one study (module docstring). ``mode``: ``max`` or ``min``."""

    plan: SeedPlan
    n_candidates: int
    mode: str = "max"
    candidates: list = field(default_factory=list)  # [{"config": dict, "proposal": str | None, "ratio": float | None}]
    trials: dict = field(default_factory=dict)  # trial id -> {"cand", "seed", "status", "value", "started", "ended"}
    spent_s: float = 0.0  # wall-clock of earlier sessions (a resumed study counts on from here)
    stop_reason: Optional[str] = None
    _t0: float = field(default_factory=time.monotonic, repr=False)

    # --- what to run next --------------------------------------------------
    def next_action(self) -> tuple:
        """``("seed", cand, seed)``, ``("propose",)``, ``("wait",)`` or ``("finished", reason)``."""
        if self.stop_reason is not None:
            return ("finished", self.stop_reason)
        for i in range(len(self.candidates)):  # 1. every candidate's first min_seeds
            if self._planned(i) < self.plan.min_seeds and self.next_seed(i) is not None:
                return self._budgeted(("seed", i, self.next_seed(i)))
        if len(self.candidates) < self.n_candidates:
            return self._budgeted(("propose",))
        return self._race()

    def _budgeted(self, action: tuple) -> tuple:
        if self.plan.max_trials is not None and len(self.trials) >= self.plan.max_trials:
            return self._finish(f"the budget of {self.plan.max_trials} trials is spent")
        if self.plan.max_minutes is not None and self.trials:
            budget = 60.0 * self.plan.max_minutes
            if self.elapsed_s() + self.expected_trial_s() > budget:
                return self._finish(f"the budget of {self.plan.max_minutes:g} minutes is spent "
                                    "(no further trial would end within it)")
        return action

    def _race(self) -> tuple:
        pending = any(t["status"] == PENDING for t in self.trials.values())
        comparisons = self.comparisons(projected=True)
        target = self.plan.target_halfwidth
        # the comparisons still above the target come first; once none is, the budget still goes to
        # the widest (a stop on precision would bias the final intervals: module docstring)
        ranked = sorted(comparisons, key=lambda c: (target is not None and c.halfwidth <= target, -c.halfwidth))
        for comp in ranked:
            if math.isinf(comp.halfwidth) and pending:
                continue  # no spread known yet for this pair: its running seeds will tell
            side = self._side(comp)
            if side is None:
                continue
            other = comp.b if side == comp.a else comp.a
            if self.next_seed(other) is None and self.next_seed(side) not in self._live_seeds(other):
                continue  # the other side can take no more seeds: this one could never be paired
            return self._budgeted(("seed", side, self.next_seed(side)))
        if pending:  # the scheduled seeds may still change the picture
            return ("wait",)
        if all(self.next_seed(i) is None and len(self._live_seeds(i)) == len(self.plan.seeds)
               for i in range(len(self.candidates))):
            return self._finish(f"every candidate has its {len(self.plan.seeds)} seeds")
        return self._finish("no comparison can take another paired seed")

    def _side(self, comp: Comparison) -> Optional[int]:
        """The candidate of ``comp`` that takes the next seed, or None when both have every seed."""
        sides = [i for i in (comp.a, comp.b) if self.next_seed(i) is not None]
        if not sides:
            return None
        return min(sides, key=lambda i: (self._planned(i), -self._spread(i)))

    def _finish(self, reason: str) -> tuple:
        if any(t["status"] == PENDING for t in self.trials.values()):
            return ("wait",)  # stop only once the running trials are in
        self.stop_reason = reason
        return ("finished", reason)

    # --- bookkeeping ---------------------------------------------------------
    def add_candidate(self, config: dict, proposal: Optional[str] = None) -> int:
        """Register a new candidate (a proposal's or a grid point's searched values); returns its index."""
        ratio = config.get("ratio")
        self.candidates.append({"config": dict(config), "proposal": proposal,
                                "ratio": float(ratio) if isinstance(ratio, (int, float)) else None})
        return len(self.candidates) - 1

    def start(self, trial_id: str, cand: int, seed: int) -> None:
        """Record that ``trial_id`` trains candidate ``cand`` with ``seed``."""
        self.trials[trial_id] = {"cand": cand, "seed": seed, "status": PENDING, "value": None,
                                 "started": self.elapsed_s(), "ended": None}

    def complete(self, trial_id: str, value: Optional[float]) -> Optional[int]:
        """Record a finished trial (``value`` None or NaN: failed); returns its candidate, or None if unknown."""
        trial = self.trials.get(trial_id)
        if trial is None:
            return None
        ok = value is not None and math.isfinite(float(value))
        trial.update(status=DONE if ok else FAILED, value=float(value) if ok else None, ended=self.elapsed_s())
        return trial["cand"]

    def adopt(self, trial_id: str, config: dict) -> Optional[int]:
        """Take in a trial Tune runs that this race never started (a study resumed from a searcher
        state older than Tune's trial list): it trains the candidate whose searched values ``config``
        holds, with ``config["seed"]``. Returns the candidate, or None when no candidate matches or that
        seed is already another trial's (the answer still reads the trial's run; the race does not count it)."""
        seed = config.get("seed")
        cand = next((i for i, c in enumerate(self.candidates)
                     if all(k in config and config[k] == v for k, v in c["config"].items())), None)
        if cand is None or seed not in self.plan.seeds or seed in self._live_seeds(cand):
            return None
        self.start(trial_id, cand, seed)
        return cand

    def forget(self, trial_id: str) -> None:
        """Drop a pending trial that Tune does not have (a searcher state newer than Tune's trial list):
        its seed is free again, and the race no longer waits for it."""
        if self.trials.get(trial_id, {}).get("status") == PENDING:
            del self.trials[trial_id]

    def values(self, cand: int) -> dict:
        """seed -> objective value of ``cand``'s finished trials."""
        return {t["seed"]: t["value"] for t in self.trials.values() if t["cand"] == cand and t["status"] == DONE}

    def seeds_done(self, cand: int) -> int:
        """How many of ``cand``'s trials finished with a value."""
        return len(self.values(cand))

    def _live_seeds(self, cand: int) -> set:
        return {t["seed"] for t in self.trials.values() if t["cand"] == cand and t["status"] != FAILED}

    def _planned(self, cand: int) -> int:
        return sum(1 for t in self.trials.values() if t["cand"] == cand and t["status"] != FAILED)

    def next_seed(self, cand: int) -> Optional[int]:
        """The candidate's next seed; None when it has every seed, or has failed ``min_seeds`` times
        (a setting that keeps failing gets no more of the budget)."""
        mine = [t for t in self.trials.values() if t["cand"] == cand]
        if sum(t["status"] == FAILED for t in mine) >= self.plan.min_seeds:
            return None
        used = {t["seed"] for t in mine}
        return next((s for s in self.plan.seeds if s not in used), None)

    def told(self, cand: int) -> bool:
        """Whether ``cand``'s first ``min_seeds`` are settled: that many finished with a value, or no
        seed left to try (what a proposal's searcher is told, once)."""
        mine = [t for t in self.trials.values() if t["cand"] == cand]
        done = sum(t["status"] == DONE for t in mine)
        pending = any(t["status"] == PENDING for t in mine)
        return done >= self.plan.min_seeds or (not pending and self.next_seed(cand) is None)

    def _spread(self, cand: int) -> float:
        values = list(self.values(cand).values())
        return float(np.std(values, ddof=1)) if len(values) >= 2 else math.inf

    def elapsed_s(self) -> float:
        """Wall-clock seconds of the study so far (earlier sessions included)."""
        return self.spent_s + time.monotonic() - self._t0

    def expected_trial_s(self) -> float:
        """How long the next trial is expected to take: the median wall-clock of the most recently
        finished half of the trials (at least 2; 0 before the first). Not of all of them: a study's
        first trials also build the data cache (and wait for Ray), which later trials do not."""
        done = sorted((t for t in self.trials.values() if t["ended"] is not None), key=lambda t: t["ended"])
        spans = [t["ended"] - t["started"] for t in done[-max(2, math.ceil(len(done) / 2)):]]
        return float(np.median(spans)) if spans else 0.0

    # --- the comparisons -----------------------------------------------------
    def best(self) -> Optional[int]:
        """The candidate with the best mean objective over its finished seeds (None before any)."""
        means = {i: float(np.mean(list(v.values()))) for i in range(len(self.candidates)) if (v := self.values(i))}
        if not means:
            return None
        return (max if self.mode == "max" else min)(means, key=means.get)

    def comparisons(self, projected: bool = False) -> list[Comparison]:
        """The ends (ratio 1 - ratio 0) and every candidate against the best, paired over shared seeds.

        ``projected``: the half-width expected once the scheduled seeds are in (same spread, the
        planned number of shared seeds), which is what the allocation needs.
        """
        pairs = []
        ends = [next((i for i, c in enumerate(self.candidates) if c["ratio"] == r and len(c["config"]) == 1), None)
                for r in (1.0, 0.0)]
        if None not in ends:
            pairs.append(tuple(ends))
        best = self.best()
        if best is not None:
            pairs += [(best, i) for i in range(len(self.candidates)) if i != best and {best, i} != set(ends)]
        return [self._compare(a, b, projected) for a, b in pairs]

    def _compare(self, a: int, b: int, projected: bool) -> Comparison:
        va, vb = self.values(a), self.values(b)
        shared = [s for s in self.plan.seeds if s in va and s in vb]
        d = np.array([va[s] - vb[s] for s in shared])
        n = len(shared)
        if projected:  # the seeds both will have once the scheduled ones are in
            n = len(self._live_seeds(a) & self._live_seeds(b))
        if len(shared) < 2:
            return Comparison(a, b, len(shared), float(d.mean()) if len(d) else math.nan, math.inf, math.inf)
        sd = float(np.std(d, ddof=1))
        q = stats.t.ppf(0.5 + self.plan.confidence / 2, max(n, 2) - 1)
        return Comparison(a, b, len(shared), float(d.mean()), float(q * sd / math.sqrt(max(n, 2))), sd)

    # --- persistence ---------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Plain data for a resumed study (JSON-safe)."""
        return {"plan": {**self.plan.__dict__, "seeds": list(self.plan.seeds)}, "n_candidates": self.n_candidates,
                "mode": self.mode, "candidates": self.candidates, "trials": self.trials,
                "spent_s": self.elapsed_s(), "stop_reason": self.stop_reason}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "SeedRace":
        """The race saved by :meth:`state`; pending trials stay pending (a resumed study reruns them)."""
        plan = SeedPlan(**{**state["plan"], "seeds": tuple(state["plan"]["seeds"])})
        return cls(plan=plan, n_candidates=int(state["n_candidates"]), mode=state["mode"],
                   candidates=list(state["candidates"]), trials=dict(state["trials"]),
                   spent_s=float(state["spent_s"]), stop_reason=state.get("stop_reason"))

    def summary(self) -> str:
        """One line: seeds per candidate and why the race stopped."""
        parts = []
        for i, cand in enumerate(self.candidates):
            label = f"ratio {cand['ratio']:.3g}" if cand["ratio"] is not None and len(cand["config"]) == 1 else f"#{i + 1}"
            parts.append(f"{label}: {self.seeds_done(i)}")
        why = f"; stopped: {self.stop_reason}" if self.stop_reason else ""
        return f"seeds per candidate ({', '.join(parts)}){why}"


RACE_REPORT = "seed_race.json"


def write_race_report(path: str, race: SeedRace) -> None:
    """Write ``race``'s state to ``path`` (JSON, replaced atomically)."""
    with atomic_file(path) as out:
        out.write(json.dumps(race.state()).encode())


def read_race_report(path: str) -> Optional[SeedRace]:
    """The race written by :func:`write_race_report`, or None when the study has none."""
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return SeedRace.from_state(json.load(f))
