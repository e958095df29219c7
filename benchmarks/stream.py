"""§7 Streamed vs in-memory training from shards: one trial's epoch and its whole run.

The same synthetic train split is written to WebDataset shards, then one epoch of the
tiny model is trained (the per-worker function without Ray, ``run_local``) four ways:

* memory, synthetic: the split straight from the synthetic cache (the default trial);
* memory, shards: the shards decoded and tokenised into RAM before training;
* stream, loader_workers=0 and 1: the shards read during training (``train_loading="stream"``).

Printed: training samples/s (the epoch's own timer), epoch seconds, and the whole run
(data loading + training + one evaluation). Rounds are interleaved; medians are shown.

    python -m benchmarks.stream            # ~3 min on 2 cores
    python -m benchmarks.stream --tiny     # seconds: a smoke run
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from benchmarks._common import interleaved, load_line, machine_info, median, print_table, save_json, set_threads


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-size", type=int, default=4000, help="synthetic train images (default 4000)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--per-shard", type=int, default=500, help="samples per shard (default 500)")
    p.add_argument("--reps", type=int, default=2, help="interleaved rounds (default 2)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--tiny", action="store_true", help="a smoke run of a few seconds")
    p.add_argument("--json", help="save the figures to this JSON file")
    args = p.parse_args(argv)
    if args.tiny:
        args.train_size, args.batch_size, args.per_shard, args.reps = 128, 32, 40, 1
    return args


def variants(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from trainables.config import TrialConfig
    from trainables.data.shards import write_image_set
    from trainables.data.synthetic import load_synthetic

    base = TrialConfig(epochs=1, steps_per_epoch=None, synthetic_train_size=args.train_size, synthetic_test_size=100, eval_k=10,
                       batch_size=args.batch_size, data_cache=str(work / "cache"))
    train, test_dir = load_synthetic(base)
    write_image_set(train, work / "shards", per_shard=args.per_shard)
    shards = work / "shards"
    real = dict(train_data=str(shards), eval_data=str(test_dir))
    return {
        "memory, synthetic": base,
        "memory, shards": base.replace(**real),
        "stream, loader_workers=0": base.replace(**real, train_loading="stream"),
        "stream, loader_workers=1": base.replace(**real, train_loading="stream", loader_workers=1),
    }


def measure(config: Any) -> dict[str, float]:
    from trainables.train import run_local

    start = time.perf_counter()
    report = run_local(config)[-1]
    return {"samples_per_s": report["train/samples_per_s"], "epoch_s": report["train/epoch_time_s"],
            "run_s": time.perf_counter() - start, "steps": report["train/steps"]}


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    """Run the benchmark, print its table, return (and optionally save) the figures."""
    args = parse_args(argv)
    set_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        configs = variants(args, Path(tmp))
        runs = interleaved({name: (lambda c=c: measure(c)) for name, c in configs.items()}, reps=args.reps, warmup=0)
    rows = [{"variant": name, **{k: median(r[k] for r in values) for k in values[0]}} for name, values in runs.items()]
    first = rows[0]["samples_per_s"]
    print(f"\nOne epoch of the tiny model, {args.train_size} images, batch {args.batch_size}, "
          f"{args.threads} torch thread(s); medians of {args.reps} interleaved round(s); {load_line()}\n")
    print_table(["variant", "steps", "train samples/s", "x memory", "epoch s", "whole run s"],
                [[r["variant"], int(r["steps"]), r["samples_per_s"], r["samples_per_s"] / first, r["epoch_s"],
                  r["run_s"]] for r in rows])
    result = {"benchmark": "stream", "machine": machine_info(args.threads), "args": vars(args), "variants": rows}
    save_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
