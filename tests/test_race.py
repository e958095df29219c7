"""study.race: seeds raced to where the answer is uncertain; its Tune searcher; and the calibration of
the whole procedure as it runs (allocation and stopping included) in simulated studies."""

import heapq

import numpy as np
import pytest

from study.answer import TrialQueries
from study.answer_metrics import OBJECTIVE, metric_values
from study.outputs import study_answer
from study.race import SeedPlan, SeedRace
from study.searchers import SeedSearcher


def race(n_candidates=3, min_seeds=2, max_seeds=8, target=0.01, **plan):
    return SeedRace(SeedPlan(seeds=tuple(range(max_seeds)), min_seeds=min_seeds, target_halfwidth=target, **plan),
                    n_candidates=n_candidates, mode="max")


def add_ratios(r, ratios=(0.0, 1.0, 0.5)):
    for ratio in ratios:
        r.add_candidate({"ratio": ratio})


def run(r, value_of, slots=1, limit=500):
    """Drive ``r`` with ``slots`` trials at a time; ``value_of(cand, seed)`` is a trial's objective."""
    running, n = [], 0
    while n < limit:
        action = r.next_action()
        if action[0] == "seed" and len(running) < slots:
            _, cand, seed = action
            r.start(f"t{n}", cand, seed)
            running.append((f"t{n}", cand, seed))
            n += 1
            continue
        if action[0] == "finished":
            return action[1]
        assert action[0] in ("seed", "wait") and running, action
        trial, cand, seed = running.pop(0)
        r.complete(trial, value_of(cand, seed))
    raise AssertionError("the race did not stop")


def test_every_candidate_gets_min_seeds_first_in_order_then_a_new_proposal():
    r = race()
    assert r.next_action() == ("propose",)
    r.add_candidate({"ratio": 0.0})
    assert r.next_action() == ("seed", 0, 0)
    r.start("a", 0, 0)
    assert r.next_action() == ("seed", 0, 1)
    r.start("b", 0, 1)
    assert r.next_action() == ("propose",)  # the first candidate has its min seeds scheduled


def test_extra_seeds_go_to_the_imprecise_comparison():
    """Ratio 0.6 is noisy across seeds, the others are steady and 0.3 is the best: the extra seeds go
    to the one imprecise comparison (0.3 vs 0.6, both sides, since it is paired), not to the ends,
    and the budget ends the race."""
    rng = np.random.default_rng(0)
    noise = {0: 0.001, 1: 0.001, 2: 0.001, 3: 0.02}
    level = {0: 0.15, 1: 0.14, 2: 0.17, 3: 0.15}
    values = {(c, s): level[c] + rng.normal(0, noise[c]) for c in range(4) for s in range(40)}
    r = race(n_candidates=4, max_seeds=40, target=0.01, max_trials=30)
    add_ratios(r, (0.0, 1.0, 0.3, 0.6))
    reason = run(r, lambda c, s: values[c, s])
    assert "budget of 30 trials" in reason
    counts = [r.seeds_done(i) for i in range(4)]
    assert counts[3] > counts[0] and counts[3] > counts[1] and counts[2] == counts[3], counts
    assert max(counts[0], counts[1]) <= 3  # the ends are precise after their first seeds


def test_equal_seeds_run_every_seed_and_no_more():
    r = SeedRace(SeedPlan(seeds=(5, 6, 7), min_seeds=3), n_candidates=2)
    add_ratios(r, (0.0, 1.0))
    reason = run(r, lambda c, s: 0.1 * c + 0.001 * s, slots=2)
    assert "every candidate has its 3 seeds" in reason
    assert sorted((t["cand"], t["seed"]) for t in r.trials.values()) == [(0, 5), (0, 6), (0, 7), (1, 5), (1, 6), (1, 7)]


def test_the_trial_budget_stops_the_race():
    r = race(max_seeds=20, target=1e-9, max_trials=9)
    add_ratios(r)
    rng = np.random.default_rng(3)
    values = rng.normal(0.1, 0.01, (3, 20))
    reason = run(r, lambda c, s: values[c, s])
    assert "budget of 9 trials" in reason and len(r.trials) == 9


def test_the_minutes_budget_starts_no_trial_that_would_end_after_it():
    r = race(max_seeds=20, target=1e-9, max_minutes=1.0)
    add_ratios(r)
    values = np.random.default_rng(4).normal(0.1, 0.01, 6)
    for i in range(6):  # six trials of 15 s each
        cand, seed = i % 3, i // 3
        r.start(f"t{i}", cand, seed)
        r.trials[f"t{i}"]["started"] = 15.0 * i
        r.complete(f"t{i}", values[i])
        r.trials[f"t{i}"]["ended"] = 15.0 * (i + 1)
    r.spent_s = 50.0 - (r.elapsed_s() - r.spent_s)  # 50 s so far: a 15 s trial would end at 65 s > 60 s
    action = r.next_action()
    assert action[0] == "finished" and "1 minutes" in action[1]


