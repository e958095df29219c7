"""End-to-end studies: ``python -m study.run`` as a user runs it (a subprocess, a local Ray).

* the smoke study on the real trial (``trainables.driver.fit_trial``): Tune's results carry
  the target metric, MLflow holds a parent run with one child run per trial and per-family
  metrics, the artifacts exist, and ``study.report`` rebuilds the same table from MLflow;
* (an interrupted study and its ``--resume``: tests/test_fault_injection.py, whose SIGTERM takes
  Ctrl-C's path, and tests/test_cluster_rehearsal.py on a cluster with S3 storage);
* failed trials and a multi-objective study (a stand-in trial without Ray Train, fast).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from tests.standins import repo_env, standin_command
from trainables.languages import FAMILIES
from trainables.metric_names import FAMILY_METRIC, MAX_LOGGED_METRICS, logged_name
from trainables.mlflow_layout import (
    FULL_METRICS_FILE,
    PER_QUERY_FILE,
    TAG_COMPLETED,
    TAG_PARENT,
    TAG_REASON,
    TAG_ROLE,
    TAG_TRIAL_ID,
)
from trainables.mlflow_store import client_for

pytestmark = pytest.mark.slow
TIMEOUT_S = 600


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env.update({"RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def _study(cwd: Path, *args: str, env: dict | None = None, module: str = "study.run") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=TIMEOUT_S
    )


def _store(cwd: Path, name: str):
    client = client_for(f"sqlite:///{cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None, f"no MLflow experiment {name}"
    parents = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{TAG_ROLE}` = 'study'")
    assert len(parents) == 1, "one parent run per study"
    children = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{parents[0].info.run_id}'")
    return client, parents[0], children


def _table_rows(output: str) -> list[str]:
    """The rows of the trial table printed by study.run / study.report."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("trial ") and "multilingual" in line)
    rows = []
    for line in lines[start + 2:]:
        if not line.strip():
            break
        rows.append(" ".join(line.split()))
    return rows


def _space(tmp_path: Path, text: str, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------
def test_smoke_study_on_the_real_trial(smoke_study):
    tmp_path, done = smoke_study
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # Tune's results carry the target metric
    trial_dirs = sorted((tmp_path / "ray_results" / "e2e").glob("trial_*"))
    assert len(trial_dirs) == 2
    for trial_dir in trial_dirs:
        last = json.loads((trial_dir / "result.json").read_text().strip().splitlines()[-1])
        assert 0.0 <= last["map100/multilingual"] <= 1.0

    # MLflow: a parent run with two child runs, each with the headlines (per family too), the
    # searched ratio as a number, every set param, and the full breakdown beside the per-query file
    client, parent, children = _store(tmp_path, "e2e")
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert len({c.data.tags[TAG_TRIAL_ID] for c in children}) == 2
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags.get(TAG_COMPLETED) == "true"
        assert all(logged_name(FAMILY_METRIC.format(f)) in child.data.metrics for f in FAMILIES)
        assert len(child.data.metrics) <= MAX_LOGGED_METRICS
        assert child.data.metrics["ratio"] == float(child.data.params["ratio"])
        assert {"ratio", "temperature", "batch_size", "epochs", "seed"} <= set(child.data.params)
        assert "None" not in child.data.params.values()
        assert not any("@" in key or key in ("epoch", "pid", "timestamp") for key in child.data.metrics)
        assert {FULL_METRICS_FILE, PER_QUERY_FILE} <= {a.path for a in client.list_artifacts(child.info.run_id)}
    assert "mutex.cc" not in done.stderr and "RAW:" not in done.stderr  # no native debug lines at exit
    assert "Downloading artifacts" not in done.stderr

    # what a person sees: the plan, the study's progress lines (not Tune's boxes), then the answer
    # first and the trials after it
    out_text = done.stdout + done.stderr
    for tune_own in ("Configuration for experiment", "Search algorithm", "TensorBoard", "Trial status:"):
        assert tune_own not in out_text, tune_own
    lines = done.stdout.splitlines()
    progress = [i for i, line in enumerate(lines) if line.startswith("[") and " r=" in line and " · " in line]
    done_lines = [lines[i] for i in progress if "] done " in lines[i]]
    assert len(done_lines) == 2 and all("multi 0." in line for line in done_lines), lines
    plan = next(i for i, line in enumerate(lines) if line.lstrip().startswith("parent:"))
    answer = next(i for i, line in enumerate(lines) if line.startswith("Answer ("))
    table = next(i for i, line in enumerate(lines) if line.startswith("Trials:"))
    assert plan < progress[0] and progress[-1] < answer < table

    # the artifacts exist, in the output folder and on the parent run
    out = tmp_path / "study_results" / "e2e"
    for name in ("trials.csv", "map100_by_family_vs_ratio.png", "best_config.json"):
        assert (out / name).is_file(), name
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "summary")}
    assert {"summary/trials.csv", "summary/map100_by_family_vs_ratio.png", "summary/best_config.json"} <= logged
    assert "mlflow ui --backend-store-uri" in done.stdout and "--host 127.0.0.1" in done.stdout
    # the Optuna study is in its sqlite file, where optuna-dashboard (printed) and Optuna open it
    url = f"sqlite:///{tmp_path / 'ray_results' / 'e2e' / 'optuna.db'}"
    assert f"Optuna: optuna-dashboard {url}" in done.stdout
    trials = optuna.load_study(study_name="e2e", storage=url).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2

    # study.report rebuilds the same table from MLflow alone
    report = _study(tmp_path, "--experiment", "e2e", module="study.report")
    assert report.returncode == 0, report.stderr[-3000:]
    assert _table_rows(report.stdout) == _table_rows(done.stdout)
    assert len(_table_rows(report.stdout)) == 2


# ---------------------------------------------------------------------------
PARETO_SPACE = """
search:
  algorithm: optuna
  num_samples: 3
  n_startup_trials: 3
  objectives:
    - {metric: map100/multilingual, mode: max}
    - {metric: bias/multilingual, mode: min}
fixed: {epochs: 2}
params:
  ratio: {type: uniform, low: 0.0, high: 1.0}
  temperature: {type: loguniform, low: 0.03, high: 0.2}
"""


def test_failed_trials_are_reported_and_the_pareto_front_printed(tmp_path):
    space = _space(tmp_path, PARETO_SPACE, "front")
    done = subprocess.run(standin_command("direct", "--space", str(space), epoch_s=0.1, fail_above=0.5), cwd=tmp_path,
                          env=repo_env(_env()), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Pareto front (map100/multilingual max, bias/multilingual min)" in done.stdout
    assert "Failed trials:" in done.stdout and "non-finite loss" in done.stdout
    # ratio and temperature both searched: no per-ratio answer, the ratio's effect per objective instead
    assert "Confounded: this study searched temperature together with the ratio" in done.stdout
    for metric in ("map100/multilingual", "bias/multilingual"):  # too few trials to separate it: said, per objective
        assert f"The ratio's effect on {metric} cannot be separated from temperature" in done.stdout, metric
    assert "Best ratio" not in done.stdout

    _, parent, children = _store(tmp_path, "front")
    assert parent.info.status == "FINISHED" and len(children) == 3
    failed = [c for c in children if float(c.data.params["ratio"]) > 0.5]
    assert 0 < len(failed) < 3  # seeded TPE: the sampled ratios are known
    assert all(c.info.status == "FAILED" and "non-finite loss" in c.data.tags[TAG_REASON] for c in failed)
    assert all(c.info.status == "FINISHED" for c in children if c not in failed)
    assert (tmp_path / "study_results" / "front" / "pareto_front.png").is_file()
