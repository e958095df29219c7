"""§2 The data pipeline: what each source delivers against what training consumes.

The trainer holds its whole train split in memory (:mod:`trainables.batches`), so the
sources below run once per trial, at set-up, and the step itself only waits on the
composer's slice and two in-memory gathers. This script measures both sides:

* samples/s of the synthetic generator, of loading the synthetic cache (what every trial
  does), of tokenising the captions, of the XTD loader (the synthetic test split, and a
  COCO-like folder of 640x480 JPEGs at 32 and 224 px) and of the WebDataset shard reader
  (``ShardStream`` and ``load_shards`` over 640x480 JPEGs);
* samples/s the real ``train_one_epoch`` consumes at the default settings, with the
  composer, the gather and the image transform timed inside it (thin timing proxies
  around the real objects), so the share of step time spent on data is measured, not
  estimated.

    python -m benchmarks.data                # defaults: the study's 4000/1000 synthetic sets
    python -m benchmarks.data --tiny         # seconds: a smoke run
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

from benchmarks._common import Clock, load_line, machine_info, print_table, save_json, set_threads, time_both


class TimedData:
    """Proxy of a :class:`TokenizedTrainSet` that adds up the seconds spent in ``batch``."""

    def __init__(self, data: Any) -> None:
        self.data, self.seconds = data, 0.0

    def batch(self, indices: torch.Tensor, lang_ids: torch.Tensor):
        start = time.perf_counter()
        out = self.data.batch(indices, lang_ids)
        self.seconds += time.perf_counter() - start
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.data, name)


class TimedComposer:
    """Proxy of a :class:`BatchComposer` timing ``local_batches`` (its plan and every slice)."""

    def __init__(self, composer: Any) -> None:
        self.composer, self.seconds = composer, 0.0

    def local_batches(self, epoch: int) -> Iterator:
        start = time.perf_counter()
        self.composer.plan_epoch(epoch)  # the plan, timed here (local_batches makes it on its first step)
        batches = self.composer.local_batches(epoch)
        self.seconds += time.perf_counter() - start
        return self._timed(batches)

    def _timed(self, batches: Iterator) -> Iterator:
        while True:
            start = time.perf_counter()
            try:
                item = next(batches)
            except StopIteration:
                self.seconds += time.perf_counter() - start
                return
            self.seconds += time.perf_counter() - start
            yield item

    def __getattr__(self, name: str) -> Any:
        return getattr(self.composer, name)


def timed_transform(transform: Callable, totals: dict) -> Callable:
    """``transform`` that adds its seconds to ``totals['transform']``."""
    def wrapped(images: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = transform(images)
        totals["transform"] += time.perf_counter() - start
        return out

    return wrapped


def training_consumption(config: Any, train_raw: Any, steps: Optional[int]) -> dict[str, float]:
    """One epoch of the real ``train_one_epoch`` with the data side timed inside it.

    Returns samples/s consumed and the seconds spent in the composer, the gather and the
    transform, each also as a share of the epoch.
    """
    from trainables.batches import tokenize_set
    from trainables.composer import BatchComposer
    from trainables.loss import make_clip_loss
    from trainables.model import build_model
    from trainables.session import LocalSession
    from trainables.train import TrialState, build_optimizer, train_one_epoch

    config = config.replace(steps_per_epoch=steps)
    torch.manual_seed(config.seed)
    bundle = build_model(config)
    data = TimedData(tokenize_set(train_raw, bundle.tokenize))
    composer = TimedComposer(BatchComposer.from_config(config, data.available, data.languages, 0, 1))
    optimizer, scheduler = build_optimizer(bundle.model, config, composer.num_steps(0) * 2)
    state = TrialState(bundle.model, optimizer, scheduler, composer)
    totals = {"transform": 0.0}
    transform = timed_transform(bundle.image_transform, totals)
    args = (data, make_clip_loss(0, 1), transform, config, LocalSession())
    train_one_epoch(state, *args)  # warm-up epoch, discarded
    state.epoch, data.seconds, composer.seconds, totals["transform"] = 1, 0.0, 0.0, 0.0
    clock = Clock()
    metrics = train_one_epoch(state, *args)
    spent = clock.elapsed()
    elapsed, samples = spent["wall"], metrics["train/steps"] * config.batch_size
    parts = {"composer": composer.seconds, "gather": data.seconds, "transform": totals["transform"]}
    out = {"steps": metrics["train/steps"], "epoch_s": elapsed, "cpu_s": spent["cpu"], "samples_per_s": samples /
           elapsed, "cpu_samples_per_s": samples / spent["cpu"], "step_ms": 1000 * elapsed / metrics["train/steps"]}
    for name, seconds in parts.items():
        out[f"{name}_s"], out[f"{name}_share"] = seconds, seconds / elapsed
    out["data_wait_share"] = (parts["composer"] + parts["gather"]) / elapsed
    return out


def _jpeg(image: np.ndarray, size: tuple[int, int] = (640, 480)) -> bytes:
    """A COCO-sized JPEG (quality 90) of a uint8 [3, H, W] image, upscaled."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image.transpose(1, 2, 0)).resize(size, Image.Resampling.BILINEAR).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write_coco_like_xtd(data: Any, folder: Path) -> Path:
    """An XTD-layout folder whose images are 640x480 JPEGs (like XTD10's COCO images)."""
    from trainables.data.types import ImageCaptionSet
    from trainables.data.xtd import write_xtd

    names = [f"{i:012d}.jpg" for i in range(len(data))]
    write_xtd(ImageCaptionSet(data.images, data.captions, names, {}), folder)  # captions + names
    for name, image in zip(names, data.images.numpy()):
        (folder / "images" / name).write_bytes(_jpeg(image))
    return folder


