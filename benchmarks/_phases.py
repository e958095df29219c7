"""Where a trial's fixed cost goes, phase by phase: instruments a real study from the outside.

A study subprocess runs ``python -m benchmarks._phases --phase-log DIR STUDY-ARGS...``: the
product's ``study.run.main`` with :class:`PhaseFit` as its ``fit`` (the product's own
``trainables.driver.fit_trial`` with :class:`PhaseLoop` as the per-worker function, which calls
the product's ``trainables.train.train_worker``). Nothing in the product changes; the timers
wrap the product's functions by name in each process (the Tune function's process as the
fit is unpickled, the worker as its loop starts) and append one JSON line per timed call to
``DIR/<pid>.jsonl``: ``{"trial", "phase", "t0", "t1", "wall", "cpu", "pid"}``, with ``t0``/``t1``
epoch seconds (comparable across processes), ``wall`` and ``cpu`` seconds
(``time.process_time`` of that process). Imports get their own phase: the time of every
outermost ``import`` statement is recorded as ``imports`` and left out of the phase it ran in.

:class:`TreeCpu` samples the CPU seconds (utime + stime from ``/proc``) of every process of the
study (the ``study.run`` process and all its descendants: Ray's GCS, raylet, the Tune function,
the Train controller, the workers), so the phases that span processes (scheduling, worker
start, teardown) get a CPU figure too: the study's CPU during the phase's window.
"""

from __future__ import annotations

import builtins
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

# Phases the worker's loop times (module, attribute, phase), wrapped where the product looks them up.
WORKER_PHASES = (
    ("trainables.train", "load_datasets", "data and tokenizer"),
    ("trainables.model", "make_tokenizer", "data and tokenizer"),
    ("trainables.train", "train_set", "data and tokenizer"),
    ("trainables.model", "build_model", "model build"),
    ("trainables.train", "make_composer", "composer and optimiser"),
    ("trainables.train", "build_optimizer", "composer and optimiser"),
    ("trainables.train", "train_one_epoch", "training"),
    ("trainables.train", "evaluate", "evaluation"),
    ("trainables.train", "checkpoint_state", "checkpoints"),
    ("trainables.session", "save_checkpoint", "checkpoints"),
)
# TrialRun methods (rank 0's MLflow child run), timed as "MLflow (worker)".
TRIAL_RUN_METHODS = ("__init__", "log_epoch", "log_per_query", "finish")
# The Tune function's MLflow calls (looked up in study.trial at call time).
TUNE_FUNCTION_PHASES = (
    ("study.trial", "client_for", "MLflow (Tune function)"),
    ("study.trial", "open_trial_run", "MLflow (Tune function)"),
    ("study.trial", "mark_trial_completed", "MLflow (Tune function)"),
)


