"""Fault injection: a trial and a study survive a dead worker, a dead driver and a failed trial.

* A worker dies mid-trial (2 DDP workers on Ray Train, gloo): the test kills rank 1 by its pid
  during epoch 2. Ray Train restarts the worker group from the epoch-1 checkpoint, the trial
  finishes, epoch 1 is not trained again, the composer continues its order, MLflow keeps one
  child run, and the final metrics equal those of an uninterrupted run with the same seed,
  exactly (CPU kernels and gloo's 2-rank all-reduce are deterministic), and agree with the same
  trial on 1 worker up to summation order (distributed equivalence).
* A trial restored after its last epoch reports that epoch again instead of nothing.
* A trial whose loss turns non-finite fails with the reason, in Ray Train and in MLflow.
* The driver dies mid-study: SIGTERM, then SIGKILL, each followed by ``--resume``; the last
  trial fails on purpose. See the scenario fixture below for what is checked. The study turns
  SIGTERM into Ctrl-C's SIGINT (``study.execute.fit_handling_signals``), so Ctrl-C takes the
  same path.

The worker kill runs the product's training loop under a test session
(:class:`tests.standins.MarkedWorker`, given to ``fit_trial`` as its per-worker function):
each worker records ``rank, epoch, pid`` at the start of an epoch, and waits while a
``hold.rank{R}.epoch{E}`` file exists, so the kill lands at a known point instead of racing
the training loop.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray

from trainables.config import TrialConfig
from trainables.metric_names import TARGET_METRIC, logged_name
from trainables.mlflow_layout import TAG_COMPLETED, TAG_EPOCHS_DONE, TAG_PARENT, TAG_REASON, TAG_ROLE, TAG_TRIAL_ID
from trainables.mlflow_store import client_for
from trainables.trial_run import TrackingInfo
from tests.standins import MarkedWorker, repo_env, standin_command

pytestmark = pytest.mark.slow

# Measurements that legitimately differ between two runs of the same trial.
TIMING_KEYS = ("train/epoch_time_s", "train/epoch_cpu_s", "train/samples_per_s", "eval/time_s")


def small_config(data_cache: str, **changes) -> TrialConfig:
    """The smallest useful trial: 2 epochs of 2 steps, evaluation after the last epoch only."""
    values = dict(
        ratio=0.5, batch_size=16, epochs=2, steps_per_epoch=2, synthetic_train_size=64,
        synthetic_test_size=20, data_cache=data_cache, warmup_steps=1, eval_k=10, eval_every=2,
    )
    return TrialConfig(**{**values, **changes})


def deterministic(metrics: dict) -> dict:
    """``metrics`` without the timing figures (and without the NaN holes of a metrics table)."""
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS and not (isinstance(v, float) and math.isnan(v))}


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fault_dir(tmp_path_factory) -> Path:
    """Where the workers' test session writes ``rank{R}.epoch{E}.pid{P}`` files."""
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="class")
def ray_local():
    """A 2-CPU local Ray (shut down before the study tests)."""
    import trainables.driver  # noqa: F401 - sets Ray Train's health-check interval before Ray starts

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite MLflow store with an experiment and a study parent run: (uri, experiment_id, parent_id)."""
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = client_for(uri)
    experiment_id = client.create_experiment("faults", artifact_location=(folder / "artifacts").as_uri())
    parent = client.create_run(experiment_id, run_name="study-faults").info.run_id
    return uri, experiment_id, parent


def tracking(store, trial_id: str) -> TrackingInfo:
    """Where trial ``trial_id`` logs."""
    uri, experiment_id, parent = store
    return TrackingInfo(uri, experiment_id, parent, trial_id, f"trial-{trial_id}")


def child_runs(store, trial_id: str) -> list:
    """Every MLflow run of ``trial_id`` under the parent run."""
    uri, experiment_id, parent = store
    return client_for(uri).search_runs(
        [experiment_id], filter_string=f"tags.`{TAG_TRIAL_ID}` = '{trial_id}' and tags.`{TAG_PARENT}` = '{parent}'"
    )


def epochs_started(fault_dir: Path) -> dict[int, set[tuple[int, int]]]:
    """{pid: {(rank, epoch), ...}} from the hook's files; the folder is emptied for the next run."""
    out: dict[int, set[tuple[int, int]]] = {}
    for path in fault_dir.iterdir():
        match = re.fullmatch(r"rank(\d+)\.epoch(\d+)\.pid(\d+)", path.name)
        if match:
            rank, epoch, pid = map(int, match.groups())
            out.setdefault(pid, set()).add((rank, epoch))
        path.unlink()
    return out


