"""What a user of the MLflow UI gets from a finished study, checked over a real ``mlflow server``.

A smoke study on the real trial, then ``mlflow server`` (one worker, as the printed UI command
runs it) on 127.0.0.1 and a free port, queried through the REST API the UI itself uses:

* the child runs' names carry the searched ratio;
* a numeric filter on the searched ratio (``metrics.ratio < x``) returns exactly the right runs;
* every child run holds at most the headline metric count (not the ~600 of an evaluation);
* the parent run holds the answer artifacts, served to the UI, and its markdown description;
* the experiment's description holds the metric definitions.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import SMOKE_STUDY
from tests.test_study_e2e import _env
from trainables.metric_names import MAX_LOGGED_METRICS
from trainables.mlflow_layout import RATIO_STEP, ratio_label

pytestmark = pytest.mark.slow
STUDY = SMOKE_STUDY
SERVER_START_S = 90


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running ``mlflow server`` and a tiny JSON client for its REST API."""

    def __init__(self, proc: subprocess.Popen, base: str):
        self.proc, self.base = proc, base

    def get(self, route: str, **query) -> dict:
        url = f"{self.base}{route}?{urllib.parse.urlencode(query)}"
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.loads(response.read())

    def post(self, route: str, body: dict) -> dict:
        request = urllib.request.Request(f"{self.base}{route}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def text(self, route: str, **query) -> str:
        with urllib.request.urlopen(f"{self.base}{route}?{urllib.parse.urlencode(query)}", timeout=30) as response:
            return response.read().decode()

    def runs(self, experiment_id: str, filter_string: str) -> list[dict]:
        body = {"experiment_ids": [experiment_id], "filter": filter_string, "max_results": 1000}
        return self.post("/api/2.0/mlflow/runs/search", body).get("runs", [])


@pytest.fixture(scope="module")
def server(smoke_study):
    """The session's finished smoke study and an ``mlflow server`` on its store (stopped after the module)."""
    cwd, done = smoke_study
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "--workers 1" in done.stdout  # the printed UI command is the one run here
    port = _free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{cwd / 'mlflow.db'}",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = (cwd / "server.log").open("w")
    env = {**_env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no GenAI job runners: half the start's CPU
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    srv = Server(proc, f"http://127.0.0.1:{port}")
    try:
        _wait_until_up(srv, log.name)
        yield srv
    finally:
        stop_group(proc)
        log.close()


def _wait_until_up(srv: Server, log_path: str) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        assert srv.proc.poll() is None, Path(log_path).read_text()[-3000:]
        try:
            urllib.request.urlopen(f"{srv.base}/health", timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"mlflow server did not answer in {SERVER_START_S} s:\n{Path(log_path).read_text()[-3000:]}")


def stop_group(proc: subprocess.Popen) -> None:
    """Stop the server's process group (its workers too), politely first."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


@pytest.fixture(scope="module")
def study(server):
    """(experiment, parent run, child runs) of the study, as the REST API returns them."""
    experiment = server.get("/api/2.0/mlflow/experiments/get-by-name", experiment_name=STUDY)["experiment"]
    parents = server.runs(experiment["experiment_id"], "tags.`mlclip.role` = 'study'")
    assert len(parents) == 1
    parent = parents[0]
    children = server.runs(experiment["experiment_id"], f"tags.`mlflow.parentRunId` = '{parent['info']['run_id']}'")
    assert len(children) == 2
    return experiment, parent, children


def _params(run: dict) -> dict:
    return {p["key"]: p["value"] for p in run["data"].get("params", [])}


def _tags(run: dict) -> dict:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def test_run_names_carry_the_ratio_and_the_trial_id(study):
    _, _, children = study
    for child in children:
        ratio = float(_params(child)["ratio"])
        name = child["info"]["run_name"]
        assert name.startswith(f"r={ratio_label(ratio)} ") and name.endswith(_tags(child)["mlclip.trial_id"]), name


def test_a_numeric_filter_on_the_ratio_returns_the_right_runs(server, study):
    experiment, parent, children = study
    ratios = sorted(float(_params(c)["ratio"]) for c in children)
    assert ratios[0] < ratios[1]  # the seeded smoke study samples two different ratios
    cut = (ratios[0] + ratios[1]) / 2
    under = server.runs(experiment["experiment_id"],
                        f"metrics.ratio < {cut} and tags.`mlflow.parentRunId` = '{parent['info']['run_id']}'")
    assert [float(_params(r)["ratio"]) for r in under] == [ratios[0]]
    # sorting by the numeric ratio works too (what the runs table does on a column click)
    body = {"experiment_ids": [experiment["experiment_id"]], "order_by": ["metrics.ratio DESC"],
            "filter": f"tags.`mlflow.parentRunId` = '{parent['info']['run_id']}'"}
    ordered = server.post("/api/2.0/mlflow/runs/search", body)["runs"]
    assert [float(_params(r)["ratio"]) for r in ordered] == ratios[::-1]


def test_child_runs_hold_only_the_headlines(study):
    _, _, children = study
    for child in children:
        metrics = {m["key"] for m in child["data"].get("metrics", [])}
        assert 40 <= len(metrics) <= MAX_LOGGED_METRICS, sorted(metrics)
        assert {"multi", "multi/sinitic", "bias", "train/loss", "ratio"} <= metrics
        assert "None" not in _params(child).values()


def test_the_parent_run_holds_the_answer(server, study):
    _, parent, _ = study
    run_id = parent["info"]["run_id"]
    listed = server.get("/api/2.0/mlflow/artifacts/list", run_id=run_id, path="summary").get("files", [])
    paths = {f["path"] for f in listed}
    assert {"summary/answer.csv", "summary/answer.md", "summary/map100_by_family_vs_ratio.png",
            "summary/trials.csv"} <= paths
    served = server.text("/get-artifact", path="summary/answer.md", run_uuid=run_id)  # as the UI fetches it
    assert served.strip() and served.strip() == _tags(parent)["mlflow.note.content"].strip()
    header = server.text("/get-artifact", path="summary/trials.csv", run_uuid=run_id).splitlines()[0].split(",")
    assert header[:2] == ["trial_id", "ratio"] and "multi" in header[:12]


def test_the_parent_run_names_one_best_and_charts_the_answer_against_the_ratio(server, study):
    """What the UI reads for the answer: the best ratio's tag and metrics, the single run apart, and the
    by_ratio histories (one point per tried ratio, step = ratio in thousandths)."""
    _, parent, children = study
    tags, run_id = _tags(parent), parent["info"]["run_id"]
    metrics = {m["key"]: m["value"] for m in parent["data"].get("metrics", [])}
    ratios = {float(_params(c)["ratio"]) for c in children}
    assert float(tags["best.ratio"]) in {float(ratio_label(r)) for r in ratios}
    low, mean, high = (metrics[f"best/map100/multilingual/{part}"] for part in ("ci_low", "mean", "ci_high"))
    assert low <= mean <= high
    assert tags["best_single_run.trial_id"] in {_tags(c)["mlclip.trial_id"] for c in children}
    assert "best.trial_id" not in tags
    history = server.get("/api/2.0/mlflow/metrics/get-history", run_id=run_id, metric_key="by_ratio/objective/mean")
    assert {m["step"] for m in history["metrics"]} == {round(r * RATIO_STEP) for r in ratios}
    assert tags["mlflow.note.content"].startswith("## Answer\n\n**Verdict.** ")


def test_the_experiment_description_opens_with_the_answer_and_defines_the_metrics(study):
    """The experiment page shows its description above the runs, folded to its first line: the answer
    (the best ratio the parent run names), then the verdict and the best ratio per family, where the
    full answer is, and the metric definitions."""
    experiment, parent, _ = study
    tags = {t["key"]: t["value"] for t in experiment.get("tags", [])}
    text = tags["mlflow.note.content"]
    first = text.splitlines()[0]
    assert first.startswith(f"## Study {experiment['name']}: best ratio {_tags(parent)['best.ratio']} (mAP@100 0."), first
    verdict = text.index("**Verdict.** ")
    header = next(line for line in text.splitlines() if line.startswith("multilingual mAP@100 ") and "best ratio" in line)
    assert verdict < text.index(header) < text.index("objective (i2t+t2t)")
    assert f"parent run `study-{experiment['name']}`" in text
    assert text.index("objective (i2t+t2t)") < text.index("How to read this study")
    assert "`multi/sinitic`" in text and "not the mean of the families" in text
    assert tags["mlflow.experimentKind"] == "custom_model_development"  # model training, not GenAI