class Recorder:
    """Appends timed calls of this process to ``folder/<pid>.jsonl`` (see the module docstring)."""

    def __init__(self, folder: str, trial: str) -> None:
        self.path = Path(folder) / f"{os.getpid()}.jsonl"
        self.trial = trial
        self._depth = 0  # nesting of timed calls and imports: only the outermost import is counted
        self._import_wall = self._import_cpu = 0.0  # imports so far, to leave out of enclosing phases
        self._lock = threading.Lock()

    def event(self, phase: str, t0: float, t1: float, wall: float, cpu: float, **extra: Any) -> None:
        line = {"trial": self.trial, "phase": phase, "t0": t0, "t1": t1, "wall": wall, "cpu": cpu, "pid": os.getpid(),
                **extra}
        with self._lock, self.path.open("a") as out:
            out.write(json.dumps(line) + "\n")

    def mark(self, phase: str) -> None:
        """A point in time: ``wall`` = 0, ``cpu`` = this process's CPU seconds so far."""
        now = time.time()
        self.event(phase, now, now, 0.0, time.process_time())

    def timed(self, phase: str, fn: Callable) -> Callable:
        """``fn`` timed as ``phase``, less the imports it ran."""
        recorder = self

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0, w0, c0 = time.time(), time.perf_counter(), time.process_time()
            iw0, ic0 = recorder._import_wall, recorder._import_cpu
            try:
                return fn(*args, **kwargs)
            finally:
                wall = time.perf_counter() - w0 - (recorder._import_wall - iw0)
                cpu = time.process_time() - c0 - (recorder._import_cpu - ic0)
                recorder.event(phase, t0, time.time(), wall, cpu)

        wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
        return wrapper

    def wrap(self, module: str, attr: str, phase: str) -> None:
        """Replace ``module.attr`` by its timed version (the product looks it up there at call time)."""
        import importlib

        mod = importlib.import_module(module)
        setattr(mod, attr, self.timed(phase, getattr(mod, attr)))

    def time_imports(self) -> None:
        """Time every outermost import statement of this process as the phase ``imports``."""
        original, recorder = builtins.__import__, self

        def timed_import(name, globals=None, locals=None, fromlist=(), level=0):
            if recorder._depth or (level == 0 and name in sys.modules and not fromlist):
                return original(name, globals, locals, fromlist, level)
            recorder._depth += 1
            t0, w0, c0 = time.time(), time.perf_counter(), time.process_time()
            try:
                return original(name, globals, locals, fromlist, level)
            finally:
                recorder._depth -= 1
                wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                recorder._import_wall += wall
                recorder._import_cpu += cpu
                if wall > 1e-3:  # a cached module's lookup is no import worth a line
                    recorder.event("imports", t0, time.time(), wall, cpu, module=name)

        builtins.__import__ = timed_import


class PhaseLoop:
    """The per-worker function: the product's ``train_worker`` in a Ray Train session, timed."""

    def __init__(self, folder: str, trial: str) -> None:
        self.folder, self.trial = folder, trial

    def __call__(self, payload: dict) -> None:
        recorder = Recorder(self.folder, self.trial)
        recorder.mark("worker loop start")  # cpu: the worker process's CPU from its start to here
        recorder.time_imports()
        from trainables import trial_run

        for module, attr, phase in WORKER_PHASES:
            recorder.wrap(module, attr, phase)
        for method in TRIAL_RUN_METHODS:
            setattr(trial_run.TrialRun, method, recorder.timed("MLflow (worker)", getattr(trial_run.TrialRun, method)))
        from trainables.session import RaySession

        session = RaySession(payload["config"].use_gpu)
        report = session.report
        session.report = recorder.timed("Ray report + checkpoint upload", report)  # save_checkpoint is timed inside
        from trainables.train import train_worker

        train_worker(payload["config"], session, payload["tracking"])
        recorder.mark("worker loop end")


class PhaseFit:
    """The study's ``fit``: the product's ``fit_trial`` with :class:`PhaseLoop`, timed.

    Unpickled in the Tune function's process (``tune.with_parameters``), it wraps that process's
    MLflow calls of ``study.trial`` before the trial starts.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        recorder = Recorder(self.folder, "")
        for module, attr, phase in TUNE_FUNCTION_PHASES:
            recorder.wrap(module, attr, phase)

    def __call__(self, config, **kwargs: Any):
        from trainables.driver import fit_trial

        trial = kwargs["name"]
        recorder = Recorder(self.folder, trial)
        recorder.mark("fit start")
        try:
            return fit_trial(config, train_loop=PhaseLoop(self.folder, trial), **kwargs)
        finally:
            recorder.mark("fit end")


# ---------------------------------------------------------------------------- CPU of the study's processes
def _stat(pid: int) -> Optional[tuple[int, int, float]]:
    """(ppid, start ticks, CPU seconds) of ``pid`` from /proc, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[1]), int(fields[19]), (int(fields[11]) + int(fields[12])) / ticks