def wait_for(condition, what: str, timeout_s: float = 300.0, every_s: float = 0.1):
    """Poll ``condition()`` every ``every_s`` until it returns something truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out waiting for {what}")


def checkpoint_registered(run_dir: Path, name: str) -> bool:
    """Whether Ray Train's controller has registered checkpoint ``name`` (its state snapshot lists it)."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    return snapshot.is_file() and name in snapshot.read_text(errors="ignore")


class Killer(threading.Thread):
    """Kills the worker of ``rank`` by pid once it holds at the start of ``epoch``.

    It waits until the worker holds (its pid file exists) and until Ray Train has registered
    the previous epoch's checkpoint, then sends SIGKILL and removes the hold so the restarted
    group runs freely.
    """

    def __init__(self, fault_dir: Path, run_dir: Path, rank: int, epoch: int):
        super().__init__(daemon=True)
        self.fault_dir, self.run_dir, self.rank, self.epoch = fault_dir, run_dir, rank, epoch
        self.hold = fault_dir / f"hold.rank{rank}.epoch{epoch}"
        self.hold.touch()
        self.victim: int | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            pid_file = wait_for(lambda: next(self.fault_dir.glob(f"rank{self.rank}.epoch{self.epoch}.pid*"), None),
                                f"rank {self.rank} to start epoch {self.epoch}")
            wait_for(lambda: checkpoint_registered(self.run_dir, f"checkpoint_epoch_{self.epoch - 1:04d}"),
                     f"the checkpoint of epoch {self.epoch - 1}")
            self.victim = int(pid_file.name.rsplit("pid", 1)[1])
            os.kill(self.victim, signal.SIGKILL)
        except BaseException as err:  # noqa: BLE001 - reported by the test
            self.error = err
        finally:
            self.hold.unlink(missing_ok=True)


# ---------------------------------------------------------------------------
# 1. a worker dies mid-trial (and 3. a trial fails, as Ray Train sees it)
# ---------------------------------------------------------------------------
def report_recorder(path: Path):
    """A Ray Train callback that appends every report's metrics to ``path`` (JSON lines).

    Reports are what ``TuneReportCallback`` forwards to Tune: a trial that reports nothing
    leaves Tune without a result, whatever ``Result.metrics`` says.
    """
    from ray.train import UserCallback

    class RecordReports(UserCallback):  # defined here: pickled by value to Ray Train's controller
        def after_report(self, run_context, metrics, checkpoint):
            with open(path, "a", encoding="utf-8") as out:
                out.write(json.dumps(metrics[0]) + "\n")

    return RecordReports()


