"""End-to-end studies: ``python -m study.run`` as a user runs it (a subprocess, a local Ray).

* the smoke study on the real trial (``trainables.driver.fit_trial``): Tune's results carry
  the target metric, MLflow holds a parent run with one child run per trial and per-family
  metrics, the artifacts exist, and ``study.report`` rebuilds the same table from MLflow;
* resume: a study interrupted (SIGINT) after its first trial continues with ``--resume`` to
  the requested number of trials, without re-running the finished one or duplicating runs
  (a stand-in trial on the product's own ``TorchTrainer``, ``build_trainer``, so the timing of
  the interruption is known);
* failed trials and a multi-objective study (a stand-in trial without Ray Train, fast).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests.standins import repo_env, standin_command
from trainables.languages import FAMILIES
from trainables.metric_names import FAMILY_METRIC, MAX_LOGGED_METRICS, TARGET_METRIC, logged_name
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
RESUME_SPACE = """
search: {algorithm: optuna, num_samples: 3, n_startup_trials: 3}
fixed: {epochs: 3, synthetic_train_size: 64, synthetic_test_size: 100}
params:
  ratio: {type: uniform, low: 0.0, high: 1.0}
"""


def _completed_trials(cwd: Path, name: str) -> list[str]:
    db = cwd / "mlflow.db"
    if not db.exists():
        return []
    try:
        client = client_for(f"sqlite:///{db}")
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            return []
        runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{TAG_COMPLETED}` = 'true'")
    except Exception:  # noqa: BLE001 - the study may be creating the database right now
        return []
    return [r.data.tags[TAG_TRIAL_ID] for r in runs]


def test_interrupted_study_resumes_without_rerunning_or_duplicating(tmp_path):
    space = _space(tmp_path, RESUME_SPACE, "resume")
    env = repo_env(_env())
    args = ["--space", str(space), "--name", "res", "--max-concurrent", "1"]
    proc = subprocess.Popen(standin_command("train", *args, epoch_s=2), cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not _completed_trials(tmp_path, "res"):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the first trial never completed"
            time.sleep(1)
        time.sleep(3)  # let Tune snapshot its state with the first trial finished
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output[-3000:]
    assert "--resume --name res" in output
    first = _completed_trials(tmp_path, "res")
    assert len(first) == 1
    _, parent, children = _store(tmp_path, "res")
    assert parent.info.status == "KILLED" and all(c.info.status != "RUNNING" for c in children)

    resumed = subprocess.run(standin_command("train", "--resume", "--name", "res", epoch_s=2), cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"Trial trial_{first[0]} started" not in resumed.stdout  # the finished trial is not re-run

    client, parent, children = _store(tmp_path, "res")
    trial_ids = [c.data.tags[TAG_TRIAL_ID] for c in children]
    assert parent.info.status == "FINISHED"
    assert len(trial_ids) == 3 and len(set(trial_ids)) == 3  # requested number, no duplicates
    assert all(c.info.status == "FINISHED" for c in children)
    assert len(list((tmp_path / "ray_results" / "res").glob("trial_*"))) == 3
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, logged_name(TARGET_METRIC))]
        assert steps == [1, 2, 3]


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

    _, parent, children = _store(tmp_path, "front")
    assert parent.info.status == "FINISHED" and len(children) == 3
    failed = [c for c in children if float(c.data.params["ratio"]) > 0.5]
    assert 0 < len(failed) < 3  # seeded TPE: the sampled ratios are known
    assert all(c.info.status == "FAILED" and "non-finite loss" in c.data.tags[TAG_REASON] for c in failed)
    assert all(c.info.status == "FINISHED" for c in children if c not in failed)
    assert (tmp_path / "study_results" / "front" / "pareto_front.png").is_file()
