"""MLflow tracking of trials: explicit URIs, clean metrics, one child run per trial."""

from __future__ import annotations

import math
import os
import sqlite3
import time

import numpy as np
import pytest

from trainables.config import TrialConfig
from trainables.metric_names import MAX_LOGGED_METRICS
from trainables.mlflow_layout import FULL_METRICS_FILE, TAG_PARENT, TAG_REASON, TAG_TRIAL_ID, mlflow_metric_key, trial_run_name
from study.preflight.paths import check_tracking_uri
from trainables.mlflow_store import TrackingError, client_for, prepare_store, resolve_tracking_uri
from trainables.trial_run import (
    TrackingInfo,
    TrialRun,
    clean_metrics,
    config_params,
    find_trial_run,
    last_logged_epoch,
    read_full_metrics,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite MLflow store with one experiment and a parent run (created once: migrations are slow)."""
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = client_for(uri)
    experiment_id = client.create_experiment("tracking-test", artifact_location=(folder / "artifacts").as_uri())
    parent = client.create_run(experiment_id, run_name="study-test").info.run_id
    return uri, experiment_id, parent


def _info(store, trial_id: str) -> TrackingInfo:
    uri, experiment_id, parent = store
    return TrackingInfo(uri, experiment_id, parent, trial_id, f"trial-{trial_id}")


# --- URIs ---------------------------------------------------------------------
def test_relative_sqlite_uri_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(cwd=str(tmp_path)) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert resolve_tracking_uri("sqlite:///sub/x.db", cwd=str(tmp_path)) == f"sqlite:///{tmp_path / 'sub' / 'x.db'}"


def test_absolute_and_remote_uris_are_kept(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_the_environment_variable_is_the_fallback(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert resolve_tracking_uri(None) == "http://tracking.example:5000"


def test_sqlite_in_a_missing_folder_is_rejected(tmp_path):
    with pytest.raises(TrackingError, match="does not exist"):
        check_tracking_uri(f"sqlite:///{tmp_path / 'nope' / 'mlflow.db'}")


def test_an_unreachable_server_fails_fast():
    started = time.monotonic()
    with pytest.raises(TrackingError, match="unusable") as err:
        check_tracking_uri("http://127.0.0.1:9", timeout_s=2)
    assert time.monotonic() - started < 15
    assert "\n" not in str(err.value)
    assert os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES") != "0"  # the quick settings were undone


# --- metrics --------------------------------------------------------------------
def _tables(db) -> set[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return {row[0] for row in con.execute("select name from sqlite_master where type = 'table'")}


def test_a_new_sqlite_store_appears_only_once_it_is_built(tmp_path, monkeypatch):
    """Regression: a reader opening a half-migrated database broke the study's own migration."""
    import trainables.mlflow_store as tracking

    db = tmp_path / "mlflow.db"
    seen_while_building = []
    build = tracking._build_sqlite_schema

    def watched(uri):
        build(uri)
        seen_while_building.append(db.exists())  # built elsewhere: the store is still absent here

    monkeypatch.setattr(tracking, "_build_sqlite_schema", watched)
    prepare_store(f"sqlite:///{db}")
    assert seen_while_building == [False]
    assert {"alembic_version", "experiments", "runs", "tags"} <= _tables(db)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]  # no private copy left behind

    made = db.stat().st_mtime_ns
    prepare_store(f"sqlite:///{db}")  # an existing store is left alone
    assert seen_while_building == [False] and db.stat().st_mtime_ns == made


def test_a_store_made_meanwhile_by_another_process_is_kept(tmp_path, monkeypatch):
    import trainables.mlflow_store as tracking

    db = tmp_path / "mlflow.db"
    build = tracking._build_sqlite_schema

    def racing(uri):
        build(uri)
        with sqlite3.connect(db) as con:  # another process wins the race with its own database
            con.execute("create table theirs (x)")

    monkeypatch.setattr(tracking, "_build_sqlite_schema", racing)
    prepare_store(f"sqlite:///{db}")
    assert _tables(db) == {"theirs"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]


RACE = """
import sys, time
from trainables.mlflow_store import client_for
db, start = sys.argv[1], float(sys.argv[2])
while time.time() < start:
    time.sleep(0.005)
print(len(client_for(f"sqlite:///{db}").search_experiments()))
"""