def write_shards(data: Any, folder: Path, per_shard: int) -> Path:
    """WebDataset shards of ``data`` with 640x480 JPEG images; returns the folder."""
    from trainables.data.shards import ShardWriter

    with ShardWriter(folder, per_shard=per_shard) as writer:
        for i, (image, captions) in enumerate(zip(data.images.numpy(), data.captions)):
            writer.add(f"{i:09d}", _jpeg(image), "jpg", captions)
    return folder


def source_rates(config: Any, train_raw: Any, test_dir: Path, args: argparse.Namespace, tmp: Path) -> list[dict]:
    """Samples/s of each source (median over ``args.reps`` runs)."""
    from trainables.batches import tokenize_set
    from trainables.data.shards import ShardStream, load_shards
    from trainables.data.synthetic import generate_synthetic, load_synthetic
    from trainables.data.xtd import load_xtd
    from trainables.model import build_model

    tokenize = build_model(config).tokenize
    coco = train_raw.select(range(min(args.jpeg_samples, len(train_raw))))
    xtd_dir = write_coco_like_xtd(coco, tmp / "xtd_jpeg")
    shard_dir = write_shards(coco, tmp / "shards", per_shard=max(1, len(coco) // 4))
    size = config.image_size
    cases: list[tuple[str, int, Callable[[], Any], int]] = [
        ("synthetic generator", args.gen_samples, lambda: generate_synthetic(args.gen_samples, 0, seed=7), 1),
        ("synthetic cache load (per trial)", len(train_raw), lambda: load_synthetic(config), args.reps),
        ("tokenise 11 captions (per trial)", len(train_raw), lambda: tokenize_set(train_raw, tokenize), args.reps),
        ("XTD loader, synthetic test split, 32 px PNG", config.synthetic_test_size,
         lambda: load_xtd(test_dir, image_size=size), args.reps),
        (f"XTD loader, 640x480 JPEG -> {size} px", len(coco), lambda: load_xtd(xtd_dir, image_size=size), args.reps),
        ("XTD loader, 640x480 JPEG -> 224 px", len(coco), lambda: load_xtd(xtd_dir, image_size=224), args.reps),
        (f"ShardStream, 640x480 JPEG -> {size} px", len(coco),
         lambda: sum(1 for _ in ShardStream(shard_dir, image_size=size, shuffle=False)), args.reps),
        (f"load_shards, 640x480 JPEG -> {size} px", len(coco), lambda: load_shards(shard_dir, image_size=size),
         args.reps),
    ]
    rows = []
    for name, samples, fn, reps in cases:
        seconds = time_both(fn, reps=reps, warmup=1 if reps > 1 else 0)
        rows.append({"source": name, "samples": samples, "seconds": seconds["wall"], "cpu_seconds": seconds["cpu"],
                     "samples_per_s": samples / seconds["wall"], "cpu_samples_per_s": samples / seconds["cpu"]})
    return rows


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Command-line options (``--tiny`` shrinks every size for a smoke run)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-size", type=int, default=4000, help="synthetic train samples (default: the study's 4000)")
    p.add_argument("--test-size", type=int, default=1000, help="synthetic test samples (default 1000, XTD's size)")
    p.add_argument("--batch", type=int, default=64, help="global batch of the training side (default 64)")
    p.add_argument("--train-steps", type=int, default=None, help="steps of the timed epoch (default: a full pass)")
    p.add_argument("--gen-samples", type=int, default=200, help="samples the generator makes when timed")
    p.add_argument("--jpeg-samples", type=int, default=200, help="samples of the JPEG XTD folder and shards")
    p.add_argument("--reps", type=int, default=3, help="repetitions per source (median)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a 1-CPU Ray Train worker)")
    p.add_argument("--data-cache", help="synthetic data cache (default: the project's, ~/.cache/mlclip-study)")
    p.add_argument("--tiny", action="store_true", help="smoke run on a few samples in a temporary cache")
    p.add_argument("--json", help="save the figures to this JSON file")
    args = p.parse_args(argv)
    if args.tiny:
        args.train_size, args.test_size, args.batch, args.train_steps = 96, 32, 16, 2
        args.gen_samples, args.jpeg_samples, args.reps = 8, 8, 1
    return args


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    """Run the benchmark, print its tables, return (and optionally save) the figures."""
    from trainables.config import TrialConfig
    from trainables.data.synthetic import load_synthetic

    args = parse_args(argv)
    threads = set_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="mlclip-bench-data-") as tmp:
        cache = args.data_cache or (str(Path(tmp) / "cache") if args.tiny else None)
        config = TrialConfig(batch_size=args.batch, synthetic_train_size=args.train_size,
                             synthetic_test_size=args.test_size, data_cache=cache)
        train_raw, test_dir = load_synthetic(config)  # generates the cache once if it is missing
        train = training_consumption(config, train_raw, args.train_steps)
        rows = source_rates(config, train_raw, test_dir, args, Path(tmp))
    for row in rows:
        row["x_training"] = row["samples_per_s"] / train["samples_per_s"]
        row["cpu_x_training"] = row["cpu_samples_per_s"] / train["cpu_samples_per_s"]
    print(f"\nData sources vs training consumption (batch {args.batch}, tiny model, {threads} thread(s); "
          f"{load_line()})\n")
    print_table(["source", "samples", "wall s", "samples/s", "x training", "CPU s", "CPU samples/s", "x training"],
                [[r["source"], r["samples"], r["seconds"], r["samples_per_s"], r["x_training"], r["cpu_seconds"],
                  r["cpu_samples_per_s"], r["cpu_x_training"]] for r in rows]
                + [["training consumes (train_one_epoch)", int(train["steps"] * args.batch), train["epoch_s"],
                    train["samples_per_s"], 1.0, train["cpu_s"], train["cpu_samples_per_s"], 1.0]])
    print(f"\nInside one epoch of train_one_epoch ({int(train['steps'])} steps, {train['step_ms']:.1f} ms/step wall; "
          "the parts are wall-clock seconds):\n")
    print_table(["part of the step", "seconds", "% of epoch"],
                [[name, train[f"{name}_s"], 100 * train[f"{name}_share"]] for name in ("composer", "gather", "transform")]
                + [["waiting on data (composer + gather)", train["composer_s"] + train["gather_s"],
                    100 * train["data_wait_share"]]])
    result = {"benchmark": "data", "machine": machine_info(threads), "args": vars(args), "sources": rows,
              "training": train}
    save_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
