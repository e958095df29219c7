"""Time to quality: mAP@100 against CPU-seconds of training, for candidate default configs.

Each candidate trains with the per-worker function (``train_worker`` with a local session: no
Ray) in its own process on one torch thread, as a 1-CPU Ray worker does, on the synthetic data,
and is evaluated at ``--points`` evenly spaced points of its step budget (one epoch of
``steps / points`` steps each; the learning-rate schedule spans the whole budget). The table
gives, per evaluation point, the CPU-seconds of training so far (``time.process_time`` of the
training steps only; evaluation is timed apart), and multilingual, monolingual and cross-lingual
mAP@100 on the default 500-image synthetic test split, with the weakest family's multilingual
value. CPU-seconds, not wall-clock: the machine is shared, and several candidates run at once.

A candidate is a set of ``TrialConfig`` fields plus, optionally, changes to the tiny model's
open_clip config (``vision_cfg`` / ``text_cfg`` / ``embed_dim``), registered as a model config of
its own. ``--only`` picks candidates by name; ``--scale`` multiplies every step budget (1.5 runs
the stopping-point check: does one more half of the budget add 10%?).

    python -m benchmarks.time_to_quality --jobs 2 --json tq.json
    python -m benchmarks.time_to_quality --only default --scale 1.5
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import add_run_args, load_line, print_table, save_json

# name -> (TrialConfig fields, open_clip config changes). Shared defaults: see BASE.
CANDIDATES: dict[str, tuple[dict, dict]] = {
    "default": ({}, {}),
    "bpe-ctx77-p4": ({"tokenizer": "openclip_bpe", "steps": 300}, {"vision_cfg": {"patch_size": 4}}),
    "p4": ({}, {"vision_cfg": {"patch_size": 4}}),
    "lr2e-3": ({"lr": 2e-3}, {}),
    "lr4e-3": ({"lr": 4e-3}, {}),
    "lr4e-3-wu50": ({"lr": 4e-3, "warmup_steps": 50}, {}),
    "b128": ({"batch_size": 128, "steps": 400}, {}),
    "b32": ({"batch_size": 32, "steps": 1600}, {}),
    "w64": ({"lr": 2e-3}, {"embed_dim": 64, "vision_cfg": {"width": 64, "head_width": 32},
                            "text_cfg": {"width": 64, "heads": 2}}),
    "w192-l1": ({"lr": 2e-3}, {"vision_cfg": {"width": 192, "layers": 1}, "text_cfg": {"width": 192, "layers": 1}}),
    "l3": ({}, {"vision_cfg": {"layers": 3}, "text_cfg": {"layers": 3}}),
    "t0.05-fixed": ({"temperature": 0.05, "learn_temperature": False}, {}),
    "lr5e-4": ({"lr": 5e-4}, {}),
    "lr7e-4": ({"lr": 7e-4}, {}),
    "lr1.4e-3": ({"lr": 1.4e-3}, {}),
    "wu100": ({"warmup_steps": 100}, {}),
    "s600": ({"steps": 600}, {}),
    "s1200": ({"steps": 1200}, {}),
    "lr3e-4": ({"lr": 3e-4}, {}),
    "lr5e-4-s600": ({"lr": 5e-4, "steps": 600}, {}),
    "lr5e-4-s1200": ({"lr": 5e-4, "steps": 1200}, {}),
    "wu200": ({"warmup_steps": 200}, {}),  # the chosen default (TrialConfig)
    "wu200-s1200": ({"warmup_steps": 200, "steps": 1200}, {}),  # its stopping check: 1.5x the budget
    "default-500": ({"warmup_steps": 100, "steps": 500}, {}),  # TrialConfig's default (10-minute study)
    "default-750": ({"warmup_steps": 100, "steps": 750}, {}),  # its stopping check: 1.5x the budget
    "lr5e-4-wu100": ({"lr": 5e-4, "warmup_steps": 100}, {}),
    "wu100-s600": ({"warmup_steps": 100, "steps": 600}, {}),
    "wu100-s1200": ({"warmup_steps": 100, "steps": 1200}, {}),
}
BASE: dict[str, Any] = {"ratio": 0.5, "batch_size": 64, "steps": 800, "lr": 1e-3, "warmup_steps": 20,  # before: see README
                        "synthetic_train_size": 4000, "synthetic_test_size": 500}
KEYS = ("map100/multilingual", "map100/monolingual", "map100/crosslingual")


TINY = {"steps": 4, "synthetic_train_size": 128, "synthetic_test_size": 40, "warmup_steps": 1}


def candidate_config(name: str, scale: float, points: int, cache: str, tiny: bool = False) -> tuple[dict, dict]:
    """(TrialConfig fields, open_clip config changes) of candidate ``name`` (``tiny``: a smoke size)."""
    fields, arch = CANDIDATES[name]
    values = {**BASE, **fields, **(TINY if tiny else {})}
    steps = int(round(values.pop("steps") * scale))
    values.update(epochs=points, steps_per_epoch=max(1, steps // points), eval_every=1, data_cache=cache)
    return values, arch


def _register(name: str, arch: dict) -> str:
    """Register the tiny config with ``arch`` applied as open_clip model ``mlclip-tiny-<name>``."""
    import open_clip

    from trainables.model import _CONFIG_DIR, TINY_NAME

    cfg = json.loads((_CONFIG_DIR / f"{TINY_NAME}.json").read_text())
    for key, value in arch.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    model = f"{TINY_NAME}-{name}"
    folder = Path(tempfile.mkdtemp(prefix="mlclip-tq-"))
    (folder / f"{model}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    return model


def run_candidate(job: tuple) -> list[dict]:
    """Train one candidate on one thread; returns one row per evaluation point."""
    name, scale, points, cache, tiny = job
    import torch

    torch.set_num_threads(1)
    from trainables.config import TrialConfig
    from trainables.languages import FAMILIES
    from trainables.session import LocalSession
    from trainables.train import train_worker

    values, arch = candidate_config(name, scale, points, cache, tiny)
    if arch:
        values["model"] = _register(name, arch)
    config = TrialConfig(**values)
    rows: list[dict] = []
    cpu = [0.0]

    class Recorder(LocalSession):
        def report(self, metrics, state=None):  # noqa: D102 - records instead of checkpointing
            cpu[0] += metrics["train/epoch_cpu_s"]
            families = [metrics[f"map100/multilingual/family/{f}"] for f in FAMILIES]
            rows.append({"candidate": name, "step": int(metrics["epoch"]) * config.steps_per_epoch,
                         "train_cpu_s": cpu[0], "ms_per_step": 1000 * metrics["train/epoch_cpu_s"] / metrics["train/steps"],
                         **{k: metrics[k] for k in KEYS}, "weakest_family": min(families),
                         "sinitic": metrics["map100/multilingual/family/sinitic"], "eval_s": metrics["eval/time_s"]})
            print(json.dumps(rows[-1]), flush=True)

    train_worker(config, Recorder())
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", help=f"candidates (default all): {', '.join(CANDIDATES)}")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every step budget (1.5: the stopping check)")
    p.add_argument("--points", type=int, default=4, help="evaluation points per candidate")
    add_run_args(p, "smoke run: 2 candidates, 4 steps, tiny data, a temp cache",
                 jobs_help="candidates trained at once (one thread each)")
    args = p.parse_args(argv)
    if args.tiny:
        args.only, args.points, args.jobs = args.only or ["default", "w64"], 2, 1
        args.data_cache = args.data_cache or tempfile.mkdtemp(prefix="mlclip-tq-cache-")
    names = args.only or list(CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        p.error(f"unknown candidate(s) {', '.join(unknown)}; known: {', '.join(CANDIDATES)}")
    from trainables.config import TrialConfig
    from trainables.data.synthetic import load_synthetic

    print(load_line(), flush=True)
    load_synthetic(TrialConfig(**candidate_config("default", 1, 1, args.data_cache, args.tiny)[0]))  # build the cache once
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(max(1, args.jobs)) as pool:
        jobs = [(n, args.scale, args.points, args.data_cache, args.tiny) for n in names]
        results = pool.map(run_candidate, jobs, chunksize=1)
    rows = [r for rs in results for r in rs]
    print_table(["candidate", "step", "train CPU s", "CPU ms/step", "multi", "mono", "cross", "weakest fam", "sinitic"],
                [[r["candidate"], r["step"], r["train_cpu_s"], r["ms_per_step"], r["map100/multilingual"],
                  r["map100/monolingual"], r["map100/crosslingual"], r["weakest_family"], r["sinitic"]] for r in rows],
                title=f"\ntime to quality (1 thread per candidate, {args.jobs} at once; {load_line()})")
    print(f"wall-clock {time.perf_counter() - t0:.0f} s")
    save_json(args.json, {"rows": rows, "scale": args.scale, "load": load_line()})
    return rows


if __name__ == "__main__":
    main()
