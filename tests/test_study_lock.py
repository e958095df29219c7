"""One driver per study, one local Ray cluster per machine (issue 12, items 1 and 2).

* The lock itself, without Ray: a held lock refuses with the holder's pid, host and start
  time; a lock left by a SIGKILLed process is taken over with one line; a lease on an
  object store (here pyarrow's local file system standing in for S3) refuses while live,
  is taken over once expired or once its process is gone from this host, and of two
  contenders exactly one wins.
* The study, with Ray (the ``smoke`` space and the stand-in trial without Ray Train): while
  a study runs, a ``--resume`` of it and a second local study are refused at once, creating
  nothing; after its driver is SIGKILLed mid-trial (its lock file left behind), two
  ``--resume`` started together give exactly one driver that proceeds, taking the dead
  driver's lock over with one line, and MLflow ends with one child run per trial.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from study.lock import LOCK_FILE, Held, Lease, LockError, hold_study, holder_record, study_holder
from study.storage import experiment_exists
from tests.standins import repo_env, standin_command
from tests.test_fault_injection import kill_session
from trainables.mlflow_layout import TAG_PARENT, TAG_ROLE, TAG_TRIAL_ID
from trainables.mlflow_store import client_for

HOST = socket.gethostname()
HOLD = ("import sys, time\nfrom study.lock import hold_study\n"
        "with hold_study(sys.argv[1], 's'):\n    print('held', flush=True)\n    time.sleep(120)\n")


def _holder(storage: Path) -> subprocess.Popen:
    """A process holding study ``s`` in ``storage`` (started here, killed by the test by its pid)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(storage)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


