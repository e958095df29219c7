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


def _tune_trial(trial_id, status, last_result=None):
    from types import SimpleNamespace

    return SimpleNamespace(trial_id=trial_id, status=status, last_result=last_result or {},
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