def recorded(path: Path) -> list[dict]:
    """The reports :func:`report_recorder` wrote (and forget them)."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.unlink()
    return rows


@pytest.mark.usefixtures("ray_local")
class TestTrialFaults:
    """Faults inside one trial, on a local Ray started for these tests only."""

    def test_a_killed_worker_restarts_from_the_last_checkpoint(self, fault_dir, store, data_cache, tmp_path):
        from trainables.driver import fit_trial
        from trainables.train import run_local

        config = small_config(data_cache, num_workers=2)
        reference = fit_trial(config, name="uninterrupted", storage_path=str(tmp_path))
        epochs_started(fault_dir)

        killer = Killer(fault_dir, tmp_path / "killed", rank=1, epoch=2)
        killer.start()
        result = fit_trial(config, name="killed", storage_path=str(tmp_path), tracking=tracking(store, "killed"),
                           max_failures=1, train_loop=MarkedWorker(str(fault_dir)))
        killer.join(timeout=60)
        assert killer.error is None and killer.victim is not None, killer.error
        started = epochs_started(fault_dir)

        # Ray Train restarted the group once: the first group started epochs 1 and 2 on both ranks
        # (rank 1 was killed in epoch 2); the second group started only epoch 2 (from the checkpoint).
        assert killer.victim in started and (1, 2) in started[killer.victim]
        first = {pid for pid, seen in started.items() if (0, 1) in seen or (1, 1) in seen}
        second = set(started) - first
        assert len(first) == 2 and len(second) == 2
        assert set().union(*(started[pid] for pid in second)) == {(0, 2), (1, 2)}

        # the trial finished, and every reported metric equals the uninterrupted run's, exactly
        assert result.metrics["epoch"] == 2.0 and math.isfinite(result.metrics["map10/multilingual"])
        assert deterministic(result.metrics) == deterministic(reference.metrics)
        history = [deterministic(row) for row in result.metrics_dataframe.to_dict("records")]
        expected = [deterministic(row) for row in reference.metrics_dataframe.to_dict("records")]
        assert [row["epoch"] for row in history] == [1.0, 2.0] and history == expected

        # distributed equivalence: the same trial on 1 worker without Ray draws the same batches and
        # gets the same numbers up to summation order (the 2-worker gradient sums in another order)
        single = [deterministic(row) for row in run_local(config.replace(num_workers=1))]
        for two, one in zip(expected, single):
            for key, value in one.items():
                if key.startswith("composition/") or key == "epoch":
                    assert two[key] == value, key
            assert two["train/loss"] == pytest.approx(one["train/loss"], rel=1e-4)
        assert expected[-1]["map10/multilingual"] == pytest.approx(single[-1]["map10/multilingual"], abs=1e-3)

        # one MLflow child run, finished, with each epoch logged once and no stale failure reason
        runs = child_runs(store, "killed")
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        assert TAG_REASON not in runs[0].data.tags
        client = client_for(store[0])
        losses = client.get_metric_history(runs[0].info.run_id, "train/loss")
        assert [m.value for m in losses] == [expected[0]["train/loss"], expected[1]["train/loss"]]
        assert len({m.step for m in losses}) == 2 and runs[0].data.tags.get(TAG_EPOCHS_DONE) == "2"

    def test_a_trial_restored_after_its_last_epoch_reports_it_again(self, fault_dir, store, data_cache, tmp_path):
        from trainables.driver import fit_trial

        config = small_config(data_cache, epochs=1, eval_every=1)
        log = tmp_path / "reports.jsonl"
        kwargs = dict(name="done", storage_path=str(tmp_path), tracking=tracking(store, "done"),
                      train_loop=MarkedWorker(str(fault_dir)))
        first = fit_trial(config, callbacks=[report_recorder(log)], **kwargs)
        assert [row["epoch"] for row in recorded(log)] == [1.0]
        epochs_started(fault_dir)
        # e.g. the study driver died after the trial's last checkpoint, before Tune recorded the end
        again = fit_trial(config, callbacks=[report_recorder(log)], **kwargs)
        assert epochs_started(fault_dir) == {}  # nothing trained again
        reports = recorded(log)
        assert len(reports) == 1 and deterministic(reports[0]) == deterministic(first.metrics)
        assert deterministic(again.metrics) == deterministic(first.metrics)
        runs = child_runs(store, "done")
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"

    # 3. a trial fails (in Ray Train; the study's side is in the scenario below)
    def test_a_non_finite_loss_fails_the_trial_with_its_reason(self, fault_dir, store, data_cache, tmp_path):
        from trainables.driver import TrialFailed, fit_trial

        config = small_config(data_cache, epochs=1, lr=1e30)  # the weights overflow in the first steps
        with pytest.raises(TrialFailed, match="NonFiniteLossError: non-finite training loss in epoch 1"):
            fit_trial(config, name="nan", storage_path=str(tmp_path), tracking=tracking(store, "nan"), max_failures=1,
                      train_loop=MarkedWorker(str(fault_dir)))
        # Ray Train retries every worker error (max_failures=1): the retry fails the same way,
        # and it re-attaches to the same MLflow run.
        assert len(epochs_started(fault_dir)) == 2
        runs = child_runs(store, "nan")
        assert len(runs) == 1 and runs[0].info.status == "FAILED"
        assert runs[0].data.tags[TAG_REASON].startswith("NonFiniteLossError: non-finite training loss in epoch 1")


# ---------------------------------------------------------------------------
# 2 and 3. the driver dies mid-study; a trial fails
# ---------------------------------------------------------------------------
STUDY = "crashy"
# Three 2-epoch trials, one at a time, of the stand-in trial on the real TorchTrainer (tests.standins):
# the study machinery (Tune, Optuna, MLflow, Ray Train's worker group) is real, the training is not.
STUDY_SPACE = """
search: {algorithm: optuna, num_samples: 3, n_startup_trials: 3}
fixed: {epochs: 2, synthetic_train_size: 64, synthetic_test_size: 20}
params:
  ratio: {type: uniform, low: 0.0, high: 1.0}