def test_the_minutes_budget_judges_the_next_trial_by_the_recent_ones():
    """A study's first trials also build the data cache: two 200 s trials, then two of 150 s, with
    361 s spent of 9 minutes. By all four (median 175 s) a fifth would end after the budget; by the
    recent half (150 s) it ends within it, so the third candidate (the interior ratio) is tried."""
    r = race(max_seeds=20, target=1e-9, max_minutes=9.0)
    add_ratios(r)
    spans = [(0.0, 200.0), (1.0, 202.0), (205.0, 355.0), (207.0, 357.0)]
    for i, (start, end) in enumerate(spans):
        r.start(f"t{i}", i // 2, i % 2)
        r.complete(f"t{i}", 0.1 + 0.01 * i)
        r.trials[f"t{i}"].update(started=start, ended=end)
    assert r.expected_trial_s() == 150.0
    r.spent_s = 361.0 - (r.elapsed_s() - r.spent_s)
    assert r.next_action() == ("seed", 2, 0)
    r.spent_s = 391.0 - (r.elapsed_s() - r.spent_s)  # 391 + 150 > 540: none would end in time
    assert r.next_action()[0] == "finished"


def test_failed_seeds_are_replaced_by_the_next_seed():
    r = race(n_candidates=1, min_seeds=2)
    r.add_candidate({"ratio": 0.0})
    r.start("a", 0, 0)
    r.complete("a", float("nan"))
    assert r.next_action() == ("seed", 0, 1)
    r.start("b", 0, 1)
    assert r.next_action() == ("seed", 0, 2)  # seed 0 failed: min seeds still needs two values


def test_a_candidate_that_keeps_failing_stops_taking_the_budget():
    r = race(max_seeds=10, max_trials=16)
    add_ratios(r)
    rng = np.random.default_rng(5)
    reason = run(r, lambda c, s: float("nan") if c == 2 else rng.normal(0.15, 0.01))
    failing = [t for t in r.trials.values() if t["cand"] == 2]
    assert len(failing) == 2  # min_seeds failures, then no more
    assert abs(r.seeds_done(0) - r.seeds_done(1)) <= 1  # the budget went to the comparison that can be paired
    assert "budget of 16 trials" in reason


def test_optuna_is_told_once_even_when_a_first_seed_fails():
    searcher = SeedSearcher(race(n_candidates=2, target=0.02, max_seeds=6), "m", "max", inner=_ToldRecorder())
    searcher.set_search_properties("m", "max", {})
    a, b = searcher.suggest("a"), searcher.suggest("b")  # proposal p0, seeds 0 and 1
    searcher.on_trial_complete("a", None, error=True)
    c = searcher.suggest("c")  # seed 0 failed: seed 2 replaces it
    assert (a["seed"], b["seed"], c["seed"]) == (0, 1, 2)
    searcher.on_trial_complete("b", {"m": 0.2})
    assert searcher.inner.told == []
    searcher.on_trial_complete("c", {"m": 0.4})
    assert searcher.inner.told == [("a", pytest.approx(0.3))]


class _ToldRecorder:
    """An inner searcher that proposes ratio 0.1, 0.2, ... and records what it is told."""

    def __init__(self):
        self.told, self.proposed = [], 0

    def set_search_properties(self, *args, **kwargs):
        return True

    def suggest(self, trial_id):
        self.proposed += 1
        return {"ratio": self.proposed / 10}

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.told.append((trial_id, None if error else result["m"]))


def test_a_restored_race_continues_exactly_where_it_stopped():
    rng = np.random.default_rng(1)
    values = {(c, s): rng.normal(0.15, 0.01 * (c + 1)) for c in range(3) for s in range(12)}
    whole = race(max_seeds=12, target=0.005)
    add_ratios(whole)
    run(whole, lambda c, s: values[c, s])
    part = race(max_seeds=12, target=0.005)
    add_ratios(part)
    for i in range(7):  # stop after seven trials, one still running
        _, cand, seed = part.next_action()
        part.start(f"t{i}", cand, seed)
        if i < 6:
            part.complete(f"t{i}", values[cand, seed])
    import json

    resumed = SeedRace.from_state(json.loads(json.dumps(part.state())))
    cand, seed = resumed.trials["t6"]["cand"], resumed.trials["t6"]["seed"]
    resumed.complete("t6", values[cand, seed])
    run(resumed, lambda c, s: values[c, s])
    assert sorted((t["cand"], t["seed"]) for t in resumed.trials.values()) == \
        sorted((t["cand"], t["seed"]) for t in whole.trials.values())
    assert resumed.stop_reason == whole.stop_reason


# ---------------------------------------------------------------------------
# The Tune searcher
# ---------------------------------------------------------------------------
def test_grid_candidates_race_through_the_searcher_and_resume(tmp_path):
    from ray.tune.search import Searcher

    grid = [{"ratio": 0.0}, {"ratio": 0.5}, {"ratio": 1.0}]
    values = {0.0: 0.15, 0.5: 0.16, 1.0: 0.10}
    searcher = SeedSearcher(race(target=0.02, max_seeds=6), "m", "max", grid=grid, report=str(tmp_path / "race.json"))
    configs = [searcher.suggest(f"t{i}") for i in range(6)]
    assert [(c["ratio"], c["seed"]) for c in configs] == [(0.0, 0), (0.0, 1), (0.5, 0), (0.5, 1), (1.0, 0), (1.0, 1)]
    for i, c in enumerate(configs[:5]):
        searcher.on_trial_complete(f"t{i}", {"m": values[c["ratio"]] + 0.003 * c["seed"] * (1 + c["ratio"])})
    path = tmp_path / "searcher.json"
    searcher.save(str(path))
    restored = SeedSearcher(race(target=0.02, max_seeds=6), "m", "max", grid=grid)
    restored.restore(str(path))
    assert restored.race.trials["t5"]["status"] == "pending"  # the running trial is known after the restore
    restored.on_trial_complete("t5", {"m": 0.11})
    assert restored.race.values(2)[1] == 0.11
    n = 6
    while (config := restored.suggest(f"t{n}")) not in (None, Searcher.FINISHED):
        restored.on_trial_complete(f"t{n}", {"m": values[config["ratio"]] + 0.003 * config["seed"] * (1 + config["ratio"])})
        n += 1
    assert config == Searcher.FINISHED and "every candidate has its 6 seeds" in restored.race.stop_reason
    assert n == 18  # 12 trials after the restore, not the 18 of a fresh race
    pairs = [(restored.race.candidates[t["cand"]]["ratio"], t["seed"]) for t in restored.race.trials.values()]
    assert len(pairs) == len(set(pairs)) == 18
    assert (tmp_path / "race.json").exists()  # written by the first searcher as it ran


# ---------------------------------------------------------------------------
# Calibration of the procedure as it runs
# ---------------------------------------------------------------------------
RATIOS = (0.0, 0.5, 1.0)
N_IMAGES = 60
LANGS = ("en", "zh")


class SimulatedTruth:
    """Trials whose per-query AP = truth(ratio) + seed effect (shared by every ratio of a seed)
    + the ratio's own seed noise (its sd differs by ratio) + image effect (one test set for all)
    + image x ratio effect + query noise. ``truth`` maps ratio -> the population objective."""

    def __init__(self, rng, truth, seed_sd=0.01, own_sd=(0.004, 0.01, 0.02)):
        self.rng, self.truth, self.own_sd = rng, truth, dict(zip(RATIOS, own_sd))
        self.image = rng.normal(0.0, 0.1, (len(LANGS) + 1, N_IMAGES))
        self.inter = {r: rng.normal(0.0, 0.01, (len(LANGS) + 1, N_IMAGES)) for r in RATIOS}
        self.seed_effect = rng.normal(0.0, seed_sd, 1000)
        self.cache = {}

    def trial(self, ratio, seed):
        if (ratio, seed) not in self.cache:
            shift = self.truth[ratio] + self.seed_effect[seed] + self.rng.normal(0.0, self.own_sd[ratio])
            image, arrays = np.arange(N_IMAGES, dtype=np.int32), {}
            keys = ["multilingual.i2t", *(f"multilingual.t2t.{lang}" for lang in LANGS)]
            for j, key in enumerate(keys):
                ap = shift + self.image[j] + self.inter[ratio][j] + self.rng.normal(0.0, 0.03, N_IMAGES)
                arrays[key], arrays[key + "@image"] = ap.astype(np.float64), image
            self.cache[ratio, seed] = TrialQueries(f"r{ratio}-s{seed}", ratio, seed, arrays)
        return self.cache[ratio, seed]


class PeekingRace(SeedRace):
    """A negative control: a race that also stops as soon as the ends' training-noise interval
    excludes 0, i.e. on a difference that looks significant (what study.race does not do)."""

    def _race(self):
        ends = [c for c in self.comparisons() if {self.candidates[c.a]["ratio"], self.candidates[c.b]["ratio"]} == {0.0, 1.0}]
        if ends and abs(ends[0].diff) > ends[0].halfwidth:
            return self._finish("the ends look different")
        return super()._race()


def simulated_race(rng, truth, slots=2, kind=SeedRace):
    """One study: the race decides (asynchronously, ``slots`` at a time, trials of random duration),
    then the answer is computed from the trials it ran. Every ratio gets 3 seeds, then the race
    spends 24 trials in all, the imprecise comparisons first (target half-width 0.015)."""
    sim = SimulatedTruth(rng, truth)
    plan = SeedPlan(seeds=tuple(range(12)), min_seeds=3, target_halfwidth=0.015, max_trials=24)
    r = kind(plan, n_candidates=3, mode="max")
    add_ratios(r, RATIOS)
    objective = {}
    running, clock, n = [], 0.0, 0
    while True:
        action = r.next_action()
        if action[0] == "seed" and len(running) < slots:
            _, cand, seed = action
            ratio = r.candidates[cand]["ratio"]
            trial = sim.trial(ratio, seed)
            objective[f"t{n}"] = trial
            r.start(f"t{n}", cand, seed)
            heapq.heappush(running, (clock + rng.uniform(50, 70), f"t{n}"))
            n += 1
            continue
        if action[0] == "finished":
            break
        clock, tid = heapq.heappop(running)
        r.complete(tid, metric_values(objective[tid].arrays)[OBJECTIVE])
    return study_answer(list(objective.values()), n_resamples=200, seed=int(rng.integers(1 << 31))), r


def _ends_claimed(found) -> bool:
    return "differ beyond noise" in found.sentence and "do not differ" not in found.sentence


FLAT = {0.0: 0.2, 0.5: 0.2, 1.0: 0.2}


@pytest.mark.slow
def test_the_race_keeps_its_confidence_under_a_flat_truth():
    """200 studies with every ratio equal: the ends 'differ beyond noise' in at most 5% (the nominal
    rate of a 95% interval; a race that stopped on significance would inflate it, see the next test)."""
    rng = np.random.default_rng(7)
    claims, excluded, seeds = [], [], []
    for _ in range(200):
        found, r = simulated_race(rng, FLAT)
        claims.append(_ends_claimed(found))
        best = next(b for b in found.best if (b["setting"], b["family"]) == OBJECTIVE)
        excluded.append(len(best["plausible"]) < len(RATIOS))
        seeds.append([r.seeds_done(i) for i in range(len(RATIOS))])
    rate, seeds = float(np.mean(claims)), np.array(seeds)
    print(f"flat truth: ends claimed in {rate:.3f}; a ratio left out of the plausible set in {np.mean(excluded):.3f}; "
          f"mean seeds per ratio {', '.join(f'{r:g}: {m:.1f}' for r, m in zip(RATIOS, seeds.mean(axis=0)))}")
    assert rate <= 0.05
    # the race did move seeds: the noisy ratio 1 (and its partner in the ends' comparison) got more
    assert seeds[:, 2].mean() > seeds[:, 1].mean() + 1 and (seeds != 8).any(axis=1).mean() > 0.5


@pytest.mark.slow
def test_a_race_that_stops_on_significance_would_fail_the_flat_truth_check():
    """The negative control of the check above: peeking at the ends' difference after every trial
    and stopping when it looks significant gives far more than 5% false claims."""
    rng = np.random.default_rng(7)
    rate = float(np.mean([_ends_claimed(simulated_race(rng, FLAT, kind=PeekingRace)[0]) for _ in range(200)]))
    print(f"flat truth, peeking race: ends claimed in {rate:.3f}")
    assert rate > 0.05


@pytest.mark.slow
def test_the_race_covers_the_true_optimum_and_finds_a_real_difference():
    """200 studies with ratio 0.5 best by 0.02 over ratio 0 and 0.04 over ratio 1: the plausible set
    holds ratio 0.5 in >= 90%, and the ends' difference (-0.02) is found beyond noise in most."""
    rng = np.random.default_rng(11)
    covered, found_ends = [], []
    for _ in range(200):
        found, _ = simulated_race(rng, {0.0: 0.20, 0.5: 0.22, 1.0: 0.18})  # ratio 0.5 best
        best = next(b for b in found.best if (b["setting"], b["family"]) == OBJECTIVE)
        covered.append(0.5 in best["plausible"])
        found_ends.append(_ends_claimed(found))
    print(f"coverage of the true optimum {np.mean(covered):.3f}; ends' -0.02 found in {np.mean(found_ends):.3f}")
    assert np.mean(covered) >= 0.90
    assert np.mean(found_ends) >= 0.5
