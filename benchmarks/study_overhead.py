"""§4 The study: the share of wall-clock spent outside trial training and evaluation.

Runs ``python -m study.run`` as a user does (a subprocess, a local Ray cluster, MLflow in
SQLite) on a small ratio-only space with the default study's model and data, one trial
at a time, and splits the wall-clock with MLflow's records (see :mod:`benchmarks._study`):
inside = the trials' own ``train/epoch_time_s + eval/time_s``; outside = Ray start-up,
trial scheduling, worker-group set-up, per-epoch reporting, teardown, and the study's
own start and end. Ray's start-up is also timed alone.

It compares Ray Train's health-check interval (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``):
Ray's default 2.0 s against the 0.5 s the project sets (``study.cluster``), each setting
run ``--rounds`` times, interleaved.

With ``--phases`` it instead splits each trial's fixed cost by phase, in wall-clock and CPU
seconds (:mod:`benchmarks._phases` times the product's own functions in each process, and samples
the CPU of every process of the study): Tune scheduling, the Tune function's MLflow calls, the
Train controller and worker start, the worker's imports, data and tokenizer load, model build,
checkpoints, the Ray report, the worker's MLflow calls, teardown. One study, default trial
settings (5 epochs, evaluated after epochs 2, 4 and 5 on the 500-image test split) but few
steps, so that training is short; the medians are over the trials after the first.

    python -m benchmarks.study_overhead                 # 3 trials x 2 epochs x 10 steps, twice
    python -m benchmarks.study_overhead --phases        # 4 trials x 5 epochs x 10 steps, per phase
    python -m benchmarks.study_overhead --tiny          # 1 trial x 1 epoch x 2 steps, 0.5 s only
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

from benchmarks._common import load_line, machine_info, median, print_table, save_json
from benchmarks._study import (RAY_DEFAULT_HEALTH_CHECK_S, prepare_data_cache, ray_startup_seconds, read_timelines,
                               run_study, space_yaml, split_wall_clock, study_env, tune_trial_seconds)

def default_cache(args: argparse.Namespace, root: Path) -> Path:
    """The project's own synthetic cache (shared with real studies); a temporary one for ``--tiny``."""
    from trainables.config import TrialConfig
    from trainables.data.synthetic import cache_root

    return root / "data_cache" if args.tiny else cache_root(TrialConfig())