"""
STUDY_TIMEOUT_S = 400


def study_env() -> dict:
    """The environment of a study subprocess: offline, no inherited tracking URI or Ray address."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env.update({"RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1"})
    return repo_env(env)


def start_study(cwd: Path, log: Path, *args: str, fail_above: float | None = None, kind: str = "train",
                epoch_s: float = 1, hold_dir: str | None = None) -> subprocess.Popen:
    """A study of stand-in epochs (1 s each) on the real TorchTrainer (``kind`` "train") or without
    Ray Train ("direct"), in ``cwd``, as its own session (so its Ray cluster can be found)."""
    command = standin_command(kind, *args, epoch_s=epoch_s, fail_above=fail_above, hold_dir=hold_dir)
    return subprocess.Popen(command, cwd=cwd, env=study_env(), stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def completed_trials(cwd: Path) -> list[str]:
    """Trial ids MLflow marks completed (empty while the store is being created)."""
    db = cwd / "mlflow.db"
    if not db.exists():
        return []
    try:
        client = client_for(f"sqlite:///{db}")
        experiment = client.get_experiment_by_name(STUDY)
        if experiment is None:
            return []
        runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{TAG_COMPLETED}` = 'true'")
    except Exception:  # noqa: BLE001 - the study may be creating the database right now
        return []
    return sorted(r.data.tags[TAG_TRIAL_ID] for r in runs)


def wait_completed(proc: subprocess.Popen, cwd: Path, log: Path, count: int) -> list[str]:
    """Block until ``count`` trials are completed in MLflow; fail if the study exits first."""
    def ready():
        assert proc.poll() is None, log.read_text()[-3000:]
        done = completed_trials(cwd)
        return done if len(done) >= count else None

    # each look is an MLflow query (~10 ms of CPU): twice a second leaves the CPU to the study
    return wait_for(ready, f"{count} completed trial(s)", STUDY_TIMEOUT_S, every_s=0.5)


def still_running(proc: subprocess.Popen, log: Path) -> bool:
    """True while ``proc`` runs; a study that ended fails the test at once, with its output."""
    assert proc.poll() is None, log.read_text()[-3000:]
    return True


def tune_completed(log: Path) -> list[str]:
    """Trial ids whose completion Tune has processed (the study's "done" progress line), from a study's log."""
    return progress_lines(log.read_text(errors="replace"), "done")


def progress_lines(output: str, event: str) -> list[str]:
    """The trial ids of the study's progress lines for ``event`` (study.progress: ``[  3:05] done  r=0.5 · id``)."""
    return re.findall(rf"^\[[ \d:]+\] {event} .* · (\w+)", output, re.M)


def kill_session(proc: subprocess.Popen, grace_s: float = 3.0) -> list[str]:
    """SIGKILL the driver, then whatever is left of its session (its local Ray cluster), by pid.

    Like losing the driver's machine. Ray's own processes outlive a killed driver by up to ~20 s
    (measured here), idle; what is left after ``grace_s`` is killed, so the next study on this
    machine finds no Ray instance. Returns the command lines of what was killed.
    """
    proc.kill()
    proc.wait(timeout=60)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_sid(pid) == proc.pid for pid in _pids()):
        time.sleep(0.5)
    left = {pid: _cmdline(pid) for pid in _pids() if _sid(pid) == proc.pid}
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return list(left.values())


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return "?"


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _sid(pid: int) -> int:
    try:
        return os.getsid(pid)
    except OSError:
        return -1


def mlflow_state(cwd: Path, study: str = STUDY) -> dict:
    """The study's MLflow runs: parents (list) and children by trial id (lists, to expose duplicates)."""
    client = client_for(f"sqlite:///{cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(study)
    parents = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{TAG_ROLE}` = 'study'")
    children: dict[str, list] = {}
    for run in client.search_runs([experiment.experiment_id], filter_string=f"tags.`{TAG_ROLE}` = 'trial'"):
        children.setdefault(run.data.tags[TAG_TRIAL_ID], []).append(run)
    return {"client": client, "parents": parents, "children": children}


def epochs_logged_once_before(client, run, at: float) -> bool:
    """Whether ``run`` logged the target metric of epochs 1 and 2 once each, all before time ``at``."""
    history = client.get_metric_history(run.info.run_id, logged_name(TARGET_METRIC))
    steps = [m.step for m in history]
    return (len(steps) == 2 and steps[0] < steps[1] and run.data.tags.get(TAG_EPOCHS_DONE) == "2"
            and max(m.timestamp for m in history) / 1000 < at)


def optuna_trials(experiment_dir: Path) -> list:
    """The trials of the Optuna study inside the searcher Tune saved last."""
    from ray.tune.search.optuna import OptunaSearch

    from study.searchers import ResumeSafeOptuna

    searcher = ResumeSafeOptuna(OptunaSearch())
    searcher.restore_from_dir(str(experiment_dir))
    return searcher.inner._ot_study.trials  # noqa: SLF001 - the searcher's own Optuna history


def seeded_draws(seed: int, count: int) -> list[float]:
    """The ratios seeded TPE draws first (its random start-up phase): what an uninterrupted study samples."""
    import optuna
    from optuna.distributions import FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=count))
    return [study.ask({"ratio": FloatDistribution(0.0, 1.0)}).params["ratio"] for _ in range(count)]


