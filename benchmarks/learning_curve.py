"""Learning curves of the tiny default model: mAP@100 against training steps, several configs at once.

Each config trains in its own single-threaded process (``run_local``, no Ray) on the
synthetic data and evaluates on the synthetic XTD-layout test split after every
epoch of ``--steps-per-epoch`` steps. Results are hardware independent for a given
seed (deterministic CPU kernels); only the wall-clock differs. Used to size the
default study so that a trial learns something measurable, and for the README's
"what a trained tiny model reaches" figures.

    python -m benchmarks.learning_curve --epochs 3 --steps-per-epoch 500 \
        --grid "lr=0.002,ratio=0.5;lr=0.005,ratio=0.5" --jsonl curves.jsonl
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time

KEYS = ("map100/monolingual", "map100/crosslingual", "map100/multilingual", "bias/multilingual",
        "train/loss", "train/samples_per_s", "eval/time_s")


def _parse_grid(text: str) -> list[dict]:
    """``"lr=0.002,ratio=0.5;lr=0.005"`` -> [{"lr": 0.002, "ratio": 0.5}, {"lr": 0.005}]."""
    configs = []
    for chunk in filter(None, (c.strip() for c in text.split(";"))):
        item = {}
        for pair in chunk.split(","):
            key, value = pair.split("=")
            item[key.strip()] = json.loads(value) if value.strip()[0] in "-0123456789tfn[" else value.strip()
        configs.append(item)
    return configs


def _run_one(args: tuple) -> list[dict]:
    overrides, base, out_path = args
    import torch

    torch.set_num_threads(1)
    from trainables.config import TrialConfig
    from trainables.session import LocalSession
    from trainables.train import train_worker

    rows = []

    class Recorder(LocalSession):
        def report(self, metrics, state):
            row = {"config": overrides, "step": int(metrics["epoch"] * base["steps_per_epoch"]),
                   **{k: metrics[k] for k in KEYS if k in metrics}}
            rows.append(row)
            if out_path:
                with open(out_path, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)

    train_worker(TrialConfig(**{**base, **overrides}), Recorder())
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="ratio=0.0;ratio=0.5;ratio=1.0")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps-per-epoch", type=int, default=500)
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=None)
    parser.add_argument("--jsonl", default=None)
    args = parser.parse_args()
    base = {"epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch,
            "synthetic_train_size": args.train_size, "synthetic_test_size": args.test_size}
    grid = _parse_grid(args.grid)
    t0 = time.perf_counter()
    from trainables.data.synthetic import load_synthetic
    from trainables.config import TrialConfig

    load_synthetic(TrialConfig(**base))  # generate the cache once, before the workers race for it
    with mp.get_context("spawn").Pool(args.processes or len(grid)) as pool:
        results = pool.map(_run_one, [(g, base, args.jsonl) for g in grid])
    print(f"\n{'config':40} {'step':>5} {'mono':>7} {'cross':>7} {'multi':>7} {'bias':>8} {'samples/s':>9}")
    for rows in results:
        for r in rows:
            print(f"{json.dumps(r['config']):40} {r['step']:5d} {r.get('map100/monolingual', float('nan')):7.4f} "
                  f"{r.get('map100/crosslingual', float('nan')):7.4f} {r.get('map100/multilingual', float('nan')):7.4f} "
                  f"{r.get('bias/multilingual', float('nan')):8.1f} {r['train/samples_per_s']:9.1f}")
    print(f"wall-clock {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
