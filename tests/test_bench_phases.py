"""The per-phase split of a trial's fixed cost (``python -m benchmarks.study_overhead --phases``).

The split is checked on made-up events of a 2-trial study (no Ray); the timers on a function of
this process; the whole benchmark only with ``MLCLIP_BENCH_STUDY=1`` (it starts a real study).
"""

from __future__ import annotations

import math
import os
import time

import pytest


class LinearCpu:
    """A stand-in for the study's CPU samples: 2 CPU-seconds per second, every process a 'driver'."""

    def between(self, t0: float, t1: float) -> float:
        return 2.0 * (t1 - t0)

    def by_role(self, t0: float, t1: float) -> dict:
        return {"driver": 2.0 * (t1 - t0)}


def _trial(name: str, pid: int, t: float) -> list[dict]:
    """One trial's events from ``t``: open 1 s, fit, worker loop 4..24 (train 10, eval 4, data 1), close 1 s."""
    def ev(phase, t0, wall, cpu, p=pid + 1, trial=name):
        return {"trial": trial, "phase": phase, "t0": t0, "t1": t0 + wall, "wall": wall, "cpu": cpu, "pid": p}

    return [
        ev("MLflow (Tune function)", t, 1.0, 0.8, p=pid, trial=""),
        ev("fit start", t + 1, 0.0, 2.0, p=pid),
        ev("worker loop start", t + 4, 0.0, 2.5),
        ev("data and tokenizer", t + 5, 1.0, 0.9),
        ev("training", t + 6, 10.0, 9.0),
        ev("evaluation", t + 17, 4.0, 3.5),
        ev("worker loop end", t + 24, 0.0, 18.0),
        ev("fit end", t + 26, 0.0, 3.0, p=pid),
        ev("MLflow (Tune function)", t + 26, 1.0, 0.1, p=pid, trial=""),
    ]


def test_the_phases_of_a_made_up_study():
    from benchmarks.study_overhead import split_phases

    events = _trial("trial_a", 10, 100.0) + _trial("trial_b", 20, 130.0)  # trial_a closes at 127
    first, second = split_phases(sorted(events, key=lambda e: e["t0"]), LinearCpu())
    assert math.isnan(first["Tune scheduling"]["wall"])
    assert second["Tune scheduling"]["wall"] == pytest.approx(3.0)  # 127 -> 130
    assert second["Tune scheduling"]["cpu_all"] == pytest.approx(6.0)
    assert second["MLflow (Tune function)"]["wall"] == pytest.approx(2.0)  # its open and its close only
    assert second["MLflow (Tune function)"]["cpu"] == pytest.approx(0.9)
    start = second["Train controller + worker start"]
    assert start["wall"] == pytest.approx(3.0) and start["cpu"] == pytest.approx(2.5)  # worker's CPU to its loop
    assert second["teardown"]["wall"] == pytest.approx(2.0)
    assert second["data and tokenizer"]["wall"] == pytest.approx(1.0)
    assert second["other (worker)"]["wall"] == pytest.approx(20.0 - 1.0 - 10.0 - 4.0)
    assert second["other (worker)"]["cpu"] == pytest.approx(15.5 - 0.9 - 9.0 - 3.5)
    # the trial from the previous close (127) to its own (157), less training and evaluation
    assert second["fixed"]["wall"] == pytest.approx(30.0 - 14.0)
    assert second["fixed"]["cpu_all"] == pytest.approx(60.0 - 12.5)
    assert first["fixed"]["wall"] == pytest.approx(27.0 - 14.0)  # from its own first MLflow call


def test_the_timers_leave_imports_out_of_the_phase_they_ran_in(tmp_path, monkeypatch):
    import builtins
    import sys

    from benchmarks import _phases

    monkeypatch.setattr(builtins, "__import__", builtins.__import__)  # restored after the test
    recorder = _phases.Recorder(str(tmp_path), "t")
    recorder.time_imports()
    module = tmp_path / "slow_module_for_phase_test.py"
    module.write_text("import time\ntime.sleep(0.2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def work():
        import slow_module_for_phase_test  # noqa: F401
        time.sleep(0.1)

    recorder.timed("work", work)()
    sys.modules.pop("slow_module_for_phase_test", None)
    events = {e["phase"]: e for e in _phases.read_events(tmp_path)}
    assert events["imports"]["module"] == "slow_module_for_phase_test"
    assert events["imports"]["wall"] >= 0.2
    assert 0.1 <= events["work"]["wall"] < 0.2
    assert events["work"]["pid"] == os.getpid()


def test_the_study_cpu_counts_a_child_process():
    import subprocess
    import sys

    from benchmarks._phases import TreeCpu

    tree = TreeCpu(os.getpid(), interval_s=0.05).start()
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                              "while time.process_time() - t < 0.5: pass\ntime.sleep(0.3)"])
    child.wait()
    tree.stop()
    assert tree.samples[-1][1] - tree.samples[0][1] >= 0.3  # the child's CPU, seen before it ended


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MLCLIP_BENCH_STUDY") != "1",
                    reason="starts Ray and a real study (about a minute); set MLCLIP_BENCH_STUDY=1 to run")
def test_study_overhead_phases_tiny(tmp_path):
    from benchmarks import study_overhead

    out = study_overhead.main(["--phases", "--tiny", "--json", str(tmp_path / "phases.json")])
    second = out["trials"][1]
    assert second["fixed"]["wall"] > second["Train controller + worker start"]["wall"] > 0
    assert second["imports (worker)"]["cpu"] > 0