@dataclass
class Scenario:
    """What the crashy study left behind at each stage."""

    cwd: Path
    sigterm_code: int
    sigterm_output: str
    after_sigterm: dict
    completed_before_sigterm: list
    sigterm_at: float
    completed_before_sigkill: list
    sigkill_at: float
    orphans: list
    final_code: int
    final_output: str
    resumed_outputs: str
    final: dict
    report: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> Scenario:
    """Run the crashy study: SIGTERM after trial 1, --resume, SIGKILL after trial 2, --resume to the end.

    SIGTERM comes once Tune has processed the first trial's end (its console line); SIGKILL
    comes as soon as MLflow marks the second trial completed, before Tune may have saved that.
    The last resume sets the stand-in trial's failure switch, so the third trial fails with a
    non-finite loss (a trial already trained is answered from MLflow and never reaches it).
    """
    cwd = tmp_path_factory.mktemp("crashy")
    (cwd / "space.yaml").write_text(STUDY_SPACE)
    new = ["--space", "space.yaml", "--name", STUDY, "--max-concurrent", "1", "--num-cpus", "2"]
    resume = ["--resume", "--name", STUDY]

    first = start_study(cwd, cwd / "a.log", *new)
    wait_for(lambda: still_running(first, cwd / "a.log") and tune_completed(cwd / "a.log"), "Tune to finish trial 1",
             STUDY_TIMEOUT_S)
    completed_a = completed_trials(cwd)
    sigterm_at = time.time()
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=STUDY_TIMEOUT_S)
    after_sigterm = mlflow_state(cwd)

    second = start_study(cwd, cwd / "b.log", *resume)
    completed_b = wait_completed(second, cwd, cwd / "b.log", 2)
    sigkill_at = time.time()
    orphans = kill_session(second)

    third = start_study(cwd, cwd / "c.log", *resume, fail_above=-1)
    third.wait(timeout=STUDY_TIMEOUT_S)
    report = subprocess.run([sys.executable, "-m", "study.report", "--experiment", STUDY], cwd=cwd,
                            env=study_env(), capture_output=True, text=True, timeout=STUDY_TIMEOUT_S)
    return Scenario(
        cwd=cwd, sigterm_code=first.returncode, sigterm_output=(cwd / "a.log").read_text(),
        after_sigterm=after_sigterm, completed_before_sigterm=completed_a, sigterm_at=sigterm_at,
        completed_before_sigkill=completed_b, sigkill_at=sigkill_at, orphans=orphans,
        final_code=third.returncode, final_output=(cwd / "c.log").read_text(),
        resumed_outputs=(cwd / "b.log").read_text() + (cwd / "c.log").read_text(),
        final=mlflow_state(cwd), report=report,
    )


