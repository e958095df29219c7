"""Seeds per candidate: the space's `search.seeds` (a list, or raced), and the searcher that runs them."""

import pytest

from study.spaces import SpaceError, parse_space
from study.race import SeedPlan, SeedRace
from study.searchers import SeedSearcher

BASE = {"fixed": {"epochs": 1}, "params": {"ratio": {"type": "uniform", "low": 0.0, "high": 1.0}}}


def space(**search):
    return parse_space({"search": {"algorithm": "optuna", "num_samples": 2, **search}, **BASE}, name="s", source="x")


def test_seeds_multiply_the_trials():
    assert space(seeds=[0, 1, 2]).num_trials() == 6
    assert space(seeds=[0, 1, 2]).num_trials(num_samples=4) == 12
    assert space().num_trials() == 2


@pytest.mark.parametrize("search, message", [
    ({"seeds": [0, 0]}, "seeds must be distinct"),
    ({"seeds": [0, -1]}, r"must be a list of integers in \[0, 2\*\*32 - 1\]"),
    ({"seeds": {"min": 3, "max": 2, "target_halfwidth": 0.01}}, "min=3 > max=2"),
    ({"seeds": {"min": 1, "max": 4, "target_halfwidth": 0.01}}, "at least 2 seeds per candidate"),
    ({"seeds": {"min": 2, "max": 4, "target_halfwidth": 0}}, "target_halfwidth=0: must be a positive number"),
    ({"seeds": {"min": 2, "max": 4, "target_halfwidth": -0.1}}, "must be a positive number"),
    ({"seeds": {"min": 2, "max": 4, "target_halfwidth": 0.01, "max_trials": 3}},
     r"max_trials=3 is below min=2 seeds x 2 candidates = 4"),
    ({"seeds": {"min": 2, "max": 4, "target_halfwidth": 0.01, "max_minutes": 0}}, "max_minutes=0"),
    ({"seeds": {"min": 2, "max": 4}}, "target_halfwidth is missing"),
    ({"seeds": {"min": 2, "max": 4, "target_halfwidth": 0.01, "budget": 3}}, "unknown"),
    ({"seeds": [True]}, r"must be a list of integers in \[0, 2\*\*32 - 1\]"),
    ({"seeds": []}, r"must be a list of integers in \[0, 2\*\*32 - 1\]"),
    ({"seeds": [0, 1], "objectives": [{"metric": "map100/multilingual", "mode": "max"},
                                      {"metric": "bias/multilingual", "mode": "min"}]}, "multi-objective"),
])
def test_bad_seeds_are_one_line(search, message):
    with pytest.raises(SpaceError, match=message):
        space(**search)


def test_seeds_and_a_fixed_seed_clash():
    data = {"search": {"algorithm": "optuna", "seeds": [0, 1]}, "fixed": {"seed": 3}, "params": BASE["params"]}
    with pytest.raises(SpaceError, match="seed is also fixed or searched"):
        parse_space(data, name="s", source="x")


def _searcher(seeds=(0, 1, 2)):
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    inner = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=2),
                         points_to_evaluate=[{"ratio": 0.0}, {"ratio": 1.0}])
    race = SeedRace(SeedPlan(seeds=tuple(seeds), min_seeds=len(seeds)), n_candidates=4, mode="max")
    searcher = SeedSearcher(race, "m", "max", inner=inner)
    searcher.set_search_properties("m", "max", {"ratio": tune.uniform(0.0, 1.0)})
    return searcher


def test_each_proposal_runs_once_per_seed_and_optuna_learns_the_mean():
    searcher = _searcher()
    configs = [searcher.suggest(f"t{i}") for i in range(6)]
    assert [c["seed"] for c in configs] == [0, 1, 2, 0, 1, 2]
    assert [c["ratio"] for c in configs[:3]] == [0.0] * 3 and [c["ratio"] for c in configs[3:]] == [1.0] * 3
    assert all("__trial_index__" not in c for c in configs)
    for i, value in enumerate([0.1, 0.2, 0.6]):
        searcher.on_trial_complete(f"t{i}", {"m": value})
    trials = searcher.inner._ot_study.trials
    assert len(trials) == 2 and trials[0].value == pytest.approx(0.3)  # the mean of the three seeds


def test_a_restored_searcher_still_groups_the_running_seeds(tmp_path):
    """The checkpoint keeps which trial trains which candidate and seed (plain JSON) with the inner
    searcher's own file, so a resumed study reports each proposal's mean once all its seeds are done."""
    searcher = _searcher()
    for i in range(3):
        searcher.suggest(f"t{i}")
    searcher.on_trial_complete("t0", {"m": 0.1})
    path = tmp_path / "searcher.pkl"
    searcher.save(str(path))
    restored = _searcher()
    restored.restore(str(path))
    restored.on_trial_complete("t1", {"m": 0.2})
    restored.on_trial_complete("t2", {"m": 0.6})
    trials = restored.inner._ot_study.trials
    assert trials[0].value == pytest.approx(0.3)
    assert restored.suggest("t3") == {"ratio": 1.0, "seed": 0}


