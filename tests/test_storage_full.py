"""A disk that fills mid-study: the storage path, and the data cache, on a small tmpfs the test fills.

* The storage path: a study of one stand-in trial (:mod:`tests.standins`: the real Tune, Optuna,
  MLflow and Ray Train, fake epochs, real per-epoch checkpoints) with its storage path on a
  5 MiB tmpfs and its MLflow store and outputs on the ordinary disk, so that only the storage
  fills. The trial holds before epoch 2 (a hold file); once Ray Train has registered its epoch-1
  checkpoint and Tune has saved its state with the trial in it, a filler file takes every free
  byte and the hold goes: the epoch-2 checkpoint cannot be written. Checked: the study stops with
  exit code 1 and one ``error:`` line naming the storage path, its free space and the resume
  command, and no traceback; every state file left is whole (JSON and pickles parse to their end,
  checkpoints load, no temporary file, Tune can restore); the trial was not failed for it (its
  run KILLED, Optuna never told FAIL). Then the filler goes and ``--resume`` completes the study:
  one parent run, one child run for the trial, FINISHED, its epochs logged once each.
  (``--max-failures 0``: Ray Train's retry of the worker group would only meet the same disk.)
* The data cache: a cache without room for the synthetic data set is refused before Ray starts
  (one line, exit 2), and accepted once space is freed; a cache that fills inside a trial fails
  it with one line naming the cache (in a study, the trial then asks the study to stop, as for a
  full storage path: :mod:`study.stop`), and the trial runs once space is freed.

Mounting a tmpfs needs root (CI runs as root); elsewhere these tests skip and say why.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickletools
import re
import shutil
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from study.state import StudyState
from tests.test_fault_injection import (
    STUDY_SPACE,
    STUDY_TIMEOUT_S,
    checkpoint_registered,
    kill_session,
    mlflow_state,
    optuna_trials,
    start_study,
    still_running,
    wait_for,
)
from tests.test_study_cli import _fails
from trainables.errors import OutOfSpace, TrialFailed, is_out_of_space, named_out_of_space, one_line
from trainables.metric_names import LOSS_METRIC, logged_name
from trainables.mlflow_layout import TAG_EPOCHS_DONE

STUDY = "full"


# ---------------------------------------------------------------------------
# a small tmpfs, and filling it
# ---------------------------------------------------------------------------
@contextmanager
def small_tmpfs(folder: Path, size: str = "5m") -> Iterator[Path]:
    """``folder`` as the mount point of a new tmpfs of ``size``; skips the test (saying why) where
    a tmpfs cannot be mounted. Unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip(f"mounting a tmpfs needs root; this process runs as uid {os.geteuid()}")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        pytest.skip(f"cannot mount a tmpfs on {folder}: {err}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs on {folder}: {done.stderr.strip() or f'mount exited {done.returncode}'}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)  # a straggler still holds a file


def fill(folder: Path) -> Path:
    """Take every free byte of ``folder``'s file system with one file, which is returned (delete it
    to free the space)."""
    filler = folder / "filler"
    _grow(filler)
    assert shutil.disk_usage(folder).free == 0
    return filler


def _grow(filler: Path) -> None:
    """Append to ``filler`` until its file system is full."""
    with open(filler, "ab", buffering=0) as out:
        for chunk in (1 << 20, 4096, 1):
            try:
                while out.write(b"\0" * chunk):
                    pass
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise


@contextmanager
def kept_full(folder: Path) -> Iterator[Path]:
    """:func:`fill`, and keep the disk full until the block ends: a writer that gives up removes its
    temporary file, and the space it frees is taken again at once (else the next writer could use it)."""
    filler, done = fill(folder), threading.Event()

    def top_up() -> None:
        while not done.wait(0.01):
            if shutil.disk_usage(folder).free:
                _grow(filler)

    thread = threading.Thread(target=top_up, daemon=True)
    thread.start()
    try:
        yield filler
    finally:
        done.set()
        thread.join()


# ---------------------------------------------------------------------------
# the storage path fills mid-study
# ---------------------------------------------------------------------------
@dataclass
class FullStorage:
    """What the study left at each stage (see the module docstring)."""

    cwd: Path
    storage: Path
    stopped_code: int
    stopped_output: str
    stopped_files: dict  # path relative to the study folder -> its bytes, right after the stop
    can_restore: bool
    after_stop: dict  # mlflow_state after the stop
    filled_during: list  # the trial running (held before epoch 2) when the storage filled
    final_code: int
    final_output: str
    final: dict  # mlflow_state at the end
    optuna: list  # the searcher's Optuna trials at the end
    seconds: tuple  # (filled after, stopped after, resumed in)
    epochs_started: tuple  # {epoch: times it started} after the stop, and at the end


def _checkpointed_and_saved(experiment: Path, count: int) -> list[str]:
    """The ids of the trials whose epoch-1 checkpoint Ray Train registered and which Tune's saved
    experiment state holds, once there are ``count`` of them; [] before."""
    states = [p.read_text(errors="ignore") for p in experiment.glob("experiment_state-*.json")]
    ready = [run_dir.name[len("trial_"):] for run_dir in experiment.glob("train_runs/trial_*")
             if checkpoint_registered(run_dir, "checkpoint_epoch_0001")]
    ready = [trial_id for trial_id in ready if any(trial_id in text for text in states)]
    return sorted(ready) if len(ready) >= count else []


def _epochs_started(folder: Path) -> dict[int, int]:
    """{epoch: how often a stand-in started it}, from the ``ran.epoch{E}`` files in ``folder``."""
    return {int(p.name[len("ran.epoch"):]): len(p.read_text().splitlines()) for p in folder.glob("ran.epoch*")}


@contextmanager
def _ended(proc: subprocess.Popen) -> Iterator[None]:
    """Run the block; a study still running after it (the test failed or timed out) is killed, with
    what is left of its Ray cluster."""
    try:
        yield
    finally:
        if proc.poll() is None:
            kill_session(proc)


@pytest.fixture(scope="module")
def full_storage(tmp_path_factory) -> FullStorage:
    """Run the study, fill its storage while the trial holds before epoch 2, then free it and resume."""
    cwd = tmp_path_factory.mktemp("full_storage")
    (cwd / "space.yaml").write_text(STUDY_SPACE)  # 2-epoch stand-in trials; one of them (--num-samples)
    hold = cwd / "hold.epoch2"  # every stand-in epoch 2 waits while it exists (tests.standins.Behaviour)
    hold.touch()
    with small_tmpfs(cwd / "storage") as storage:
        common = ["--name", STUDY, "--storage-path", str(storage)]
        started = time.monotonic()
        first = start_study(cwd, cwd / "a.log", "--space", "space.yaml", *common, "--num-samples", "1",
                            "--num-cpus", "2", "--max-failures", "0", epoch_s=0.2,
                            hold_dir=str(cwd))  # no Ray Train retry: it would meet the same full disk, seconds later
        with _ended(first):
            trials = wait_for(lambda: still_running(first, cwd / "a.log") and _checkpointed_and_saved(storage / STUDY, 1),
                              "the trial's epoch-1 checkpoint in Tune's saved state", STUDY_TIMEOUT_S)
            with kept_full(storage) as filler:
                filled_s = time.monotonic() - started
                hold.unlink()  # epoch 2 runs, and its checkpoint meets the full disk
                first.wait(timeout=STUDY_TIMEOUT_S)
        stopped_s = time.monotonic() - started
        ran_before = _epochs_started(cwd)
        files = {str(p.relative_to(storage / STUDY)): p.read_bytes() for p in (storage / STUDY).rglob("*") if p.is_file()}
        from ray import tune

        can_restore = tune.Tuner.can_restore(str(storage / STUDY))
        after_stop = mlflow_state(cwd, STUDY)

        filler.unlink()
        started = time.monotonic()
        second = start_study(cwd, cwd / "b.log", "--resume", *common, epoch_s=0.2, hold_dir=str(cwd))  # no hold left
        with _ended(second):
            second.wait(timeout=STUDY_TIMEOUT_S)
        resumed_s = time.monotonic() - started
        ran_after = _epochs_started(cwd)
        optuna = optuna_trials(storage / STUDY)
        return FullStorage(
            cwd=cwd, storage=storage, stopped_code=first.returncode, stopped_output=(cwd / "a.log").read_text(),
            stopped_files=files, can_restore=can_restore, after_stop=after_stop, filled_during=trials,
            final_code=second.returncode, final_output=(cwd / "b.log").read_text(), final=mlflow_state(cwd, STUDY),
            optuna=optuna, seconds=(filled_s, stopped_s, resumed_s), epochs_started=(ran_before, ran_after),
        )


@pytest.mark.slow
@pytest.mark.fault
def test_a_full_storage_path_stops_the_study_with_one_line(full_storage):
    output = full_storage.stopped_output
    assert full_storage.stopped_code == 1, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output[-3000:]
    storage = re.escape(str(full_storage.storage))
    assert re.fullmatch(rf"error: storage path {storage} is full \(\d+(\.\d)? (B|KiB|MiB) free\): .+; free space, "
                        rf"then resume with: python -m study\.run --resume --name {STUDY} --storage-path {storage}",
                        errors[0]), errors[0]
    assert "Traceback" not in output, output[-3000:]


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.fault
def test_a_full_storage_path_corrupts_no_state(full_storage):
    files = full_storage.stopped_files
    assert not [name for name in files if ".tmp-" in name]  # no write left half done under a private name
    assert StudyState.from_json(files["study.json"].decode()).name == STUDY
    import torch

    for name, data in files.items():
        if data.startswith(b"\x80"):  # Tune's pickles (search_gen_state-*.json is one)
            try:
                pickletools.dis(data, out=io.StringIO())  # reads the opcodes to the end (runs nothing): raises if cut short
            except ValueError as err:
                raise AssertionError(f"{name}: {err}") from err
        elif name.endswith(".pkl"):  # the searchers' state: JSON around a pickle (study.searchers)
            assert _parses(data.decode(errors="replace")), f"{name} is neither a pickle nor whole JSON: {data[:80]!r}"
        elif name.endswith(".json"):  # Tune's experiment state, results (JSON lines), Ray Train's snapshot
            text = data.decode(errors="replace")
            if name.endswith("result.json"):  # one JSON object a line; none before the trial's first result
                assert all(map(_parses, text.splitlines())), f"{name} is not whole JSON lines: {data[:80]!r}"
            else:
                assert _parses(text), f"{name} is not whole JSON: {data[:80]!r}"
        elif name.endswith(".pt"):  # every checkpoint there is whole
            with (full_storage.cwd / "ckpt.pt").open("wb") as out:
                out.write(data)
            assert torch.load(full_storage.cwd / "ckpt.pt", weights_only=True)["epoch"] == 1, name
    assert any(name.endswith("checkpoint_manager_snapshot.json") for name in files)
    assert any(name.startswith("experiment_state-") for name in files)
    assert full_storage.can_restore


@pytest.mark.slow
@pytest.mark.fault
def test_no_trial_is_failed_for_a_full_storage_path(full_storage):
    state = full_storage.after_stop
    assert len(state["parents"]) == 1 and state["parents"][0].info.status == "KILLED"
    statuses = {trial_id: [run.info.status for run in runs] for trial_id, runs in state["children"].items()}
    assert statuses == {trial_id: ["KILLED"] for trial_id in full_storage.filled_during}  # interrupted, not FAILED
    assert [t.state.name for t in full_storage.optuna] == ["COMPLETE"]  # never told FAIL


@pytest.mark.slow
@pytest.mark.fault
def test_after_freeing_space_resume_completes_with_one_run_per_trial(full_storage):
    output = full_storage.final_output
    assert full_storage.final_code == 0, output[-3000:]
    assert f"Trials of study {STUDY} (1/1" in output and "incomplete" not in output
    state = full_storage.final
    assert len(state["parents"]) == 1 and state["parents"][0].info.status == "FINISHED"
    children = state["children"]
    assert len(children) == 1 and all(len(runs) == 1 for runs in children.values()), children
    assert all(runs[0].info.status == "FINISHED" for runs in children.values())  # none left RUNNING
    # the trial continued from its last registered checkpoint, in its own run: epoch 1 never ran again;
    # epoch 2 ran again unless its checkpoint was registered before the disk filled (kept full by the
    # test, it almost never is); each epoch is logged once
    assert sorted(children) == full_storage.filled_during
    snapshot = next(data for name, data in full_storage.stopped_files.items() if name.endswith("_snapshot.json"))
    epoch_2_kept = b"checkpoint_epoch_0002" in snapshot
    assert full_storage.epochs_started == ({1: 1, 2: 1}, {1: 1, 2: 1 if epoch_2_kept else 2})
    for runs in children.values():
        history = state["client"].get_metric_history(runs[0].info.run_id, logged_name(LOSS_METRIC))
        steps = sorted(m.step for m in history)  # training steps: one per epoch
        assert len(steps) == 2 and steps[0] < steps[1] and runs[0].data.tags[TAG_EPOCHS_DONE] == "2", steps
    print("storage-full study: filled after {:.1f} s, stopped after {:.1f} s, resumed in {:.1f} s".format(*full_storage.seconds))


# ---------------------------------------------------------------------------
# the data cache fills
# ---------------------------------------------------------------------------
def tiny_trial(cache: Path):
    """A trial of one step on 64 + 20 synthetic images, its data cache in ``cache``."""
    from trainables.config import TrialConfig

    return TrialConfig(ratio=0.5, batch_size=16, epochs=1, steps_per_epoch=1, synthetic_train_size=64,
                       synthetic_test_size=20, data_cache=str(cache), warmup_steps=1, eval_k=10, eval_every=1)


def test_a_data_cache_without_room_is_refused_before_ray_starts(here, capsys):
    with small_tmpfs(here / "cache") as cache:
        filler = fill(cache)
        argv = ["--space", "smoke", "--set", f"data_cache={cache}", "--dry-run"]
        err = _fails(capsys, argv, f"data_cache {cache} has too little room (0 B free): the synthetic data set "
                                   "of this study needs at least ")
        assert "a new study can also take another folder: --set data_cache=DIR; a resume keeps its own" in err
        assert os.listdir(cache) == ["filler"]  # nothing written
        filler.unlink()
        from study import run as study_run

        assert study_run.main(argv) == 0, capsys.readouterr().err  # the same study is accepted once space is freed


def test_a_data_cache_that_fills_inside_a_trial_is_named_on_one_line(tmp_path):
    from trainables.data.synthetic import synthetic_cache_dir
    from trainables.train import run_local

    with small_tmpfs(tmp_path / "cache") as cache:
        filler = fill(cache)
        config = tiny_trial(cache)
        with pytest.raises(OutOfSpace) as caught:
            run_local(config)
        assert str(caught.value) == f"data_cache {cache} is full (0 B free): OSError: [Errno 28] No space left on device"
        assert os.listdir(cache) == ["filler"]  # no half-written cache entry
        filler.unlink()
        assert [r["epoch"] for r in run_local(config)] == [1.0]  # the trial runs once space is freed
        assert (synthetic_cache_dir(config) / "train.npz").is_file()


def test_the_cache_floor_is_below_what_the_synthetic_data_takes(tmp_path):
    from trainables.data.synthetic import cache_bytes_floor, load_synthetic, synthetic_cache_dir

    for image_size in (16, 32):
        config = tiny_trial(tmp_path / f"cache{image_size}")
        config = type(config).from_dict({**config.to_dict(), "image_size": image_size})
        floor = cache_bytes_floor(config)
        load_synthetic(config)
        written = sum(p.stat().st_size for p in synthetic_cache_dir(config).rglob("*") if p.is_file())
        assert 0 < floor <= written, (image_size, floor, written)
        assert cache_bytes_floor(config) == 0  # cached: nothing more to write


# ---------------------------------------------------------------------------
# the pieces
# ---------------------------------------------------------------------------
def test_whole_files_keep_the_last_whole_file_when_the_disk_fills(tmp_path):
    import pyarrow.fs

    from trainables.storage_fs import storage_filesystem

    source = tmp_path / "source"
    source.mkdir()
    (source / "state.json").write_text(json.dumps({"trials": list(range(20000))}))
    with small_tmpfs(tmp_path / "storage", size="1m") as storage:
        fs = storage_filesystem(str(storage))
        with fs.open_output_stream(str(storage / "state.json")) as out:
            out.write(b'{"trials": [1]}')
        filler = fill(storage)
        with pytest.raises(OSError) as caught:  # the copy Tune makes of its state, into a full disk
            pyarrow.fs.copy_files(str(source), str(storage), destination_filesystem=fs)
        assert is_out_of_space(caught.value)
        assert (storage / "state.json").read_text() == '{"trials": [1]}'  # the last whole file stays
        assert sorted(os.listdir(storage)) == ["filler", "state.json"]  # no temporary file left
        filler.unlink()
        pyarrow.fs.copy_files(str(source), str(storage), destination_filesystem=fs)
        assert (storage / "state.json").read_text() == (source / "state.json").read_text()


def test_a_stop_request_after_the_watchs_last_look_still_stops_the_study(monkeypatch):
    """A trial that asks after the driver's watch looked for the last time (Tune returned meanwhile)
    is not lost: the study still ends as stopped, with that reason."""
    from study import stop

    asked: list = []

    class Mailbox:
        class first:  # noqa: N801 - the actor method's name
            @staticmethod
            def remote():
                return "ref"

    def get_actor(name):
        if not asked:
            raise ValueError(f"no actor {name}")
        return Mailbox

    monkeypatch.setattr(stop.ray, "get_actor", get_actor)
    monkeypatch.setattr(stop.ray, "get", lambda ref, timeout=None: asked[0])
    monkeypatch.setattr(stop.ray, "is_initialized", lambda: True)
    with stop.StopWatch("/storage") as watch:
        asked.append("storage path /storage is full (0 B free)")  # the watch first looks after a second
    assert watch.reason == "storage path /storage is full (0 B free)"


def test_a_study_whose_first_state_file_did_not_fit_is_not_offered_a_resume(tmp_path, capsys):
    """A new study whose disk refused its very first study.json has nothing to resume: the line says
    to run the command again, not --resume (which would answer "nothing to resume")."""
    from study.execute import stop_on_full_disk
    from study.state import StudyState, save_state

    state = StudyState(name="new", storage_path=str(tmp_path), space={}, base_config={}, objectives=[], num_samples=1,
                       num_trials=1, max_concurrent=1, workers_per_trial=1, cpus_per_worker=1, gpus_per_worker=0,
                       scheduler="fifo", seed=0, max_failures=0, tracking_uri="", output_dir=str(tmp_path))
    reason = f"storage path {tmp_path} is full (0 B free)"
    assert stop_on_full_disk(None, state, reason, None) == 1
    assert capsys.readouterr().err.strip() == (f"error: {reason}; free space, then run the same command again "
                                               "(nothing was saved to resume)")
    save_state(state)
    stop_on_full_disk(None, state, reason, None)
    assert "then resume with: python -m study.run --resume --name new" in capsys.readouterr().err


def test_a_storage_path_under_the_home_folder_is_written_there(monkeypatch, tmp_path):
    """Ray expands "~" only for the file systems it picks itself; with the whole-files one the trial
    driver does it (else a library caller's "~/runs" became a folder named "~" in the working directory)."""
    from trainables.config import TrialConfig
    from trainables.driver import build_trainer

    monkeypatch.setenv("HOME", str(tmp_path))
    trainer = build_trainer(TrialConfig(), name="t", storage_path="~/runs")
    assert trainer.run_config.storage_path == str(tmp_path / "runs")


def test_a_torn_copy_of_a_state_file_never_replaces_the_last_whole_one(tmp_path):
    """Tune rewrites its experiment state in its staging folder while a background copy of the last
    version may read it: the copy can be empty or cut (on a full disk only an empty one fits, as a
    fresh-clone run of test_a_full_storage_path_corrupts_no_state found). The store keeps the last
    whole file; a whole one replaces it as before."""
    import pickle

    import pyarrow.fs

    from trainables.storage_fs import storage_filesystem

    storage, source = tmp_path / "storage", tmp_path / "staging"
    storage.mkdir(), source.mkdir()
    fs = storage_filesystem(str(storage))
    whole = {"experiment_state-1.json": b'{"trial_data": [1]}', "search_gen_state-1.json": pickle.dumps({"a": [1] * 50}),
             "searcher-state.pkl": b'{"race": {}}', "result.json": b'{"epoch": 1}\n', "state.pt": b"weights"}
    torn = {"experiment_state-1.json": b"", "search_gen_state-1.json": whole["search_gen_state-1.json"][:-4],
            "searcher-state.pkl": b'{"race": ', "result.json": b'{"epoch": 1}\n{"epo', "state.pt": b""}
    for files, expected in ((whole, whole), (torn, {**whole, "state.pt": b""})):
        for name, data in files.items():
            (source / name).write_bytes(data)
        pyarrow.fs.copy_files(str(source), str(storage), destination_filesystem=fs)
        assert {p.name: p.read_bytes() for p in storage.iterdir()} == expected  # and no temporary file left
    (source / "result.json").write_bytes(b'{"epoch": 1}\n{"epoch": 2}\n')  # whole again: it goes through
    pyarrow.fs.copy_files(str(source), str(storage), destination_filesystem=fs)
    assert (storage / "result.json").read_bytes() == b'{"epoch": 1}\n{"epoch": 2}\n'


def test_a_full_disk_is_found_inside_ray_trains_errors():
    from ray.train import ControllerError, WorkerGroupError

    line = "data_cache /c is full (0 B free): OSError: [Errno 28] No space left on device"
    try:
        try:
            raise WorkerGroupError("worker 0 failed", {0: OutOfSpace(line)})
        except WorkerGroupError as inner:
            raise TrialFailed("WorkerGroupError: ...") from inner
    except TrialFailed as err:
        assert is_out_of_space(err) and named_out_of_space(err) == line
    controller = ControllerError(OSError(errno.ENOSPC, "No space left on device"))
    assert is_out_of_space(controller) and named_out_of_space(controller) is None  # the trial names the storage
    assert is_out_of_space(RuntimeError("OSError: [Errno 28] Error writing bytes to file. Detail: [errno 28] No space"))
    assert not is_out_of_space(TrialFailed("NonFiniteLossError: non-finite training loss in epoch 1"))


# ---------------------------------------------------------------------------
# the Tune function's side, without Ray: which full disk stops the study
# ---------------------------------------------------------------------------
class _Store:
    """An MLflow client whose writes all fail as SQLite's do on a full disk (``full``), else succeed."""

    def __init__(self, full: bool):
        self.full, self.ended = full, []

    def set_tag(self, run_id, key, value):
        if self.full:
            raise RuntimeError("(sqlite3.OperationalError) database or disk is full")

    def set_terminated(self, run_id, status=None, end_time=None):
        if self.full:
            raise RuntimeError("(sqlite3.OperationalError) database or disk is full")
        self.ended.append(status)


def _run_trial(monkeypatch, storage: Path, error: BaseException, store: _Store) -> list[str]:
    """Run ``study.trial.run_trial`` on a fit that raises ``error``, with ``store`` as its MLflow
    client; return the reasons it asked the study to stop with."""
    import types

    import study.trial as trial
    from trainables.config import TrialConfig

    asked = []
    run = types.SimpleNamespace(info=types.SimpleNamespace(run_id="run-1"), data=types.SimpleNamespace(tags={}))
    monkeypatch.setattr(trial.ray.tune, "get_context", lambda: types.SimpleNamespace(get_trial_id=lambda: "t1"))
    monkeypatch.setattr(trial, "client_for", lambda uri: store)
    monkeypatch.setattr(trial, "open_trial_run", lambda client, info, config: run)
    monkeypatch.setattr(trial, "ask_study_to_stop", asked.append)
    monkeypatch.setattr(trial, "OrderedTuneReportCallback", lambda *args: None)  # needs a Tune session

    def fit(*args, **kwargs):
        raise error

    ctx = trial.TrialContext(study_name="s", base_config=TrialConfig().to_dict(), fit=fit, train_storage=str(storage),
                             tracking_uri="sqlite:////nowhere/mlflow.db", experiment_id="1", parent_run_id="p",
                             storage_path=str(storage))
    with pytest.raises(type(error)) as raised:
        trial.run_trial({"ratio": 0.5}, ctx)
    assert raised.value is error  # the trial's own error reaches Tune, not the store's
    return asked


def test_a_trial_whose_mlflow_store_is_full_still_asks_the_study_to_stop(monkeypatch, tmp_path):
    # the default layout: the MLflow store beside the storage path, on the disk that filled
    line = "MLflow store /nowhere/mlflow.db is full (0 B free): OSError: [Errno 28] No space left on device"
    store = _Store(full=True)
    assert _run_trial(monkeypatch, tmp_path, OutOfSpace(line), store) == [line]  # the run could not be ended: asked anyway


def test_a_full_disk_elsewhere_fails_the_trial_instead_of_stopping_the_study(monkeypatch, tmp_path):
    import collections

    import trainables.errors as errors

    shm = RuntimeError("unable to allocate shared memory(shm) for file </torch_1_2>: No space left on device (28)")
    usage = collections.namedtuple("usage", "total used free")
    roomy, full = usage(100 << 30, 50 << 30, 50 << 30), usage(100 << 30, (100 << 30) - 4096, 4096)
    monkeypatch.setattr(errors.shutil, "disk_usage", lambda path: roomy)  # the storage path has room
    store = _Store(full=False)
    assert _run_trial(monkeypatch, tmp_path, shm, store) == []  # not the study's disk: no stop
    assert store.ended == ["FAILED"]  # the trial fails with its reason, as any error
    monkeypatch.setattr(errors.shutil, "disk_usage", lambda path: full)  # the same error, the storage path full
    store = _Store(full=False)
    asked = _run_trial(monkeypatch, tmp_path, shm, store)
    assert asked == [f"storage path {tmp_path} is full (4.0 KiB free): RuntimeError: {one_line(str(shm))}"]
    assert store.ended[0] == "KILLED"


def test_a_spent_disk_quota_is_a_full_disk():
    assert is_out_of_space(OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)))
    assert is_out_of_space(RuntimeError("IOError: [errno 122] Disk quota exceeded"))