def test_sigterm_stops_the_study_cleanly_and_prints_the_resume_command(scenario):
    assert scenario.sigterm_code == 130, scenario.sigterm_output[-3000:]
    assert "Resume with:" in scenario.sigterm_output
    assert f"python -m study.run --resume --name {STUDY} --storage-path" in scenario.sigterm_output
    state = scenario.after_sigterm
    assert len(state["parents"]) == 1 and state["parents"][0].info.status == "KILLED"
    assert all(run.info.status != "RUNNING" for runs in state["children"].values() for run in runs)


def test_after_sigterm_and_sigkill_the_study_reaches_the_requested_trials(scenario):
    assert scenario.final_code == 0, scenario.final_output[-3000:]
    assert "Trials of study crashy (3/3" in scenario.final_output and "incomplete" not in scenario.final_output
    state = scenario.final
    assert len(state["parents"]) == 1 and state["parents"][0].info.status == "FINISHED"
    children = state["children"]
    assert len(children) == 3 and all(len(runs) == 1 for runs in children.values())  # one run per trial
    parent_id = state["parents"][0].info.run_id
    assert all(runs[0].data.tags[TAG_PARENT] == parent_id for runs in children.values())
    statuses = sorted(runs[0].info.status for runs in children.values())
    assert statuses == ["FAILED", "FINISHED", "FINISHED"]  # none left RUNNING
    assert len(list((scenario.cwd / "ray_results" / STUDY).glob("trial_*"))) == 3


def test_finished_trials_are_not_trained_again(scenario):
    client, experiment = scenario.final["client"], scenario.cwd / "ray_results" / STUDY
    assert scenario.completed_before_sigterm and set(scenario.completed_before_sigterm) < set(scenario.completed_before_sigkill)
    for trial_id in scenario.completed_before_sigkill:
        killed_at = scenario.sigterm_at if trial_id in scenario.completed_before_sigterm else scenario.sigkill_at
        run = scenario.final["children"][trial_id][0]
        assert run.info.status == "FINISHED"
        assert epochs_logged_once_before(client, run, killed_at)
        # no trainer was built for it again: its Ray Train run folder was last written before the kill
        written = [p.stat().st_mtime for p in (experiment / "train_runs" / f"trial_{trial_id}").rglob("*")]
        assert written and max(written) < killed_at
    assert progress_lines(scenario.resumed_outputs, "started")  # the resumes' start lines, to look in
    for trial_id in scenario.completed_before_sigterm:  # Tune saved its end on SIGTERM: never started again
        assert trial_id not in progress_lines(scenario.resumed_outputs, "started")