def test_processes_opening_a_new_store_at_once_all_succeed(tmp_path):
    """Three processes open one missing database at the same instant (MLflow alone: two fail)."""
    import subprocess
    import sys

    db = tmp_path / "mlflow.db"
    start = str(time.time() + 6)  # after every interpreter has imported mlflow
    procs = [
        subprocess.Popen([sys.executable, "-c", RACE, str(db), start], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0 and out.strip() == "1", err[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]


def test_metric_names_are_valid_for_mlflow():
    assert mlflow_metric_key("map@100/multilingual") == "map100/multilingual"
    assert mlflow_metric_key("a//b/") == "a/b"
    assert mlflow_metric_key("x?y") == "x_y"


def test_only_finite_real_measurements_are_logged():
    metrics = {
        "map100/multilingual": 0.5,
        "train/loss": np.float32(1.25),
        "n": 3,
        "nan": math.nan,
        "inf": math.inf,
        "flag": True,
        "text": "hello",
        "epoch": 2.0,
        "pid": 1234.0,
        "timestamp": 1.7e9,
        "checkpoint_path": "/tmp/x",
        "ratio": 0.3,  # a config value, not a measurement
        "map@100/x": 0.1,
    }
    assert clean_metrics(metrics) == {"map100/multilingual": 0.5, "train/loss": 1.25, "n": 3.0, "map100/x": pytest.approx(0.1)}


# --- child runs -------------------------------------------------------------------
def test_no_tracking_info_means_no_op():
    run = TrialRun(None, TrialConfig())
    run.log_epoch({"a": 1.0}, 1)
    run.finish("FAILED", "x")
    assert not run.active


def _full_rows(store, run_id, tmp_path):
    return read_full_metrics(client_for(store[0]).download_artifacts(run_id, FULL_METRICS_FILE, str(tmp_path)))


def test_a_trial_run_is_a_nested_child_with_headlines_and_the_full_breakdown(store, tmp_path):
    config = TrialConfig(ratio=0.25, seed=3)
    run = TrialRun(_info(store, "t1"), config)
    run.log_epoch({"map100/multilingual": 0.4, "map100/crosslingual/pair/en-de": 0.3, "epoch": 1.0}, epoch=1)
    run.log_epoch({"map100/multilingual": 0.5, "map100/crosslingual/pair/en-de": 0.35}, epoch=2)
    run.finish()
    got = client_for(store[0]).get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.tags[TAG_PARENT] == store[2] and got.data.tags[TAG_TRIAL_ID] == "t1"
    assert got.info.run_name == "trial-t1"
    # every set field is a param; unset ones (None) are left out, never "None"
    unset = {k for k, v in config.to_dict().items() if v is None}
    assert unset and set(got.data.params) == set(config.to_dict()) - unset
    assert "None" not in got.data.params.values() and got.data.params["ratio"] == "0.25"
    # the headline under its short name, the searched parameters as numbers; the pair only in the artifact
    assert got.data.metrics == {"multi": 0.5, "ratio": 0.25, "temperature": 0.07, "batch_size": 64.0, "seed": 3.0}
    history = client_for(store[0]).get_metric_history(run.run_id, "multi")
    assert [m.step for m in history] == [1, 2]
    assert _full_rows(store, run.run_id, tmp_path) == [
        (1, "map100/crosslingual/pair/en-de", 0.3), (1, "map100/multilingual", 0.4),
        (2, "map100/crosslingual/pair/en-de", 0.35), (2, "map100/multilingual", 0.5),
    ]


def test_run_names_carry_the_searched_values():
    assert trial_run_name("9925bc90", {"ratio": 0.020334471624930517, "seed": 1}) == "r=0.0203 s=1 · 9925bc90"
    assert trial_run_name("ab", {"seed": 2, "temperature": 0.0712, "ratio": 1.0, "batch_size": 64}) == (
        "r=1 t=0.071 b=64 s=2 · ab")
    assert trial_run_name("ab", {}) == "trial ab"
    assert "None" not in config_params({"pretrained": None, "ratio": 0.5}).values()


def test_a_restarted_trial_reattaches_instead_of_duplicating(store, tmp_path):
    config = TrialConfig(ratio=0.75)
    first = TrialRun(_info(store, "t2"), config, steps_per_epoch=100)
    first.log_epoch({"train/loss": 1.0}, epoch=1)
    first.log_epoch({"train/loss": 2.0}, epoch=2)
    # the worker group dies; a restarted one resumes from the epoch-1 checkpoint
    second = TrialRun(_info(store, "t2"), config, steps_per_epoch=100)
    assert second.run_id == first.run_id
    second.log_epoch({"train/loss": 2.5}, epoch=2)  # already logged: skipped
    second.log_epoch({"train/loss": 3.0}, epoch=3)
    second.finish()
    client = client_for(store[0])
    runs = client.search_runs([store[1]], filter_string=f"tags.`{TAG_TRIAL_ID}` = 't2'")
    assert len(runs) == 1
    history = client.get_metric_history(first.run_id, "train/loss")
    # the step is the training step (epoch x steps per epoch): learning curves over steps
    assert [(m.step, m.value) for m in history] == [(100, 1.0), (200, 2.0), (300, 3.0)]
    assert [row[0] for row in _full_rows(store, first.run_id, tmp_path)] == [100, 200, 300]  # continued, once each
    assert last_logged_epoch(client, client.get_run(first.run_id)) == 3
    assert find_trial_run(client, _info(store, "t2")).info.run_id == first.run_id


def test_the_last_logged_epoch_counts_epochs_without_evaluation(store):
    """Regression: the alphabetically first metric (bias) exists only on evaluated epochs."""
    run = TrialRun(_info(store, "t4"), TrialConfig(ratio=0.5, eval_every=2))
    run.log_epoch({"train/loss": 3.0}, epoch=1)
    run.log_epoch({"train/loss": 2.0, "bias/multilingual": 9.0}, epoch=2)
    run.log_epoch({"train/loss": 1.0}, epoch=3)
    client = client_for(store[0])
    assert last_logged_epoch(client, client.get_run(run.run_id)) == 3
    again = TrialRun(_info(store, "t4"), TrialConfig(ratio=0.5, eval_every=2))
    again.log_epoch({"train/loss": 1.5}, epoch=3)  # a restart re-running epoch 3: not logged twice
    assert [m.step for m in client.get_metric_history(run.run_id, "train/loss")] == [1, 2, 3]


def test_a_real_epoch_logs_at_most_the_headline_count(store, tmp_path):
    """A full evaluation (~600 metrics for 11 languages) reaches MLflow as the headlines only."""
    import torch

    from trainables.evaluate import evaluate_embeddings
    from trainables.languages import LANGUAGES

    gen = torch.Generator().manual_seed(0)
    images = torch.randn(30, 8, generator=gen)
    metrics = evaluate_embeddings(images, {lang: images + torch.randn(30, 8, generator=gen) for lang in LANGUAGES})
    metrics.update({"train/loss": 2.0, "train/samples_per_s": 50.0, "composition/mono_share": 0.5})
    run = TrialRun(_info(store, "t5"), TrialConfig(ratio=0.5))
    run.log_epoch(metrics, epoch=1)
    got = client_for(store[0]).get_run(run.run_id).data.metrics
    assert len(metrics) > 500 and 40 <= len(got) <= MAX_LOGGED_METRICS
    assert got["multi/sinitic"] == pytest.approx(metrics["map100/multilingual/family/sinitic"])
    assert len(_full_rows(store, run.run_id, tmp_path)) == len(clean_metrics(metrics))


def test_a_failed_trial_ends_failed_with_its_reason(store):
    run = TrialRun(_info(store, "t3"), TrialConfig())
    run.finish("FAILED", reason="FloatingPointError: non-finite loss at step 7")
    got = client_for(store[0]).get_run(run.run_id)
    assert got.info.status == "FAILED"
    assert got.data.tags[TAG_REASON] == "FloatingPointError: non-finite loss at step 7"


# --- the Tune function around the fit (no Ray: a stand-in Tune context) ---------------------------
def _context(store, fit):
    from study.trial import TrialContext

    uri, experiment_id, parent = store
    base = TrialConfig(epochs=2).to_dict()
    base.pop("ratio")
    return TrialContext("s", base, fit, "/unused", uri, experiment_id, parent, metrics_first=("m",))


@pytest.fixture
def tune_stub(monkeypatch):
    """``ray.tune.get_context``/``report`` of a trial with id ``tid``; reports land in ``.reports``."""
    import ray.tune

    stub = type("Stub", (), {"trial_id": "tid", "reports": []})()
    context = type("Ctx", (), {"get_trial_id": lambda self: stub.trial_id})()
    monkeypatch.setattr(ray.tune, "get_context", lambda: context)
    monkeypatch.setattr(ray.tune, "report", lambda metrics, **kw: stub.reports.append(metrics))
    monkeypatch.setattr("study.trial.OrderedTuneReportCallback", lambda *args: None)  # needs a real session
    return stub


def fit_ok(config, *, tracking, **kwargs):
    run = TrialRun(tracking, config)
    for epoch in (1, 2):
        run.log_epoch({"map100/multilingual": epoch * config.ratio, "train/loss": 3.0 - epoch}, epoch)
    run.finish()


def fit_boom(config, *, tracking, **kwargs):
    TrialRun(tracking, config).log_epoch({"m": 1.0}, 1)
    raise ValueError("bad image 7")


def fit_stopped(config, *, tracking, **kwargs):
    TrialRun(tracking, config).log_epoch({"m": 1.0}, 1)
    raise SystemExit(0)  # how Tune stops a trial's function (ASHA, Ctrl-C)


def test_run_trial_marks_success_and_replays_instead_of_retraining(store, tune_stub):
    from study.trial import run_trial

    tune_stub.trial_id = "ok1"
    run_trial({"ratio": 0.5}, _context(store, fit_ok))
    client = client_for(store[0])
    got = find_trial_run(client, _info(store, "ok1"))
    assert got.info.status == "FINISHED" and got.data.tags["mlclip.completed"] == "true"
    assert got.info.run_name == "r=0.5 · ok1"
    # Tune restarts the trial (its state predates the trial's end): no training, metrics re-reported
    # under the names a live trial reports (source names and the short aliases), without the params
    run_trial({"ratio": 0.5}, _context(store, fit_boom))
    assert tune_stub.reports == [
        {"map100/multilingual": 1.0, "train/loss": 1.0, "multi": 1.0, "epoch": 2.0},
    ]
    assert client.get_run(got.info.run_id).info.status == "FINISHED"


def test_run_trial_records_a_failure_with_its_reason(store, tune_stub):
    from study.trial import run_trial

    tune_stub.trial_id = "bad1"
    with pytest.raises(ValueError):
        run_trial({"ratio": 0.5}, _context(store, fit_boom))
    got = find_trial_run(client_for(store[0]), _info(store, "bad1"))
    assert got.info.status == "FAILED" and got.data.tags[TAG_REASON] == "ValueError: bad image 7"
    assert got.data.params["ratio"] == "0.5"


def test_a_trial_stopped_by_tune_is_not_a_failure(store, tune_stub):
    from study.trial import run_trial

    tune_stub.trial_id = "stop1"
    with pytest.raises(SystemExit):
        run_trial({"ratio": 0.5}, _context(store, fit_stopped))
    got = find_trial_run(client_for(store[0]), _info(store, "stop1"))
    assert got.info.status == "RUNNING" and TAG_REASON not in got.data.tags  # the study reconciles it


def fit_wrong_metric(config, *, tracking, **kwargs):
    return {"map100/multilingual": 0.5}


def test_a_trial_without_the_objective_fails_with_a_clear_reason(store, tune_stub):
    import dataclasses

    from study.trial import run_trial

    tune_stub.trial_id = "typo1"
    ctx = dataclasses.replace(_context(store, fit_wrong_metric), objectives=("map100/multilingal",))
    with pytest.raises(RuntimeError, match="reported no map100/multilingal"):
        run_trial({"ratio": 0.5}, ctx)
    got = find_trial_run(client_for(store[0]), _info(store, "typo1"))
    assert got.info.status == "FAILED" and "map100/multilingal" in got.data.tags[TAG_REASON]
