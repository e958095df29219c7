"""GPU check: the per-worker training function (no Ray) with bf16 autocast on one GPU.

For each model (the tiny default and a ViT-B-32-sized CLIP built from open_clip's
config with random init, so nothing is downloaded) it runs the project's own
``train_worker`` for two epochs of ``--steps`` steps on the synthetic data and
reads the second (warm) epoch's throughput. It also times a bare loop written
directly on open_clip (same model, batch, optimiser, data already on the GPU), so
the project's overhead is a ratio measured in the same run, and derives model
FLOPs utilisation from FLOPs counted by ``torch.utils.flop_counter``.

    python -m benchmarks.gpu_step --steps 200 --out results.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from trainables.config import TrialConfig
from trainables.model import build_model
from trainables.session import LocalSession
from trainables.train import train_worker

# Dense bf16 peak (TFLOP/s) of the cards this is run on; the SXM parts' datasheet figures.
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}


def peak_tflops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device_name), None)


CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"  # CPU only for smoke-testing this script


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def project_step(config: TrialConfig) -> dict:
    """Two epochs of the real per-worker loop; throughput of the second one."""
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    session = LocalSession(use_gpu=CUDA)
    reports = train_worker(config, session)
    warm = reports[-1]
    return {
        "samples_per_s": warm["train/samples_per_s"],
        "step_ms": 1000 * warm["train/epoch_time_s"] / warm["train/steps"],
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if CUDA else float("nan"),
        "map100_multilingual": warm.get("map100/multilingual", float("nan")),
    }


def bare_step(config: TrialConfig, steps: int) -> dict:
    """The same model and batch trained by a minimal open_clip loop; data pre-staged on the GPU."""
    from open_clip.loss import ClipLoss

    torch.manual_seed(0)
    bundle = build_model(config, device=DEVICE)
    model, b = bundle.model, config.batch_size
    images = bundle.image_transform(torch.randint(0, 256, (b, 3, config.image_size, config.image_size),
                                                  dtype=torch.uint8, device=DEVICE))
    tokens = torch.randint(1, 49000, (b, bundle.context_length), device=DEVICE)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = ClipLoss()

    def step():
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=CUDA):
            out = model(images, tokens)
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(min(10, steps)):
        step()
    times = []
    for _ in range(3):
        _sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        _sync()
        times.append((time.perf_counter() - t0) / steps)
    flops = step_flops(step)
    med = statistics.median(times)
    return {"samples_per_s": b / med, "step_ms": 1000 * med, "flops_per_step": flops}


def step_flops(step) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", default=None)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--models", default="tiny:1024,ViT-B-32:256", help="model:batch,...")
    args = parser.parse_args()
    name = torch.cuda.get_device_name() if CUDA else "cpu"
    rows = []
    for item in args.models.split(","):
        model, batch = item.split(":")
        config = TrialConfig(model=model, batch_size=int(batch), epochs=2, steps_per_epoch=args.steps,
                             use_gpu=CUDA, precision="bf16" if CUDA else "fp32", eval_every=2,
                             warmup_steps=10, synthetic_test_size=args.test_size)
        project = project_step(config)
        bare = bare_step(config, min(args.steps, 100))
        peak = peak_tflops(name)
        achieved = bare["flops_per_step"] * project["samples_per_s"] / config.batch_size / 1e12
        rows.append({"model": model, "batch": int(batch), "device": name, **{f"project_{k}": v for k, v in project.items()},
                     **{f"bare_{k}": v for k, v in bare.items()},
                     "overhead_ratio": bare["samples_per_s"] / project["samples_per_s"],
                     "achieved_tflops": achieved, "mfu": achieved / peak if peak else None})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'model':10} {'batch':>5} {'samples/s':>10} {'bare/s':>10} {'ratio':>6} {'peak GiB':>8} {'TFLOP/s':>8} {'MFU':>6}")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(f"{r['model']:10} {r['batch']:5d} {r['project_samples_per_s']:10.0f} {r['bare_samples_per_s']:10.0f} "
              f"{r['overhead_ratio']:6.3f} {r['project_peak_mem_gib']:8.2f} {r['achieved_tflops']:8.1f} {mfu:>6}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