def test_the_optuna_searcher_keeps_its_history(scenario):
    trials = optuna_trials(scenario.cwd / "ray_results" / STUDY)
    # the resumed searcher continued the seeded sequence: no ratio drawn twice, none lost
    assert sorted(t.params["ratio"] for t in trials) == sorted(seeded_draws(0, 3))
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "COMPLETE", "FAIL"]  # and it was told of the failure


def test_a_failed_trial_is_recorded_and_reported_with_its_reason(scenario):
    failed = [runs[0] for runs in scenario.final["children"].values() if runs[0].info.status == "FAILED"]
    assert len(failed) == 1
    trial_id = failed[0].data.tags[TAG_TRIAL_ID]
    assert "non-finite loss" in failed[0].data.tags[TAG_REASON]
    assert (scenario.cwd / "ray_results" / STUDY / f"trial_{trial_id}" / "error.txt").is_file()  # errored in Tune
    for output in (scenario.final_output, scenario.report.stdout):
        assert "Failed trials:" in output and f"{trial_id}: " in output and "non-finite loss" in output
    assert scenario.report.returncode == 0, scenario.report.stderr[-2000:]


# Raced seeds (study.race) on a grid: 2 seeds per ratio first, then one more to the less precise side,
# 5 trials in all, 2 at a time. The driver is killed after 2 completed trials, and --resume continues the race.
# The race lives in the study's driver (study.searchers.SeedSearcher): the trials are stand-ins without Ray
# Train (the scenario above kills a study whose trials run on it).
RACE_SPACE = """
search:
  algorithm: grid
  seeds: {min: 2, max: 3, target_halfwidth: 0.001, max_trials: 5}
fixed: {epochs: 2, synthetic_train_size: 64, synthetic_test_size: 20}
params:
  ratio: {type: grid, values: [0.0, 1.0]}
"""


def test_a_killed_raced_study_resumes_its_allocation(tmp_path):
    (tmp_path / "space.yaml").write_text(RACE_SPACE)
    first = start_study(tmp_path, tmp_path / "a.log", "--space", "space.yaml", "--name", STUDY,
                        "--max-concurrent", "2", "--num-cpus", "2", kind="direct")
    before = wait_completed(first, tmp_path, tmp_path / "a.log", 2)
    killed_at = time.time()
    kill_session(first)
    second = start_study(tmp_path, tmp_path / "b.log", "--resume", "--name", STUDY, kind="direct")
    second.wait(timeout=STUDY_TIMEOUT_S)
    output = (tmp_path / "b.log").read_text()
    assert second.returncode == 0, output[-3000:]
    race = json.loads((tmp_path / "study_results" / STUDY / "seed_race.json").read_text())
    assert race["stop_reason"] == "the budget of 5 trials is spent" and "Seeds: seeds per candidate" in output
    pairs = sorted((race["candidates"][t["cand"]]["ratio"], t["seed"]) for t in race["trials"].values())
    assert len(pairs) == 5 and len(set(pairs)) == 5  # no (ratio, seed) trained twice, none lost
    assert {(0.0, 0), (0.0, 1), (1.0, 0), (1.0, 1)} <= set(pairs)  # every ratio's first min seeds
    assert set(before) <= set(race["trials"])  # the race kept the trials that ended before the kill
    state = mlflow_state(tmp_path)
    assert len(state["children"]) == 5 and all(len(runs) == 1 for runs in state["children"].values())
    assert all(runs[0].info.status == "FINISHED" for runs in state["children"].values())  # none left RUNNING
    for trial_id in before:  # not trained again after the kill
        assert epochs_logged_once_before(state["client"], state["children"][trial_id][0], killed_at)