# ---------------------------------------------------------------------------
# the lock, without Ray
# ---------------------------------------------------------------------------
def test_a_held_study_lock_refuses_with_the_holder(tmp_path):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(LockError) as err:
            with hold_study(str(tmp_path), "s"):
                pass
        message = str(err.value)
        assert message.startswith(f"study 's' is being run by process {holder.pid} on {HOST} since "), message
        assert "\n" not in message and str(tmp_path / "s" / LOCK_FILE) in message
        assert study_holder(str(tmp_path), "s")["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_process_is_taken_over_with_one_line(tmp_path):
    holder = _holder(tmp_path)
    holder.send_signal(signal.SIGKILL)  # no clean-up: its record stays in the lock file
    holder.wait()
    assert json.loads((tmp_path / "s" / LOCK_FILE).read_text())["pid"] == holder.pid
    assert study_holder(str(tmp_path), "s") is None  # the kernel dropped its flock
    said = []
    with hold_study(str(tmp_path), "s", say=said.append):
        assert study_holder(str(tmp_path), "s")["pid"] == os.getpid()
    assert len(said) == 1
    assert said[0].startswith(f"note: taking over the lock of study 's' left by process {holder.pid} on {HOST} since ")
    assert said[0].endswith("which is no longer running")
    assert not (tmp_path / "s" / LOCK_FILE).exists()  # a clean end leaves no record behind


def test_a_clean_release_leaves_a_study_folder_as_it_was(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "study.json").write_text("{}")
    with hold_study(str(tmp_path), "s"):
        assert (tmp_path / "s" / LOCK_FILE).is_file()
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["study.json"]


def test_a_lock_file_alone_is_not_a_study(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / LOCK_FILE).write_text("{}")
    assert not experiment_exists(str(tmp_path), "s")
    (tmp_path / "s" / "study.json").write_text("{}")
    assert experiment_exists(str(tmp_path), "s")


def _lease(path: Path, **kwargs) -> Lease:
    import pyarrow.fs

    return Lease(pyarrow.fs.LocalFileSystem(), str(path), holder_record(study="s"), **kwargs)


def test_a_lease_refuses_while_live_and_is_taken_over_once_expired(tmp_path):
    first = _lease(tmp_path / "lease", ttl_s=1.0, settle_s=0.05)
    first.acquire()
    try:
        with pytest.raises(Held) as err:
            _lease(tmp_path / "lease", settle_s=0.05).acquire()
        assert err.value.record["token"] == first.record["token"]
    finally:
        first._stop.set()  # noqa: SLF001 - stop renewing without deleting: the lease now lapses
    time.sleep(1.2)
    second = _lease(tmp_path / "lease", settle_s=0.05)
    assert second.acquire()["token"] == first.record["token"]  # the lapsed lease it took over
    second.release()
    assert not (tmp_path / "lease").exists()


def test_a_lease_of_a_process_gone_from_this_host_is_taken_over_at_once(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = {**holder_record(study="s"), "pid": int(dead.stdout), "expires": time.time() + 3600}
    (tmp_path / "lease").write_text(json.dumps(record))
    lease = _lease(tmp_path / "lease", settle_s=0.05)
    assert lease.acquire()["pid"] == int(dead.stdout)
    lease.release()


def test_of_two_contending_leases_exactly_one_wins(tmp_path):
    leases = [_lease(tmp_path / "lease", settle_s=0.3) for _ in range(2)]
    outcome: dict = {}

    def contend(i):
        try:
            leases[i].acquire()
            outcome[i] = "won"
        except Held:
            outcome[i] = "refused"

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcome.values()) == ["refused", "won"]
    for i, result in outcome.items():
        if result == "won":
            leases[i].release()


def test_a_study_on_object_storage_is_held_by_a_lease(tmp_path, monkeypatch):
    """``s3://`` storage (pyarrow's local file system standing in for the bucket): the second holder is refused."""
    import pyarrow.fs

    import study.lock

    monkeypatch.setattr(study.lock, "LEASE_SETTLE_S", 0.05)
    monkeypatch.setattr(study.lock, "filesystem",
                        lambda uri: (pyarrow.fs.LocalFileSystem(), str(tmp_path / uri.split("://")[1])))
    with hold_study("s3://bucket/studies", "s"):
        lease = tmp_path / "bucket" / "studies" / "s" / ".study.lease"
        assert json.loads(lease.read_text())["pid"] == os.getpid()
        assert study_holder("s3://bucket/studies", "s")["pid"] == os.getpid()
        record = {**json.loads(lease.read_text()), "token": "other", "pid": 1}  # as if another host held it
        lease.write_text(json.dumps(record))
        assert study_holder("s3://bucket/studies", "s")["token"] == "other"
        with pytest.raises(LockError, match=r"^study 's' is being run by process 1 on "):
            with hold_study("s3://bucket/studies", "s"):
                pass


# ---------------------------------------------------------------------------
# studies, with Ray
# ---------------------------------------------------------------------------
STUDY = "locked"
TIMEOUT_S = 300


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env.update({"RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1"})
    return repo_env(env)


def _start(cwd: Path, log: str, *args: str, epoch_s: float) -> subprocess.Popen:
    """A study of stand-in trials (``epoch_s`` seconds an epoch) in its own session, so its local Ray
    processes can be found by sid."""
    return subprocess.Popen(standin_command("direct", *args, epoch_s=epoch_s), cwd=cwd, env=_env(),
                            stdout=(cwd / log).open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(condition, what: str, timeout_s: float = TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Scenario:
    """What the runs left: exit codes, outputs, and the MLflow runs at the end."""

    cwd: Path
    first_pid: int
    refused_resume: subprocess.CompletedProcess
    refused_local: subprocess.CompletedProcess
    left_lock: dict  # the record the killed driver left in its lock file
    resumes: list  # [(pid, exit code, output)]
    parents: list
    children: list
    num_trials: int


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> Scenario:
    """Study A runs (slow stand-in trials); meanwhile a --resume of A and a new local study are
    refused; A's driver is SIGKILLed; then two --resume of A start at the same moment."""
    from study.cluster import LOCAL_CLUSTER_LOCK, running_ray_instances
    from study.lock import peek_file

    busy = running_ray_instances() or peek_file(Path(tempfile.gettempdir()) / LOCAL_CLUSTER_LOCK)
    if busy:  # the machine's one local cluster is taken (a study of someone else on a shared machine)
        pytest.skip(f"another Ray instance or study runs on this machine ({busy}); these tests start local clusters")
    cwd = tmp_path_factory.mktemp("lock")
    new = ["--space", "smoke", "--name", STUDY, "--epochs", "4", "--num-cpus", "2"]
    first = _start(cwd, "a.log", *new, epoch_s=4)
    try:
        _wait_for(lambda: "  parent:" in (cwd / "a.log").read_text() or first.poll() is not None, "study A to start")
        assert first.poll() is None, (cwd / "a.log").read_text()[-3000:]
        others = [subprocess.Popen(command, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                  for command in (standin_command("direct", "--resume", "--name", STUDY),
                                  [sys.executable, "-m", "study.run", "--space", "smoke", "--name", "second"])]
        refused = [subprocess.CompletedProcess(p.args, p.wait(timeout=TIMEOUT_S), *p.communicate()) for p in others]
        assert first.poll() is None, "study A ended before the refusals were checked: make its trials slower"
    finally:
        kill_session(first)  # the driver, as if its machine died; then what is left of its session
    left_lock = json.loads((cwd / "ray_results" / STUDY / LOCK_FILE).read_text())
    resumes = [_start(cwd, f"r{i}.log", "--resume", "--name", STUDY, epoch_s=0.1) for i in range(2)]
    for proc in resumes:
        proc.wait(timeout=TIMEOUT_S)
    outputs = refused[1].stderr + "".join((cwd / f"r{i}.log").read_text() for i in range(2))
    foreign = [line for line in outputs.splitlines() if "a Ray instance already runs on this machine" in line
               or ("runs a local Ray cluster on this machine" in line and f"('{STUDY}'," not in line)]
    if foreign:  # on a shared machine another study took the one local cluster meanwhile: not this test's subject
        pytest.skip(f"another process took this machine's local Ray cluster during the test: {foreign[0][:200]}")
    client = client_for(f"sqlite:///{cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(STUDY)
    parents = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{TAG_ROLE}` = 'study'")
    children = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{TAG_ROLE}` = 'trial'")
    return Scenario(
        cwd=cwd, first_pid=first.pid, refused_resume=refused[0], refused_local=refused[1], left_lock=left_lock,
        resumes=[(p.pid, p.returncode, (cwd / f"r{i}.log").read_text()) for i, p in enumerate(resumes)],
        parents=parents, children=children, num_trials=2,
    )


def _the_one_error_line(done) -> str:
    """A refused command: exit 2, exactly one stderr line, no traceback; returns that line."""
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stdout + done.stderr
    return lines[0]


@pytest.mark.slow
def test_a_resume_of_a_running_study_is_refused_at_once(scenario):
    line = _the_one_error_line(scenario.refused_resume)
    assert line.startswith(f"error: study '{STUDY}' is being run by process {scenario.first_pid} on {HOST} since ")


@pytest.mark.slow
def test_a_second_local_study_is_refused_naming_address(scenario):
    line = _the_one_error_line(scenario.refused_local)
    assert line.startswith(f"error: another study ('{STUDY}', process {scenario.first_pid} on {HOST} since ")
    assert "runs a local Ray cluster on this machine" in line and "--address auto" in line
    assert not (scenario.cwd / "ray_results" / "second").exists()  # nothing created for the refused study
    client = client_for(f"sqlite:///{scenario.cwd / 'mlflow.db'}")
    assert client.get_experiment_by_name("second") is None


@pytest.mark.slow
def test_of_two_concurrent_resumes_exactly_one_proceeds(scenario):
    assert scenario.left_lock["pid"] == scenario.first_pid
    codes = sorted(code for _, code, _ in scenario.resumes)
    assert codes == [0, 2], [out[-2000:] for _, _, out in scenario.resumes]
    (winner, _, won), = [r for r in scenario.resumes if r[1] == 0]
    (_, _, lost), = [r for r in scenario.resumes if r[1] == 2]
    error_lines = [line for line in lost.splitlines() if line.startswith("error: ")]
    assert error_lines == [line for line in lost.splitlines() if line.strip() and not line.startswith("note: ")]
    assert error_lines[0].startswith(f"error: study '{STUDY}' is being run by process {winner} on {HOST} since ")
    assert f"Trials of study {STUDY} ({scenario.num_trials}/{scenario.num_trials}" in won
    takeover = [line for line in won.splitlines() if line.startswith("note: taking over the lock")]
    assert len(takeover) == 1 and f"left by process {scenario.first_pid} on {HOST}" in takeover[0]


@pytest.mark.slow
def test_mlflow_holds_one_child_run_per_trial(scenario):
    assert len(scenario.parents) == 1 and scenario.parents[0].info.status == "FINISHED"
    parent = scenario.parents[0].info.run_id
    trial_ids = [c.data.tags[TAG_TRIAL_ID] for c in scenario.children]
    assert all(c.data.tags[TAG_PARENT] == parent for c in scenario.children)
    assert len(trial_ids) == scenario.num_trials and len(set(trial_ids)) == scenario.num_trials
    assert all(c.info.status == "FINISHED" for c in scenario.children)
    assert not (scenario.cwd / "ray_results" / STUDY / LOCK_FILE).exists()  # released by the winner
