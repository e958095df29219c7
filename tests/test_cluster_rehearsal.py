"""The cluster steps of docs/real_scale.md ("Running on a cluster"), rehearsed on one machine with real parts.

- A Ray head started as the docs say: a token from ``ray get-auth-token --generate``,
  ``RAY_AUTH_MODE=token``, and the driver resource; in its own ``HOME``, so the token is this test's.
- A real ``mlflow server`` on 127.0.0.1, and a local S3-compatible server (moto's server mode),
  which the head reaches through ``AWS_ENDPOINT_URL`` as a cluster reaches S3.
- Two smoke studies submitted at once with ``ray job submit --working-dir .``, ``--address auto`` and
  HTTP tracking: study A keeps its state in a local folder, study B in ``s3://``.

Mid-study the tracking server is stopped for 60 s and started again (issue 19's fault), and B's
driver is SIGKILLed and resumed through the same S3 storage by a second job. Both studies must
finish with one MLflow child run per trial and nothing left RUNNING. Every process started here
is stopped by PID, and the head by ``ray stop``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from study.cluster import DRIVER_RESOURCE, DRIVER_SLOTS
from tests.test_fault_injection import study_env, wait_for
from tests.test_mlflow_ui import stop_group
from trainables.metric_names import TARGET_METRIC, logged_name
from trainables.mlflow_layout import ANSWER_MD, PER_QUERY_FILE, SUMMARY_ARTIFACT_DIR, TAG_EPOCHS_DONE, TAG_ROLE, TAG_TRIAL_ID
from trainables.mlflow_store import client_for

pytestmark = [pytest.mark.slow, pytest.mark.fault]  # a real fault (the tracking server down): run apart, in CI

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's ray and mlflow commands
BUCKET = "studies"
OUTAGE_S = 60
JOB_TIMEOUT_S = 420


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, what: str, timeout_s: float = 90.0) -> None:
    def up():
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            return False

    wait_for(up, what, timeout_s)


@dataclass
class Cluster:
    """The rehearsal's parts: the environment every command of it runs with, and the servers."""

    env: dict
    home: Path
    tracking_uri: str
    mlflow_port: int
    mlflow_args: list
    mlflow: subprocess.Popen
    logs: Path
    job_server: str

    def run(self, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
        """A documented command (``ray ...``) in the checkout, with the rehearsal's environment; ``ray job``
        commands reach the job server through ``RAY_ADDRESS``, as the docs export it after ``ray start``."""
        env = {**self.env, "RAY_ADDRESS": self.job_server} if args[:2] == ("ray", "job") else self.env
        return subprocess.run([str(BIN / args[0]), *args[1:]], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=timeout_s)

    def start_mlflow(self) -> None:
        # Without MLflow's job runners (7 processes for its GenAI jobs, which tracking does not use):
        # each start of the server then costs about half the CPU.
        env = {**self.env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.mlflow = subprocess.Popen(self.mlflow_args, env=env, stdout=(self.logs / "mlflow.log").open("a"),
                                       stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(f"{self.tracking_uri}/health", "the MLflow server")

    def stop_mlflow(self) -> None:
        stop_group(self.mlflow)

    def submit(self, job_id: str, *study_args: str) -> None:
        """``ray job submit --no-wait --working-dir .`` of ``python -m study.run STUDY_ARGS``."""
        command = ("ray", "job", "submit", "--no-wait", "--submission-id", job_id, "--working-dir", ".", "--",
                   "python", "-m", "study.run", *study_args, "--address", "auto")
        deadline = time.monotonic() + 180
        done = self.run(*command)
        # Just after `ray start` the head's job agent may not have registered yet (on a busy machine, for a
        # minute or more); Ray says to try again.
        while done.returncode != 0 and "No available agent" in done.stderr and time.monotonic() < deadline:
            time.sleep(2)
            done = self.run(*command)
        assert done.returncode == 0, done.stdout + done.stderr

    def job(self, job_id: str) -> dict:
        """The job server's record of a job (its REST API, with the token: polling with the CLI would cost
        a Ray import per look)."""
        return self._get(f"/api/jobs/{job_id}")

    def _get(self, path: str) -> dict:
        """A GET of the job server's REST API, with the token."""
        token = (self.home / ".ray" / "auth_token").read_text().strip()
        request = urllib.request.Request(f"{self.job_server}{path}", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def job_logs(self, job_id: str) -> str:
        """What the job printed (what ``ray job logs`` prints, from the same REST API: the CLI costs a Ray
        import per call)."""
        return self._get(f"/api/jobs/{job_id}/logs")["logs"]

    def wait_job(self, job_id: str) -> str:
        """The job's final status, after it ends."""
        def ended():
            status = self.job(job_id)["status"]
            return status if status in ("SUCCEEDED", "FAILED", "STOPPED") else None

        return wait_for(lambda: _slowly(ended), f"job {job_id} to end", JOB_TIMEOUT_S)


def _slowly(condition):
    """``condition()``, then a second's pause when it is not met yet (each look costs CPU the studies need)."""
    value = condition()
    if not value:
        time.sleep(1.0)
    return value


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A token-authenticated Ray head, an MLflow server and an S3 server; all stopped afterwards."""
    root = tmp_path_factory.mktemp("rehearsal")
    home, logs = root / "home", root / "logs"
    home.mkdir()
    logs.mkdir()
    mlflow_port, s3_port, gcs_port, dashboard_port = (free_port() for _ in range(4))
    env = study_env()
    env.update({
        "HOME": str(home),  # the token file lives in ~/.ray: this rehearsal's own
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # `python` in the job's entrypoint: this venv
        "RAY_AUTH_MODE": "token",
        # The head reaches S3 as on a cluster, here the local server:
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}", "AWS_ACCESS_KEY_ID": "rehearsal",
        "AWS_SECRET_ACCESS_KEY": "rehearsal", "AWS_DEFAULT_REGION": "us-east-1",
    })
    s3 = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)], env=env,
                          stdout=(logs / "s3.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    mlflow_args = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
                   "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                   "--artifacts-destination", str(root / "artifacts")]
    parts = Cluster(env, home, f"http://127.0.0.1:{mlflow_port}", mlflow_port, mlflow_args, None, logs,
                    f"http://127.0.0.1:{dashboard_port}")
    head_started = False
    try:
        token = parts.run("ray", "get-auth-token", "--generate")
        assert token.returncode == 0 and (home / ".ray" / "auth_token").is_file(), token.stderr
        parts.start_mlflow()
        head = parts.run("ray", "start", "--head", "--num-cpus", "2", "--port", str(gcs_port),
                         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
                         f"--resources={json.dumps({DRIVER_RESOURCE: DRIVER_SLOTS})}", timeout_s=180)
        head_started = True
        assert head.returncode == 0, head.stdout + head.stderr
        wait_http(f"http://127.0.0.1:{s3_port}/", "the S3 server")
        subprocess.run([sys.executable, "-c", f"import boto3; boto3.client('s3').create_bucket(Bucket={BUCKET!r})"],
                       env=env, check=True, timeout=60)
        yield parts
    finally:
        if head_started:
            parts.run("ray", "stop", "--force", timeout_s=120)
            # gone before the next module's local study looks for a Ray instance on this machine
            wait_for(lambda: not ray_processes(), "the head's processes to exit", 60, every_s=0.5)
        parts.stop_mlflow() if parts.mlflow is not None else None
        stop_group(s3)


def ray_processes() -> list[int]:
    """Pids of this machine's Ray head processes (GCS server, raylet) still running."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() in ("gcs_server", "raylet"):
                found.append(int(pid))
        except OSError:
            pass
    return found


def _runs(client, experiment_name: str) -> tuple[list, list]:
    """(parent runs, child runs) of a study on the server; empty while it has none."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return [], []
    runs = client.search_runs([experiment.experiment_id])
    return ([r for r in runs if r.data.tags.get(TAG_ROLE) == "study"],
            [r for r in runs if r.data.tags.get(TAG_ROLE) == "trial"])


@dataclass
class Rehearsal:
    cluster: Cluster
    statuses: dict
    logs: dict
    killed_pid: int
    outage: tuple


@pytest.fixture(scope="module")
def rehearsal(cluster, data_cache, tmp_path_factory) -> Rehearsal:
    """Two studies at once; the tracking server down 60 s mid-study; study B's driver killed and resumed."""
    storage = tmp_path_factory.mktemp("storage_a")
    common = ["--space", "smoke", "--tracking-uri", cluster.tracking_uri, "--set", f"data_cache={data_cache}"]
    b_storage = f"s3://{BUCKET}/mlclip-study"
    cluster.submit("study-a", "--name", "rehearsal-a", "--storage-path", str(storage), *common)
    cluster.submit("study-b", "--name", "rehearsal-b", "--storage-path", b_storage, *common)
    client = client_for(cluster.tracking_uri)

    def both_training():
        running = [cluster.job(job)["status"] for job in ("study-a", "study-b")]
        assert all(s in ("RUNNING", "PENDING") for s in running), [cluster.job_logs(j)[-3000:] for j in ("study-a", "study-b")]
        return all(_runs(client, name)[1] for name in ("rehearsal-a", "rehearsal-b"))

    wait_for(lambda: _slowly(both_training), "both studies to start a trial", JOB_TIMEOUT_S)
    down_at = time.monotonic()
    cluster.stop_mlflow()
    killed = (cluster.job("study-b").get("driver_info") or {}).get("pid")
    if killed:
        os.kill(int(killed), signal.SIGKILL)  # like losing B's driver; its job ends FAILED
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
    cluster.start_mlflow()
    outage = (down_at, time.monotonic())
    cluster.wait_job("study-b")
    cluster.submit("study-b-resumed", "--resume", "--name", "rehearsal-b", "--storage-path", b_storage)
    statuses = {job: cluster.wait_job(job) for job in ("study-a", "study-b", "study-b-resumed")}
    logs = {job: cluster.job_logs(job) for job in statuses}
    for job, text in logs.items():  # kept beside the servers' logs, for a failure's post-mortem
        (cluster.logs / f"{job}.log").write_text(text)
    return Rehearsal(cluster, statuses, logs, killed, outage)


def test_the_documented_submit_works_with_ray_token_authentication(rehearsal):
    """The job server refuses a submit without the token; the documented one (RAY_AUTH_MODE=token) succeeds."""
    assert rehearsal.statuses["study-a"] == "SUCCEEDED", rehearsal.logs["study-a"][-4000:]
    env = {k: v for k, v in rehearsal.cluster.env.items() if k != "RAY_AUTH_MODE"}
    refused = subprocess.run([str(BIN / "ray"), "job", "list"], cwd=REPO, env={**env, "RAY_ADDRESS": rehearsal.cluster.job_server},
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "token" in (refused.stdout + refused.stderr).lower()


def test_each_study_finishes_on_the_server_with_one_child_run_per_trial(rehearsal):
    client = client_for(rehearsal.cluster.tracking_uri)
    assert rehearsal.statuses["study-b-resumed"] == "SUCCEEDED", rehearsal.logs["study-b-resumed"][-4000:]
    for name in ("rehearsal-a", "rehearsal-b"):
        parents, children = _runs(client, name)
        assert len(parents) == 1 and parents[0].info.status == "FINISHED", name
        trial_ids = [run.data.tags[TAG_TRIAL_ID] for run in children]
        assert len(trial_ids) == 2 and len(set(trial_ids)) == 2, (name, trial_ids)
        assert all(run.info.status == "FINISHED" for run in children), (name, [r.info.status for r in children])
        for run in children:  # metrics and artifacts arrived, through the outage too
            steps = [m.step for m in client.get_metric_history(run.info.run_id, logged_name(TARGET_METRIC))]
            assert len(steps) == 1 and run.data.tags.get(TAG_EPOCHS_DONE) == "1", (name, steps)  # the smoke space's one epoch
            assert PER_QUERY_FILE in {a.path for a in client.list_artifacts(run.info.run_id)}, name
        summary = {a.path for a in client.list_artifacts(parents[0].info.run_id, SUMMARY_ARTIFACT_DIR)}
        assert f"{SUMMARY_ARTIFACT_DIR}/{ANSWER_MD}" in summary, (name, summary)


def test_the_killed_study_resumed_through_its_s3_storage(rehearsal):
    """B's driver died mid-study (its job FAILED); the resumed job found B's state in S3 and finished it."""
    assert rehearsal.killed_pid, "study B's driver was not found to kill"
    assert rehearsal.statuses["study-b"] == "FAILED", rehearsal.logs["study-b"][-3000:]
    assert "Resume" not in rehearsal.logs["study-b"]  # killed, not stopped: it never got to say anything
    listing = subprocess.run(
        [sys.executable, "-c", "import pyarrow.fs as f; fs, p = f.FileSystem.from_uri('s3://studies/mlclip-study/rehearsal-b');"
         "print('\\n'.join(i.base_name for i in fs.get_file_info(f.FileSelector(p))))"],
        env=rehearsal.cluster.env, capture_output=True, text=True, timeout=60)
    assert "study.json" in listing.stdout.split(), listing.stdout + listing.stderr


def test_a_path_that_ray_deletes_after_the_job_is_named(rehearsal):
    """Study A keeps its state in a lasting folder but its outputs in the default, inside the job's copy
    of the working directory: the plan says so, naming the flag; the state folder is not named."""
    log = rehearsal.logs["study-a"]
    assert "warning:  output folder " in log and "pass --output-dir with a lasting path" in log, log[:3000]
    assert log.count("is inside this Ray job's copy of its working directory") == 1


def test_the_printed_mlflow_link_is_the_servers_own_page(rehearsal):
    log = rehearsal.logs["study-a"]
    base = rehearsal.cluster.tracking_uri
    assert f"MLflow UI: {base}/#/experiments/" in log, log[-2000:]
    assert "parent run: " + base in log and "mlflow ui --backend-store-uri" not in log


def test_the_job_log_holds_no_noise_the_study_can_silence(rehearsal):
    """Ray Train's preemption watcher (its "constructor arguments in the object store" error line) is off,
    and MLflow's "View run ... at" line per ended run is suppressed: the study prints its own links."""
    for job in ("study-a", "study-b-resumed"):
        assert "PreemptionWatcher" not in rehearsal.logs[job]
        assert "View run" not in rehearsal.logs[job] and "View experiment" not in rehearsal.logs[job]