def process_role(pid: int) -> str:
    """What a process of the study is, from its command line (Ray sets ``ray::<actor or task>``)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"
    for key, role in (("TrainController", "Train controller"), ("RayTrainWorker", "Train worker"),
                      ("ImplicitFunc", "Tune function"), ("run_trial", "Tune function"),
                      ("raylet", "raylet"), ("gcs_server", "GCS"), ("dashboard", "dashboard"),
                      ("log_monitor", "log monitor"), ("benchmarks._phases", "study driver"),
                      ("IDLE", "idle Ray worker (prestarted)"), ("default_worker", "Ray worker")):
        if key in cmd:
            return role
    if cmd.startswith("ray::"):  # another Ray actor: its class
        return "Ray actor " + cmd[5:].split(" ")[0].split(".")[0]
    return cmd.split(" ")[0].rsplit("/", 1)[-1][:30] or "?"


class TreeCpu:
    """Samples the CPU seconds of a process and all its descendants every ``interval_s``.

    A process once seen stays counted (a Ray process may be re-parented); one that ended counts
    with its last sample (so up to ``interval_s`` of its CPU is missed).
    """

    def __init__(self, root: int, interval_s: float = 0.25) -> None:
        self.root, self.interval_s = root, interval_s
        self.samples: list[tuple[float, float]] = []  # (epoch seconds, total CPU seconds)
        self._last: dict[tuple[int, int], float] = {}
        # per process: its roles over time (a Ray worker process becomes an actor) and CPU samples
        self.history: dict[str, list[tuple[float, float, str]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "TreeCpu":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> None:
        stats = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                got = _stat(int(entry))
                if got:
                    stats[int(entry)] = got
        tree, grew = {self.root}, True
        while grew:
            grew = False
            for pid, (ppid, _, _) in stats.items():
                if ppid in tree and pid not in tree:
                    tree.add(pid)
                    grew = True
        now = time.time()
        for pid, (_, start, cpu) in stats.items():
            if pid in tree or (pid, start) in self._last:
                if self._last.get((pid, start)) != cpu:
                    points = self.history.setdefault(f"{pid}:{start}", [])
                    role = process_role(pid)
                    if role == "?" and points:  # an exiting process has no command line left
                        role = points[-1][2]
                    points.append((now, cpu, role))
                self._last[pid, start] = cpu
        self.samples.append((now, sum(self._last.values())))

    def by_role(self, t0: float, t1: float) -> dict[str, float]:
        """CPU seconds each kind of process used between ``t0`` and ``t1`` (per process: its last
        sample at or before each end; the role it had at ``t1``)."""
        out: dict[str, float] = {}
        for points in self.history.values():
            before = [p for p in points if p[0] <= t0]
            upto = [p for p in points if p[0] <= t1]
            if not upto:
                continue
            used = upto[-1][1] - (before[-1][1] if before else 0.0)
            if used > 0:
                out[upto[-1][2]] = out.get(upto[-1][2], 0.0) + used
        return out

    def to_json(self) -> dict[str, Any]:
        return {"samples": self.samples, "history": self.history}

    def at(self, t: float) -> float:
        """Total CPU seconds at time ``t`` (linear between samples)."""
        s = self.samples
        if not s:
            return float("nan")
        if t <= s[0][0]:
            return s[0][1]
        for (ta, ca), (tb, cb) in zip(s, s[1:]):
            if ta <= t <= tb:
                return ca + (cb - ca) * (t - ta) / max(tb - ta, 1e-9)
        return s[-1][1]

    def between(self, t0: float, t1: float) -> float:
        return self.at(t1) - self.at(t0)


def read_events(folder: Path) -> list[dict[str, Any]]:
    """Every recorded event of a study, in time order."""
    out = []
    for path in folder.glob("*.jsonl"):
        out += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(out, key=lambda e: e["t0"])


def main(argv: Optional[list[str]] = None) -> int:
    """``--phase-log DIR STUDY-ARGS...``: run ``study.run`` with :class:`PhaseFit`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] != "--phase-log":
        raise SystemExit("usage: python -m benchmarks._phases --phase-log DIR STUDY-ARGS...")
    folder = str(Path(argv[1]).resolve())
    Path(folder).mkdir(parents=True, exist_ok=True)
    from study.run import main as study_main

    return study_main(argv[2:], fit=PhaseFit(folder))


if __name__ == "__main__":
    sys.exit(main())
