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

    python -m benchmarks.study_overhead                 # 3 trials x 2 epochs x 10 steps, twice
    python -m benchmarks.study_overhead --tiny          # 1 trial x 1 epoch x 2 steps, 0.5 s only
"""

from __future__ import annotations

import argparse
import shutil
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


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Command-line options (``--tiny`` shrinks every size for a smoke run)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=3, help="trials per study (default 3)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per trial (default 2)")
    p.add_argument("--steps", type=int, default=10, help="steps per epoch (default 10)")
    p.add_argument("--batch", type=int, default=64, help="global batch (default 64)")
    p.add_argument("--train-size", type=int, default=4000, help="synthetic train samples (default 4000)")
    p.add_argument("--test-size", type=int, default=1000, help="synthetic test samples = eval images (default 1000)")
    p.add_argument("--intervals", default=f"{RAY_DEFAULT_HEALTH_CHECK_S},0.5",
                   help=f"health-check intervals to compare (default {RAY_DEFAULT_HEALTH_CHECK_S} = Ray's, 0.5)")
    p.add_argument("--rounds", type=int, default=1, help="studies per interval, interleaved (default 1)")
    p.add_argument("--ray-reps", type=int, default=2, help="Ray start-up probes (default 2)")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray cluster (default 2)")
    p.add_argument("--data-cache", help="synthetic data cache (default: the project's; generated before timing)")
    p.add_argument("--keep", help="keep the studies' folders here instead of a temporary folder")
    p.add_argument("--tiny", action="store_true", help="smoke run: 1 trial x 1 epoch x 2 steps, interval 0.5 only")
    p.add_argument("--json", help="save the figures to this JSON file")
    args = p.parse_args(argv)
    if args.tiny:
        args.trials, args.epochs, args.steps, args.batch = 1, 1, 2, 16
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
