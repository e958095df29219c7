"""§5 Scaling on this machine: 1 vs 2 workers per trial, 1 vs 2 trials at once.

Each setting runs the same small study (``python -m study.run``, 2 trials of the tiny
model, global batch 64) and reports its wall-clock, its end-to-end throughput (samples
trained by all trials / wall-clock) and the trials' own training throughput
(``train/samples_per_s`` as the trials report it, mean over trials and epochs).

    python -m benchmarks.scaling                # 3 settings x 2 trials x 1 epoch x 20 steps
    python -m benchmarks.scaling --tiny         # smoke run: 1 epoch x 2 steps, small data
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

from benchmarks._common import load_line, machine_info, print_table, save_json
from benchmarks._study import prepare_data_cache, read_timelines, run_study, space_yaml

SETTINGS = {
    "1 trial at a time, 1 worker": ("1", "1"),
    "1 trial at a time, 2 workers (DDP)": ("2", "1"),
    "2 trials at once, 1 worker each": ("1", "2"),
}


def one_setting(root: Path, index: int, label: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run the study under one (workers per trial, concurrent trials) setting."""
    workers, concurrent = SETTINGS[label]
    name = f"scaling-{index}"
    run = run_study(root / name, root / "space.yaml", name, args.data_cache, "--workers-per-trial", workers,
                    "--max-concurrent", concurrent, "--num-cpus", str(args.num_cpus))
    _, timelines = read_timelines(root / name, name)
    epochs = [e for t in timelines for e in t["epochs"]]
    samples = args.trials * args.epochs * args.steps * args.batch
    inside = [sum(e["train_s"] + e["eval_s"] for e in t["epochs"]) for t in timelines]
    return {"setting": label, "workers": int(workers), "concurrent": int(concurrent), "wall_s": run["wall_s"],
            "samples": samples, "throughput": samples / run["wall_s"],
            "train_samples_per_s": sum(e["samples_per_s"] for e in epochs) / max(len(epochs), 1),
            "train_s_per_epoch": sum(e["train_s"] for e in epochs) / max(len(epochs), 1),
            "eval_s_per_epoch": sum(e["eval_s"] for e in epochs) / max(len(epochs), 1),
            "inside_per_trial_s": sum(inside) / max(len(inside), 1)}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Command-line options (``--tiny`` shrinks every size for a smoke run)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=2, help="trials per study (default 2)")
    p.add_argument("--epochs", type=int, default=1, help="epochs per trial (default 1)")
    p.add_argument("--steps", type=int, default=20, help="steps per epoch (default 20)")
    p.add_argument("--batch", type=int, default=64, help="global batch (default 64)")
    p.add_argument("--train-size", type=int, default=4000, help="synthetic train samples (default 4000)")
    p.add_argument("--test-size", type=int, default=1000, help="synthetic test samples = eval images (default 1000)")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray cluster (default 2)")
    p.add_argument("--settings", default=",".join(str(i) for i in range(len(SETTINGS))),
                   help="which settings, by index: " + "; ".join(f"{i}: {k}" for i, k in enumerate(SETTINGS)))
    p.add_argument("--data-cache", help="synthetic data cache (default: the project's; generated before timing)")
    p.add_argument("--tiny", action="store_true", help="smoke run: 1 trial x 1 epoch x 2 steps, setting 0 only")
    p.add_argument("--json", help="save the figures to this JSON file")
    args = p.parse_args(argv)
    if args.tiny:
        args.trials, args.epochs, args.steps, args.batch, args.settings = 1, 1, 2, 16, "0"
        args.train_size, args.test_size = 64, 32
    return args


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    """Run the benchmark, print its table, return (and optionally save) the figures."""
    from trainables.config import TrialConfig
    from trainables.data.synthetic import cache_root

    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="mlclip-bench-scaling-"))
    try:
        default = root / "data_cache" if args.tiny else cache_root(TrialConfig())
        args.data_cache = str(Path(args.data_cache or default).resolve())
        prepare_data_cache(args.data_cache, args.train_size, args.test_size)
        (root / "space.yaml").write_text(space_yaml(args.trials, args.epochs, args.steps, args.batch,
                                                    args.train_size, args.test_size))
        labels = [list(SETTINGS)[int(i)] for i in args.settings.split(",") if i.strip()]
        rows = [one_setting(root, i, label, args) for i, label in enumerate(labels)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = rows[0]
    for row in rows:
        row["throughput_x_first"] = row["throughput"] / base["throughput"]
    print(f"\nScaling: {args.trials} trial(s) x {args.epochs} epoch(s) x {args.steps} steps, global batch "
          f"{args.batch}, {args.num_cpus} CPUs ({load_line()})\n")
    print_table(["setting", "wall s", "samples/s end-to-end", "x first", "train samples/s", "train s/epoch",
                 "eval s/epoch"],
                [[r["setting"], r["wall_s"], r["throughput"], r["throughput_x_first"], r["train_samples_per_s"],
                  r["train_s_per_epoch"], r["eval_s_per_epoch"]] for r in rows])
    result = {"benchmark": "scaling", "machine": machine_info(), "args": vars(args), "settings": rows}
    save_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
