"""Running a small study as a user does (``python -m study.run`` in a subprocess) and
splitting its wall-clock with what MLflow recorded. Shared by ``study_overhead`` and ``scaling``.

Where the time goes, per trial (child run times and the per-epoch metric timestamps come
from MLflow; ``train/epoch_time_s`` and ``eval/time_s`` are the trial's own reports):

* ``inside``: the sum over epochs of ``train/epoch_time_s + eval/time_s``;
* ``gap``: from the previous trial's end (or the parent run's start) to this trial's
  child run being opened by the Tune function: the previous worker group's teardown
  (noticed by Ray Train's health check) plus this trial's scheduling. Rank 0 ends the
  child run as its loop returns, so a trial's teardown lands in the next trial's gap
  (and the last one's in ``study end``);
* ``setup``: from then to the first epoch's start (Train controller, worker group
  start-up, imports in the workers, model build, data load and tokenisation);
* ``report``: per-epoch reporting (checkpoint, Ray report, MLflow logging);
* ``study start``/``study end``: process start to the parent run; last trial's end to exit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

RAY_DEFAULT_HEALTH_CHECK_S = "2.0"  # Ray Train V2's DEFAULT_HEALTH_CHECK_INTERVAL_S (ray 2.60)


def space_yaml(trials: int, epochs: int, steps: int, batch: int, train_size: int, test_size: int) -> str:
    """A small ratio-only search space with the default study's model and data."""
    return f"""description: benchmark space ({trials} trials x {epochs} epochs x {steps} steps)
search:
  algorithm: optuna
  num_samples: {trials}
  n_startup_trials: {trials}
  objectives:
    - {{metric: map100/multilingual, mode: max}}
fixed:
  model: tiny
  mode: per_batch
  batch_size: {batch}
  epochs: {epochs}
  steps_per_epoch: {steps}
  synthetic_train_size: {train_size}
  synthetic_test_size: {test_size}
  num_workers: 1
params:
  ratio: {{type: uniform, low: 0.0, high: 1.0}}
"""


def study_env(**extra: str) -> dict[str, str]:
    """The environment of a study subprocess: offline, no usage stats, no inherited cluster."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env.update({"RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def run_study(workdir: Path, space: Path, name: str, data_cache: str, *extra: str,
              env: Optional[dict] = None, timeout_s: float = 1800) -> dict[str, Any]:
    """Run ``python -m study.run`` in ``workdir``; returns wall-clock, start time and exit code."""
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "study.run", "--space", str(space), "--name", name, "--verbose", "0",
           "--storage-path", str(workdir / "ray_results"), "--tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}",
           "--output-dir", str(workdir / "out"), "--set", f"data_cache={data_cache}", *extra]
    repo = Path(__file__).resolve().parent.parent
    env = dict(env or study_env())
    env["PYTHONPATH"] = os.pathsep.join([str(repo), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    started = time.time()
    done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout_s)
    wall = time.time() - started
    if done.returncode != 0:
        raise RuntimeError(f"study {name} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return {"name": name, "workdir": str(workdir), "started": started, "wall_s": wall, "ended": started + wall}


def trial_timeline(client: Any, run: Any) -> dict[str, Any]:
    """One child run's start/end and per-epoch (report timestamp, train seconds, eval seconds)."""
    from trainables.metric_names import logged_name  # child runs log the headlines under short names

    def history(name: str) -> list:
        return client.get_metric_history(run.info.run_id, logged_name(name))

    train = {m.step: m for m in history("train/epoch_time_s")}
    evals = {m.step: m.value for m in history("eval/time_s")}
    samples = {m.step: m.value for m in history("train/samples_per_s")}
    epochs = [{"epoch": epoch, "step": step, "reported": train[step].timestamp / 1000, "train_s": train[step].value,
               "eval_s": evals.get(step, 0.0), "samples_per_s": samples.get(step, float("nan"))}
              for epoch, step in enumerate(sorted(train), 1)]  # the step is the training step
    return {"run_id": run.info.run_id, "start": run.info.start_time / 1000,
            "end": (run.info.end_time or run.info.start_time) / 1000, "epochs": epochs}


