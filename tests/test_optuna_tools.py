"""Optuna's own tools on a study's search: its Optuna study in a sqlite file that optuna-dashboard
opens, and the parameter importance (fANOVA) of spaces that search several parameters."""

from __future__ import annotations

import importlib.util
import shutil
from types import SimpleNamespace

import optuna

from study.console import importance_text
from study.parent_run import log_importance
from study.tuning import optuna_storage_url, parameter_importance
from trainables.mlflow_layout import importance_metric
from trainables.mlflow_store import client_for


def state(tmp_path, storage_path=None):
    storage = storage_path or str(tmp_path / "ray_results")
    return SimpleNamespace(name="imp", storage_path=storage, experiment_path=f"{storage}/imp",
                           output_dir=str(tmp_path / "out"), objectives=[{"metric": "map100/multilingual", "mode": "max"}])


def test_the_optuna_study_lives_beside_tune_s_state_or_in_the_output_folder(tmp_path):
    assert optuna_storage_url(state(tmp_path)) == f"sqlite:///{tmp_path}/ray_results/imp/optuna.db"
    assert optuna_storage_url(state(tmp_path, "s3://bucket/studies")) == f"sqlite:///{tmp_path}/out/optuna.db"


def test_importance_names_the_parameter_the_objective_depends_on(tmp_path):
    s = state(tmp_path)
    (tmp_path / "ray_results" / "imp").mkdir(parents=True)
    study = optuna.create_study(study_name="imp", storage=optuna_storage_url(s), direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("ratio", 0, 1) ** 2 + 0.001 * t.suggest_float("temperature", 0.01, 0.2),
                   n_trials=30)
    shares = parameter_importance(s, ["ratio", "temperature"])["map100/multilingual"]
    assert set(shares) == {"ratio", "temperature"} and abs(sum(shares.values()) - 1) < 1e-6
    assert shares["ratio"] > 0.9
    assert parameter_importance(s, ["ratio"]) == {}  # one parameter: nothing to apportion
    text = importance_text({"map100/multilingual": shares})
    assert text.splitlines()[1].startswith("  map100/multilingual: ratio ")  # most important first

    client = client_for(f"sqlite:///{tmp_path}/mlflow.db")
    run_id = client.create_run(client.create_experiment("imp", artifact_location=(tmp_path / "artifacts").as_uri())).info.run_id
    log_importance(client, run_id, {"map100/multilingual": shares})
    logged = client.get_run(run_id).data.metrics
    assert logged[importance_metric("map100/multilingual", "ratio")] == shares["ratio"]


def test_optuna_dashboard_is_installed():
    """The command the study prints exists (a dependency in pyproject.toml)."""
    assert shutil.which("optuna-dashboard") and importlib.util.find_spec("optuna_dashboard") is not None


def test_the_exported_optuna_study_holds_every_trial_with_its_values(tmp_path):
    """One Optuna trial per Tune trial: searched values (not the seed), objectives, and the outcome."""
    from study.results import COMPLETED, EARLY_STOPPED, FAILED, TrialRecord
    from study.spaces import parse_space
    from study.tuning import export_optuna_study

    space = parse_space({"params": {"ratio": {"type": "uniform", "low": 0, "high": 1},
                                    "temperature": {"type": "loguniform", "low": 0.01, "high": 0.2}}},
                        name="imp", source="test")
    records = [TrialRecord("a", COMPLETED, {"ratio": 0.2, "temperature": 0.05, "seed": 1}, {"map100/multilingual": 0.3}),
               TrialRecord("b", EARLY_STOPPED, {"ratio": 0.7, "temperature": 0.02, "seed": 0}, {"map100/multilingual": 0.1}),
               TrialRecord("c", FAILED, {"ratio": 0.9, "temperature": 0.1, "seed": 0}, {})]
    s = state(tmp_path)
    url = export_optuna_study(s, space, records)
    assert url == optuna_storage_url(s)
    trials = optuna.load_study(study_name="imp", storage=url).trials
    assert [(t.params, t.state.name, t.values) for t in trials] == [
        ({"ratio": 0.2, "temperature": 0.05}, "COMPLETE", [0.3]),
        ({"ratio": 0.7, "temperature": 0.02}, "PRUNED", None),
        ({"ratio": 0.9, "temperature": 0.1}, "FAIL", None)]
    assert trials[0].user_attrs == {"tune_trial_id": "a", "seed": 1}
    export_optuna_study(s, space, records[:1])  # written anew at the end of every run
    assert len(optuna.load_study(study_name="imp", storage=url).trials) == 1