def _optuna(seed=0):
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from study.searchers import ResumeSafeOptuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searcher = ResumeSafeOptuna(OptunaSearch(metric="m", mode="max", sampler=optuna.samplers.TPESampler(seed=seed)))
    searcher.set_search_properties("m", "max", {"ratio": tune.uniform(0.0, 1.0)})
    return searcher


def _start(searcher, trial_id, config):
    from types import SimpleNamespace

    searcher.starts.on_trial_start(0, [], SimpleNamespace(trial_id=trial_id, config=config))


def test_a_trial_the_restored_searcher_never_suggested_is_learned_not_fatal(tmp_path):
    """A study killed while Tune copied its files resumes with a trial its searcher state predates:
    its results reach Optuna as an evaluated point (with the config it started with), and plain
    OptunaSearch, which raises KeyError for it, would have ended the study."""
    searcher = _optuna()
    first = searcher.suggest("t0")
    searcher.on_trial_complete("t0", {"m": 0.4})
    path = tmp_path / "searcher.json"
    searcher.save(str(path))  # the state on storage: t1 is suggested after it
    searcher.suggest("t1")

    restored = _optuna()
    restored.restore(str(path))
    with pytest.raises(KeyError):  # what the study died of
        restored.inner.on_trial_complete("t1", error=True)
    _start(restored, "t1", {"ratio": 0.25})
    _start(restored, "t2", {"ratio": 0.75})
    restored.on_trial_result("t1", {"m": 0.1, "training_iteration": 1})
    restored.on_trial_complete("t1", error=True)
    restored.on_trial_complete("t2", {"m": 0.5})
    trials = restored.inner._ot_study.trials
    assert [(t.params["ratio"], t.state.name, t.value) for t in trials] == [
        (first["ratio"], "COMPLETE", 0.4), (0.25, "FAIL", None), (0.75, "COMPLETE", 0.5)]
    assert restored.suggest("t3")["ratio"] not in (first["ratio"], 0.25, 0.75)


def test_a_trial_never_seen_starting_is_a_note(capsys):
    searcher = _optuna()
    searcher.on_trial_complete("ghost", {"m": 0.5})
    assert "trial ghost (started before a resume) is not in Optuna's history" in capsys.readouterr().out
    assert searcher.inner._ot_study.trials == []


def _tune_trial(trial_id, status, last_result=None, config=None):
    from types import SimpleNamespace

    return SimpleNamespace(trial_id=trial_id, status=status, last_result=last_result or {}, config=config or {},
                           is_finished=lambda: status in ("TERMINATED", "ERROR"))


def test_a_limiter_restored_with_trials_tune_does_not_run_lets_the_study_go_on(capsys):
    """The limiter's saved live trials can disagree with Tune's restored trial list (a study killed
    while Tune copied its files). With one trial at a time it would then suggest nothing, ever:
    LimiterSync tells the searcher the end Tune recorded and drops trials Tune does not have."""
    from ray.tune.search import ConcurrencyLimiter

    from study.searchers import LimiterSync

    limiter = ConcurrencyLimiter(_optuna(), max_concurrent=1)
    done = limiter.suggest("done")
    assert done is not None and limiter.suggest("blocked") is None  # one at a time
    sync = LimiterSync(limiter)
    sync.on_step_begin(0, [_tune_trial("done", "RUNNING")])  # Tune still runs it: nothing changes
    assert limiter.live_trials == {"done"}
    sync.on_step_begin(1, [_tune_trial("done", "TERMINATED", {"m": 0.7})])  # finished before the save
    assert limiter.live_trials == set()
    trials = limiter.searcher.inner._ot_study.trials
    assert [(t.state.name, t.value) for t in trials] == [("COMPLETE", 0.7)]

    ghost = limiter.suggest("ghost")
    assert ghost is not None
    sync.on_step_begin(2, [_tune_trial("done", "TERMINATED", {"m": 0.7})])  # Tune never saved "ghost"
    assert limiter.live_trials == set() and limiter.suggest("next") is not None
    out = capsys.readouterr().out
    assert "counted trial done as running; told it the end Tune recorded" in out
    assert "counted trial ghost as running; Tune has no such trial" in out


