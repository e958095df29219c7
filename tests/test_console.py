"""The console's UI hints and its quiet process exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from study.console import mlflow_ui_command, mlflow_ui_url


def test_the_ui_command_holds_on_two_cores_and_names_the_runs_page():
    command = mlflow_ui_command("sqlite:////x/mlflow.db")
    assert "--workers 1" in command and "--host 127.0.0.1" in command and "\n" not in command
    with_page = mlflow_ui_command("sqlite:////x/mlflow.db", "7")
    assert with_page.startswith(command) and mlflow_ui_url("7") in with_page
    assert mlflow_ui_url("7") == ("http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
                                  "&searchFilter=metrics.ratio%20%3E%3D%200&orderByKey=metrics.%60ratio%60&orderByAsc=true")


@pytest.mark.parametrize("uri", ["sqlite:////x/mlflow.db", "file:///x/mlruns"])
def test_a_store_without_a_server_gets_the_command_that_serves_it(uri):
    shown = mlflow_ui_command(uri, "7", "abc")
    assert shown.startswith(f"mlflow ui --backend-store-uri {uri} ") and mlflow_ui_url("7") in shown
    assert shown.endswith("\n  parent run: http://127.0.0.1:5000/#/experiments/7/runs/abc?workflowType=machine_learning")


@pytest.mark.parametrize("uri", ["http://10.0.0.5:5000", "https://mlflow.example.org/tracking/"])
def test_a_tracking_server_gets_its_own_pages_not_a_second_ui(uri):
    base = uri.rstrip("/")
    shown = mlflow_ui_command(uri, "7", "abc")
    assert "mlflow ui" not in shown and "127.0.0.1:5000" not in shown
    assert shown.splitlines() == [mlflow_ui_url("7", base),
                                  f"  parent run: {base}/#/experiments/7/runs/abc?workflowType=machine_learning"]


EXITING = textwrap.dedent("""
    import atexit, sys
    from study.console import exit_quietly
    atexit.register(lambda: open(sys.argv[1], "w").write("ran"))
    print("last words", end="")
    sys.stderr.write("warning kept")
    exit_quietly(3)
    print("never")
""")


def test_a_quiet_exit_runs_the_exit_handlers_flushes_and_keeps_the_code(tmp_path):
    marker = tmp_path / "atexit.txt"
    done = subprocess.run([sys.executable, "-c", EXITING, str(marker)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3
    assert done.stdout == "last words" and done.stderr == "warning kept"
    assert marker.read_text() == "ran"


def test_progress_lines_name_trials_as_their_runs_and_count_states(capsys):
    from types import SimpleNamespace

    from study.progress import StudyProgress

    def trial(tid, status, **config):
        return SimpleNamespace(trial_id=tid, status=status, config={"seed": 1, **config}, last_result={})

    a, b = trial("aaaa0001", "PENDING", ratio=0.5488135), trial("bbbb0002", "RUNNING", ratio=1.0)
    b.last_result = {"map100/multilingual": 0.1234, "multi": 0.1234, "bias/multilingual": 40.25,
                     "map100/multilingual/family/germanic": 0.2}
    progress = StudyProgress("map100/multilingual", planned=12, verbose=1)
    progress.on_trial_start(0, [a, b], a)  # Tune calls before it marks the trial RUNNING
    a.status = "RUNNING"
    progress.on_trial_result(0, [a, b], a, {"epoch": 1.0, "train/loss": 3.0})  # no evaluation: no line
    progress.on_trial_result(0, [a, b], a, {"epoch": 2.0, "map100/multilingual": 0.05, "eval/images": 150.0})
    progress.on_trial_complete(0, [a, b], b)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert "started" in lines[0] and "r=0.549 s=1 · aaaa0001" in lines[0] and "(2 running of 12)" in lines[0]
    assert "epoch 2" in lines[1] and "multi 0.050  (150 test images)" in lines[1]
    assert "done" in lines[2] and "r=1 s=1 · bbbb0002" in lines[2] and "multi 0.123  bias 40.2" in lines[2]
    assert "(1 running, 1 done of 12)" in lines[2]
    assert "germanic" not in lines[2]
    assert "germanic 0.200" in StudyProgress("multi", verbose=2).values_text(b.last_result)
    assert StudyProgress("multi", planned=30, at_most=True).counts_text([b]) == "1 running of at most 30"
    StudyProgress("multi", verbose=0).on_trial_complete(0, [b], b)
    assert capsys.readouterr().out == ""