def one_study(root: Path, label: str, interval: str, args: argparse.Namespace, index: int) -> dict[str, Any]:
    """Run one study with the given health-check interval; return its wall-clock split."""
    name = f"bench-{label.replace('.', '_')}-{index}"
    env = study_env(RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=interval)
    run = run_study(root / name, root / "space.yaml", name, args.data_cache, "--max-concurrent", "1",
                    "--num-cpus", str(args.num_cpus), env=env)
    parent_start, timelines = read_timelines(root / name, name)
    split = split_wall_clock(run, parent_start, timelines)
    split["tune_time_total_s"] = tune_trial_seconds(root / name, name)
    split["interval"] = interval
    return split


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per interval setting: medians over its rounds of the totals and of the per-trial phases."""
    keys = ("wall", "inside", "outside", "outside_share", "study_start", "first_gap", "gap_per_trial",
            "setup_per_trial", "report_per_trial", "fixed_per_trial", "study_end")
    rows = []
    for interval in dict.fromkeys(r["interval"] for r in runs):
        mine = [r["total"] for r in runs if r["interval"] == interval]
        row = {"interval_s": interval, "rounds": len(mine), "trials": mine[0]["trials"]}
        row.update({key: median(m[key] for m in mine) for key in keys})
        rows.append(row)
    return rows


def print_tables(ray: list[dict[str, float]], rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """The Ray start-up table and the per-setting split."""
    print(f"\nRay start-up alone (median of {len(ray)}; {load_line()})\n")
    print_table(["phase", "seconds"], [[k, median(r[k] for r in ray)] for k in ("import_s", "init_s", "shutdown_s")])
    print(f"\nStudy: {args.trials} trial(s) x {args.epochs} epoch(s) x {args.steps} steps, batch {args.batch}, "
          f"one at a time; medians over {args.rounds} round(s); seconds ({load_line()})\n")
    keys = ["wall", "inside", "outside", "outside_share", "study_start", "first_gap", "gap_per_trial",
            "setup_per_trial", "report_per_trial", "fixed_per_trial", "study_end"]
    headers = ["health check (s)", "wall", "inside", "outside", "out %", "start", "1st sched", "gap/trial",
               "setup/trial", "report/trial", "fixed/trial", "end"]
    print_table(headers, [[r["interval_s"]] + [100 * r[k] if k == "outside_share" else r[k] for k in keys]
                          for r in rows])
    print("\n  gap = previous trial's teardown + this trial's scheduling; fixed/trial = gap + setup + report,"
          " mean over the trials after the first")


# ---------------------------------------------------------------------------- --phases
# (label, events of the phase); "window" phases span processes and have no own-process CPU.
PHASE_ROWS = (
    "Tune scheduling", "MLflow (Tune function)", "Train controller + worker start", "imports (worker)",
    "data and tokenizer", "model build", "composer and optimiser", "checkpoints (state + save)",
    "Ray report + checkpoint upload", "MLflow (worker)", "other (worker)", "teardown",
)


def phase_study(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run one study under :mod:`benchmarks._phases` with the study's CPU sampled; return its events."""
    import subprocess
    import time

    from benchmarks._phases import TreeCpu, read_events
    from benchmarks._study import study_env

    workdir, log = root / "phases", root / "phases" / "events"
    workdir.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parent.parent
    env = study_env()
    env["PYTHONPATH"] = os.pathsep.join([str(repo), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, "-m", "benchmarks._phases", "--phase-log", str(log),
           "--space", str(root / "space.yaml"), "--name", "phases", "--verbose", "0",
           "--storage-path", str(workdir / "ray_results"), "--tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}",
           "--output-dir", str(workdir / "out"), "--set", f"data_cache={args.data_cache}",
           "--max-concurrent", "1", "--num-cpus", str(args.num_cpus)]
    started, load_before = time.time(), os.getloadavg()
    with open(workdir / "study.log", "w") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
        tree = TreeCpu(proc.pid).start()
        code = proc.wait(timeout=3600)
        tree.stop()
    if code != 0:
        raise RuntimeError(f"phase study exited {code}:\n{(workdir / 'study.log').read_text()[-3000:]}")
    return {"events": read_events(log), "cpu": tree, "wall_s": time.time() - started,
            "loads": {"start": load_before, "end": os.getloadavg()}}


def split_phases(events: list[dict[str, Any]], tree: Any) -> list[dict[str, dict[str, float]]]:
    """Per trial (in start order): {phase: {"wall", "cpu" (own process; NaN for a window), "cpu_all"}}.

    ``cpu_all`` is the CPU of every process of the study during the phase's calls or window.
    Windows: Tune scheduling = previous trial's last Tune-function MLflow call to this trial's first
    (the previous Tune function's return, Tune's bookkeeping, this trial's actor); worker start =
    fit start to the worker loop's start; teardown = the loop's end to the fit's return.
    """
    fits = sorted((e for e in events if e["phase"] == "fit start"), key=lambda e: e["t0"])
    out, previous_close = [], None
    for i, fit in enumerate(fits):
        trial = fit["trial"]
        mine = [e for e in events if e["trial"] == trial]
        by = lambda phase: [e for e in mine if e["phase"] == phase]  # noqa: E731
        end = by("fit end")[0]["t0"]
        following = fits[i + 1]["t0"] if i + 1 < len(fits) else float("inf")
        # the Tune function's calls before its fit (open) and after (close), in its own process
        tune_ml = [e for e in events if e["phase"] == "MLflow (Tune function)" and e["pid"] == fit["pid"] and (
            (previous_close or 0) < e["t0"] < fit["t0"] or end <= e["t0"] < following)]
        opens = [e for e in tune_ml if e["t0"] < fit["t0"]]
        row: dict[str, dict[str, float]] = {}

        def add(name: str, items: list[dict[str, Any]], own: bool = True, minus: list | None = None) -> None:
            wall = sum(e["wall"] for e in items) - sum(e["wall"] for e in (minus or []))
            cpu = sum(e["cpu"] for e in items) - sum(e["cpu"] for e in (minus or [])) if own else float("nan")
            # the study's CPU is read per window (it is sampled every 0.25 s: too coarse for short calls)
            cpu_all = float("nan") if own else sum(tree.between(e["t0"], e["t1"]) for e in items)
            row[name] = {"wall": wall, "cpu": cpu, "cpu_all": cpu_all}
            if not own:
                roles: dict[str, float] = {}
                for e in items:
                    for role, used in tree.by_role(e["t0"], e["t1"]).items():
                        roles[role] = roles.get(role, 0.0) + used
                row[name]["roles"] = roles

        def window(t0: float, t1: float) -> dict[str, Any]:
            return {"t0": t0, "t1": t1, "wall": t1 - t0, "cpu": float("nan")}

        if previous_close is not None and opens:
            add("Tune scheduling", [window(previous_close, opens[0]["t0"])], own=False)
        else:
            row["Tune scheduling"] = {"wall": float("nan"), "cpu": float("nan"), "cpu_all": float("nan")}
        add("MLflow (Tune function)", tune_ml)
        loop_start, loop_end = by("worker loop start")[0], by("worker loop end")[0]
        add("Train controller + worker start", [window(fit["t0"], loop_start["t0"])], own=False)
        row["Train controller + worker start"]["cpu"] = loop_start["cpu"]  # the worker's CPU to its loop
        add("imports (worker)", by("imports"))
        add("data and tokenizer", by("data and tokenizer"))
        add("model build", by("model build"))
        add("composer and optimiser", by("composer and optimiser"))
        add("checkpoints (state + save)", by("checkpoints"))
        add("Ray report + checkpoint upload", by("Ray report + checkpoint upload"),
            minus=[e for e in by("checkpoints") if any(r["t0"] <= e["t0"] <= r["t1"]
                                                        for r in by("Ray report + checkpoint upload"))])
        add("MLflow (worker)", by("MLflow (worker)"))
        add("training", by("training"))
        add("evaluation", by("evaluation"))
        loop = window(loop_start["t0"], loop_end["t0"])
        loop["cpu"] = loop_end["cpu"] - loop_start["cpu"]
        timed = ("imports (worker)", "data and tokenizer", "model build", "composer and optimiser",
                 "checkpoints (state + save)", "Ray report + checkpoint upload", "MLflow (worker)",
                 "training", "evaluation")
        row["other (worker)"] = {key: loop[key] - sum(row[name][key] for name in timed) for key in ("wall", "cpu")}
        row["other (worker)"]["cpu_all"] = float("nan")
        add("teardown", [window(loop_end["t0"], end)], own=False)
        closes = [e for e in tune_ml if e["t0"] >= end]
        close = max((e["t1"] for e in closes), default=end)
        # fixed: the trial from the previous trial's close (or its own first MLflow call) to its own
        # close, less its training and evaluation; the study's CPU over that window likewise
        start = previous_close if previous_close is not None else (opens[0]["t0"] if opens else fit["t0"])
        work = ("training", "evaluation")
        row["fixed"] = {"wall": close - start - sum(row[name]["wall"] for name in work),
                        "cpu": sum(row[name]["cpu"] for name in PHASE_ROWS if row[name]["cpu"] == row[name]["cpu"]),
                        "cpu_all": tree.between(start, close) - sum(row[name]["cpu"] for name in work),
                        "roles": tree.by_role(start, close)}
        out.append(row)
        previous_close = close
    return out


def print_phase_table(trials: list[dict[str, dict[str, float]]], args: argparse.Namespace, loads) -> list[list]:
    """The per-phase table: medians over the trials after the first."""
    steady = trials[1:] or trials
    rows = []
    for name in (*PHASE_ROWS, "fixed", "training", "evaluation"):
        rows.append([name] + [median(t[name][key] for t in steady) for key in ("wall", "cpu", "cpu_all")])
    print(f"\nPer trial, by phase: {args.trials} trials x {args.epochs} epochs x {args.steps} steps, batch "
          f"{args.batch}, {args.test_size} test images, one at a time; medians over the {len(steady)} trials "
          f"after the first; seconds (load average 1/5/15 min at the study's start "
          f"{' / '.join(f'{x:.2f}' for x in loads['start'])}, at its end "
          f"{' / '.join(f'{x:.2f}' for x in loads['end'])}; {os.cpu_count()} CPUs)\n")
    print_table(["phase", "wall", "CPU (own process)", "CPU (all study processes)"], rows)
    windows = [name for name in (*PHASE_ROWS, "fixed") if "roles" in steady[0][name]]
    roles = sorted({role for t in steady for name in windows for role in t[name]["roles"]})
    role_rows = [[role] + [median(t[name]["roles"].get(role, 0.0) for t in steady) for name in windows]
                 for role in roles]
    print("\nCPU seconds by process during the phases that span processes (medians; 'fixed' is the whole"
          " trial, training and evaluation included)\n")
    print_table(["process"] + windows, role_rows)
    print("\n  CPU (own process): of the process the phase runs in (for the worker start: the worker process's"
          " CPU from its start to its loop); CPU (all study processes): every process of the study during a"
          " phase that spans processes\n  fixed: the trial's wall-clock from the previous trial's end to its own,"
          " less its training and evaluation (CPU: the own-process column's sum; all processes: their CPU over"
          " that window, less training and evaluation)")
    return rows


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Command-line options (``--tiny`` shrinks every size for a smoke run)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=3, help="trials per study (default 3)")
    p.add_argument("--epochs", type=int, help="epochs per trial (default 2; --phases: 5)")
    p.add_argument("--steps", type=int, default=10, help="steps per epoch (default 10)")
    p.add_argument("--batch", type=int, default=64, help="global batch (default 64)")
    p.add_argument("--train-size", type=int, default=4000, help="synthetic train samples (default 4000)")
    p.add_argument("--test-size", type=int, help="synthetic test samples = eval images (default 1000; --phases: 500)")
    p.add_argument("--intervals", default=f"{RAY_DEFAULT_HEALTH_CHECK_S},0.5",
                   help=f"health-check intervals to compare (default {RAY_DEFAULT_HEALTH_CHECK_S} = Ray's, 0.5)")
    p.add_argument("--rounds", type=int, default=1, help="studies per interval, interleaved (default 1)")
    p.add_argument("--ray-reps", type=int, default=2, help="Ray start-up probes (default 2)")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray cluster (default 2)")
    p.add_argument("--data-cache", help="synthetic data cache (default: the project's; generated before timing)")
    p.add_argument("--keep", help="keep the studies' folders here instead of a temporary folder")
    p.add_argument("--tiny", action="store_true",
                   help="smoke run: 1 trial (--phases: 2) x 1 epoch x 2 steps, interval 0.5 only")
    p.add_argument("--phases", action="store_true",
                   help="split each trial's fixed cost by phase instead (one study; default 4 trials x 5 epochs)")
    p.add_argument("--json", help="save the figures to this JSON file")
    args = p.parse_args(argv)
    if args.epochs is None:
        args.epochs = 5 if args.phases else 2
    if args.test_size is None:
        args.test_size = 500 if args.phases else 1000
    if args.phases and "--trials" not in (argv if argv is not None else sys.argv[1:]):
        args.trials = 4
    if args.tiny:
        # --phases needs a second trial: the first one's scheduling window is the study's start
        args.trials, args.epochs, args.steps, args.batch = 2 if args.phases else 1, 1, 2, 16
        args.train_size, args.test_size, args.intervals, args.ray_reps = 64, 32, "0.5", 1
    return args


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    """Run the benchmark, print its tables, return (and optionally save) the figures."""
    args = parse_args(argv)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mlclip-bench-study-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        args.data_cache = str(Path(args.data_cache or default_cache(args, root)).resolve())
        prepare_data_cache(args.data_cache, args.train_size, args.test_size)
        (root / "space.yaml").write_text(space_yaml(args.trials, args.epochs, args.steps, args.batch,
                                                    args.train_size, args.test_size))
        if args.phases:
            study = phase_study(root, args)
            trials = split_phases(study["events"], study["cpu"])
            rows = print_phase_table(trials, args, study["loads"])
            result = {"benchmark": "study_overhead_phases", "machine": machine_info(), "args": vars(args),
                      "wall_s": study["wall_s"], "loads": study["loads"], "trials": trials, "table": rows,
                      "events": study["events"], "cpu_samples": study["cpu"].to_json()}
            save_json(args.json, result)
            return result
        ray = [ray_startup_seconds(args.num_cpus) for _ in range(args.ray_reps)]
        intervals = [x.strip() for x in args.intervals.split(",") if x.strip()]
        runs = [one_study(root, interval, interval, args, i) for i in range(args.rounds) for interval in intervals]
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    rows = summarize(runs)
    print_tables(ray, rows, args)
    result = {"benchmark": "study_overhead", "machine": machine_info(), "args": vars(args), "ray_startup": ray,
              "settings": rows, "runs": runs}
    save_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