def _grid_searcher(tmp_path=None, seeds=(0, 1, 2), max_trials=None):
    grid = [{"ratio": 0.0}, {"ratio": 1.0}]
    plan = SeedPlan(seeds=tuple(seeds), min_seeds=2, target_halfwidth=0.02, max_trials=max_trials)
    return SeedSearcher(SeedRace(plan, n_candidates=2, mode="max"), "m", "max", grid=grid)


def _restored(searcher, tmp_path):
    path = tmp_path / "searcher.json"
    searcher.save(str(path))
    restored = _grid_searcher()
    restored.restore(str(path))
    return restored


def test_a_race_restored_with_a_running_trial_tune_never_saved_does_not_wait_for_it_forever(tmp_path, capsys):
    """The searcher's state can be newer than Tune's trial list (a study killed while Tune copied its
    files): the race then counts as running a trial Tune will never run, and at the end of its budget
    it would wait for that trial forever (the study hangs). RaceSync drops it; its seed is free again."""
    from ray.tune.search import Searcher

    from study.searchers import RaceSync

    searcher = _grid_searcher(max_trials=4)
    configs = [searcher.suggest(f"t{i}") for i in range(4)]
    for i in range(3):
        searcher.on_trial_complete(f"t{i}", {"m": 0.1 * (i + 1)})
    restored = _restored(searcher, tmp_path)  # t3 (ratio 1, seed 1) is running in the saved race
    tune_trials = [_tune_trial(f"t{i}", "TERMINATED", {"m": 0.1 * (i + 1)}, configs[i]) for i in range(3)]
    assert restored.suggest("t4") is None  # the budget is spent and the race waits for t3 ...
    assert restored.suggest("t4") is None  # ... which Tune does not have: it would wait forever
    RaceSync(restored).on_step_begin(0, tune_trials)
    assert "t3" not in restored.race.trials
    assert "counted trial t3 as running; Tune has no such trial" in capsys.readouterr().out
    again = restored.suggest("t4")  # the freed budget slot retrains that seed
    assert again == configs[3] == {"ratio": 1.0, "seed": 1}
    restored.on_trial_complete("t4", {"m": 0.5})
    assert restored.suggest("t5") == Searcher.FINISHED


def test_a_trial_tune_has_but_the_restored_race_never_started_is_taken_in(tmp_path, capsys):
    """The other way round: Tune's list holds trials the restored race never started. A finished one
    is counted with the value Tune recorded, a running one with its candidate and seed when it
    (re)starts, so no seed is trained twice; one whose candidate the race does not know is a note."""
    from study.searchers import RaceSync

    searcher = _grid_searcher(seeds=(0, 1, 2, 3))
    configs = [searcher.suggest(f"t{i}") for i in range(4)]  # ratios 0 and 1, seeds 0 and 1 each
    values = [0.2, 0.21, 0.1, 0.14]
    for i, value in enumerate(values):
        searcher.on_trial_complete(f"t{i}", {"m": value})
    restored = _restored(searcher, tmp_path)
    configs += [searcher.suggest(f"t{i}") for i in range(4, 6)]  # two more seeds, after the save
    assert {c["seed"] for c in configs[4:]} == {2}
    sync = RaceSync(restored)
    tune_trials = [_tune_trial(f"t{i}", "TERMINATED", {"m": v}, configs[i]) for i, v in enumerate(values)]
    tune_trials += [_tune_trial("t4", "TERMINATED", {"m": 0.3}, configs[4]),
                    _tune_trial("t5", "PENDING", {}, configs[5])]
    sync.on_step_begin(0, tune_trials)
    race = restored.race
    cand4 = race.trials["t4"]["cand"]
    assert race.values(cand4)[2] == 0.3  # taken in and told
    sync.on_trial_start(0, tune_trials, tune_trials[5])  # Tune runs t5 again
    t5 = race.trials["t5"]
    assert (t5["cand"], t5["seed"], t5["status"]) == (1 - cand4, 2, "pending")
    restored.on_trial_complete("t5", {"m": 0.12})
    assert restored.suggest("t6")["seed"] == 3  # seed 2 is not trained again
    sync.on_trial_start(0, [], _tune_trial("t9", "RUNNING", {}, {"ratio": 0.5, "seed": 0}))
    for step in (1, 2):  # it ends: still not the race's, and said only once
        sync.on_step_begin(step, [_tune_trial("t9", "TERMINATED", {"m": 0.4}, {"ratio": 0.5, "seed": 0})])
    assert "t9" not in race.trials
    out = capsys.readouterr().out
    assert f"trial t4 is not in the seed race's saved state; took it in (candidate {cand4 + 1}, seed 2)" in out
    refused = "trial t9 is not in the seed race's saved state; its candidate or seed is not the race's to give"
    assert out.count(refused) == 1
