"""Nothing computed is dropped without a word: a missing artifact is told apart from an unreadable
one, a trial left out of the answer is named with its reason, and a restarted trial that cannot
read its earlier metric rows says so on its run."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from study.answer import AnswerInput, left_out_line, trial_queries
from study.console import summarize
from trainables.config import TrialConfig
from trainables.mlflow_layout import COMPLETED, EARLY_STOPPED, FAILED, FULL_METRICS_FILE, PER_QUERY_FILE, TAG_INCOMPLETE
from trainables.mlflow_store import TrackingError, client_for, fetch_artifact
from trainables.trial_run import TrackingInfo, TrialRun

ARRAYS = {"multilingual.i2t": [0.5, 0.25], "multilingual.i2t@image": [0, 1]}


@pytest.fixture
def store(tmp_path):
    """(uri, client, experiment id, parent run id) of a fresh sqlite store."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = client_for(uri)
    experiment_id = client.create_experiment("loss", artifact_location=(tmp_path / "artifacts").as_uri())
    return uri, client, experiment_id, client.create_run(experiment_id, run_name="study").info.run_id


def trial(store, trial_id: str, **config) -> TrialRun:
    uri, _, experiment_id, parent = store
    return TrialRun(TrackingInfo(uri, experiment_id, parent, trial_id, trial_id), TrialConfig(**config))


def record(trial_id: str, status: str = COMPLETED, ratio=0.5):
    return SimpleNamespace(trial_id=trial_id, status=status, params={"ratio": ratio, "seed": 0})


def test_fetch_tells_a_missing_artifact_from_an_unreadable_one(store, tmp_path):
    _, client, _, _ = store
    run = trial(store, "t1")
    assert fetch_artifact(client, run.run_id, PER_QUERY_FILE, str(tmp_path)) is None  # none written
    run.log_per_query(ARRAYS)
    assert fetch_artifact(client, run.run_id, PER_QUERY_FILE, str(tmp_path)).endswith(PER_QUERY_FILE)

    class Broken:  # the store lists the file but fails to hand it over (a server gone, a lost object)
        def list_artifacts(self, run_id, path=None):
            return client.list_artifacts(run_id, path)

        def download_artifacts(self, run_id, path, folder):
            raise ConnectionError("the server went away\nwith a long traceback")

    with pytest.raises(TrackingError, match=f"artifact {PER_QUERY_FILE} of run {run.run_id} cannot be read: "
                                            "the server went away with a long traceback"):
        fetch_artifact(Broken(), run.run_id, PER_QUERY_FILE, str(tmp_path))


def test_a_trial_left_out_of_the_answer_is_named_with_its_reason(store, tmp_path):
    _, client, experiment_id, parent = store
    good, missing, corrupt, failed = (trial(store, name) for name in ("good", "missing", "corrupt", "failed"))
    good.log_per_query(ARRAYS)
    bad_file = tmp_path / PER_QUERY_FILE
    bad_file.write_bytes(b"not an npz")
    client.log_artifact(corrupt.run_id, str(bad_file))
    records = [record("good"), record("missing"), record("corrupt"), record("failed", FAILED), record("none"),
               record("asha", EARLY_STOPPED)]
    found = trial_queries(client, experiment_id, parent, records)
    assert [t.trial_id for t in found.trials] == ["good"]
    assert set(found.left_out) == {"missing", "corrupt", "none", "asha"}  # a failed trial is reported as failed
    assert found.left_out["asha"] == "stopped early by ASHA: the answer counts only trials trained in full"
    assert found.left_out["missing"] == f"no {PER_QUERY_FILE} (an older or a stand-in trial)"
    assert found.left_out["corrupt"].startswith(f"{PER_QUERY_FILE} unreadable: ")
    assert found.left_out["none"] == "no MLflow run"
    line = left_out_line(found.left_out)
    assert line.startswith("Left out of the answer: 4 trials: missing (no per_query_ap.npz")
    assert "\n" not in line and left_out_line({}) == ""


def test_the_summary_prints_who_was_left_out(tmp_path):
    summary = summarize([], [{"metric": "map100/multilingual", "mode": "max"}], tmp_path, "t",
                        answer_input=AnswerInput([], {"ab12": "no MLflow run"}))
    assert "Left out of the answer: 1 trial: ab12 (no MLflow run)." in summary.text
    assert "Left out of the answer" in summary.markdown  # the MLflow parent run's description says it too


def test_a_restart_that_cannot_read_its_earlier_rows_marks_its_run(store):
    uri, client, _, _ = store
    first = trial(store, "t1")
    first.log_epoch({"train/loss": 1.0, "map100/multilingual": 0.1}, 0)
    # The earlier attempt's metric rows become unreadable (a corrupt file in the artifact store).
    folder = client.get_run(first.run_id).info.artifact_uri.replace("file://", "")
    (Path(folder) / FULL_METRICS_FILE).write_text("not,the,columns\n1,2,3\n")
    again = trial(store, "t1")  # the restarted attempt re-attaches to the same run
    assert again.run_id == first.run_id
    reason = client.get_run(first.run_id).data.tags[TAG_INCOMPLETE]
    assert reason.startswith(f"the rows of {FULL_METRICS_FILE} before this restart are lost: ")