def read_timelines(workdir: Path, name: str) -> tuple[float, list[dict[str, Any]]]:
    """The parent run's start time and every child's timeline, in start order, from MLflow."""
    from trainables.mlflow_layout import ROLE_STUDY, TAG_PARENT, TAG_ROLE
    from trainables.mlflow_store import client_for

    client = client_for(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    parent = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{TAG_ROLE}` = '{ROLE_STUDY}'")[0]
    children = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.`{TAG_PARENT}` = '{parent.info.run_id}'")
    timelines = sorted((trial_timeline(client, run) for run in children), key=lambda t: t["start"])
    return parent.info.start_time / 1000, timelines


def tune_trial_seconds(workdir: Path, name: str) -> list[float]:
    """Tune's own ``time_total_s`` of each trial (last line of its result.json)."""
    out = []
    for path in sorted((workdir / "ray_results" / name).glob("trial_*/result.json")):
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        if lines:
            out.append(float(json.loads(lines[-1]).get("time_total_s", float("nan"))))
    return out


def split_wall_clock(run: dict[str, Any], parent_start: float, timelines: list[dict[str, Any]]) -> dict[str, Any]:
    """Split a sequential study's wall-clock into inside (train + eval) and the overhead phases.

    Per trial: ``gap`` (previous trial's end, or the parent run's start, to this trial's
    child run opening: the previous worker group's teardown plus this trial's
    scheduling), ``setup``, ``report`` (per-epoch reporting and checkpoints, to the child
    run's end, which rank 0 writes as it returns). With one trial at a time the phases
    add up exactly to the wall-clock; ``fixed_per_trial`` is the steady-state cost of a
    trial beyond its training and evaluation (mean over the trials after the first).
    """
    trials, previous_end = [], parent_start
    for t in timelines:
        epochs = t["epochs"]
        if not epochs:
            continue
        work = [e["train_s"] + e["eval_s"] for e in epochs]
        first_start = epochs[0]["reported"] - work[0]
        report = sum(epochs[i]["reported"] - epochs[i - 1]["reported"] - work[i] for i in range(1, len(epochs)))
        trials.append({
            "inside": sum(work), "train": sum(e["train_s"] for e in epochs), "eval": sum(e["eval_s"] for e in epochs),
            "gap": t["start"] - previous_end, "setup": first_start - t["start"],
            "report": report + t["end"] - epochs[-1]["reported"],
            "samples_per_s": sum(e["samples_per_s"] for e in epochs) / len(epochs),
        })
        previous_end = t["end"]
    total = {key: sum(t[key] for t in trials) for key in ("inside", "train", "eval", "gap", "setup", "report")}
    total.update({"study_start": parent_start - run["started"], "study_end": run["ended"] - previous_end,
                  "wall": run["wall_s"], "trials": len(trials)})
    total["outside"] = total["wall"] - total["inside"]
    total["outside_share"] = total["outside"] / total["wall"]
    steady = trials[1:] or trials
    for key in ("gap", "setup", "report"):
        total[f"{key}_per_trial"] = sum(t[key] for t in steady) / max(len(steady), 1)
    total["first_gap"] = trials[0]["gap"] if trials else float("nan")
    total["fixed_per_trial"] = total["gap_per_trial"] + total["setup_per_trial"] + total["report_per_trial"]
    return {"total": total, "trials": trials}


def ray_startup_seconds(num_cpus: int = 2) -> dict[str, float]:
    """Import, start and stop a local Ray cluster the way ``study.run`` does, in a fresh process."""
    code = (
        "import json, time\n"
        "t0 = time.perf_counter()\n"
        "import ray\n"
        "from study.cluster import apply_env_defaults, start_ray\n"
        "t1 = time.perf_counter()\n"
        f"start_ray(None, {int(num_cpus)}, apply_env_defaults())\n"
        "t2 = time.perf_counter()\n"
        "ray.shutdown()\n"
        "t3 = time.perf_counter()\n"
        "print(json.dumps({'import_s': t1 - t0, 'init_s': t2 - t1, 'shutdown_s': t3 - t2}))\n"
    )
    repo = Path(__file__).resolve().parent.parent
    env = study_env(PYTHONPATH=str(repo))
    done = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"ray start-up probe failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def prepare_data_cache(cache: str, train_size: int, test_size: int) -> None:
    """Generate the synthetic data once, before any timing (every trial then loads the cache)."""
    from trainables.config import TrialConfig
    from trainables.data.synthetic import load_synthetic

    load_synthetic(TrialConfig(synthetic_train_size=train_size, synthetic_test_size=test_size, data_cache=cache))
