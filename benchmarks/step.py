"""§1 The training step: the project's per-worker step against a bare open_clip loop.

The *project step* is :func:`trainables.train.train_one_epoch` itself, driven block by
block (each block is one "epoch" of ``--steps`` steps): the composer's plan and slices,
the in-memory gather (:meth:`TokenizedTrainSet.batch`), the image transform, the model,
open_clip's ``ClipLoss`` (through :func:`make_clip_loss`), AdamW with the LR schedule
(:func:`build_optimizer`), gradient clipping and the logit-scale clamp.

The *bare loop* is what one writes directly on open_clip: the same model (a copy of the
same initial weights), the same ``ClipLoss``, AdamW with the same settings, and batches
already gathered and transformed in memory: forward, loss, ``zero_grad``, backward, step.

Variants run interleaved (A, B, C, A, B, C, ...) after a warm-up round; the figure of a
variant is the median seconds per step over its blocks, and every comparison is a ratio
of two such medians from the same run. A second table times each piece of the project
step on its own, so the difference can be attributed.

    python -m benchmarks.step                 # defaults: tiny model, batch 64, 1 thread
    python -m benchmarks.step --tiny          # seconds: a smoke run
    python -m benchmarks.step --json step.json
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from benchmarks._common import (Clock, interleaved, load_line, machine_info, median, print_table, save_json,
                                set_threads, time_call)


@dataclass
class Setup:
    """What every variant shares: config, model bundle (initial weights), in-memory data."""

    config: Any
    bundle: Any
    data: Any
    initial: dict


def build_setup(batch: int, steps: int, model: str = "tiny", train_size: Optional[int] = None) -> Setup:
    """Tiny-model config with ``steps`` steps per epoch, the model, and a tokenised synthetic set."""
    from trainables.batches import tokenize_set
    from trainables.config import TrialConfig
    from trainables.data.synthetic import generate_synthetic
    from trainables.model import build_model

    config = TrialConfig(model=model, batch_size=batch, steps_per_epoch=steps, epochs=10_000)
    torch.manual_seed(config.seed)
    bundle = build_model(config)
    size = train_size or max(4 * batch, 256)
    train, _ = generate_synthetic(size, 0, image_size=bundle.image_size, seed=0)
    data = tokenize_set(train, bundle.tokenize)
    return Setup(config, bundle, data, copy.deepcopy(bundle.model.state_dict()))


def _fresh_model(setup: Setup) -> torch.nn.Module:
    model = copy.deepcopy(setup.bundle.model)
    model.load_state_dict(setup.initial)
    return model


def fused_optimizer(model: torch.nn.Module, config: Any, total_steps: int):
    """The project's optimiser and schedule with ``fused=True`` AdamW (the proposed change).

    Same parameter groups, weight decay, betas, eps and LR lambda as
    :func:`trainables.train.build_optimizer`; only the AdamW kernel differs.
    """
    from trainables.train import build_optimizer

    plain, schedule = build_optimizer(model, config, total_steps)
    groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in plain.param_groups]
    defaults = plain.defaults
    optimizer = torch.optim.AdamW(groups, lr=defaults["lr"], betas=defaults["betas"], eps=defaults["eps"], fused=True)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.lr_lambdas[0])


def project_runner(setup: Setup, fused: bool = False, **changes: Any) -> Callable[[], dict]:
    """A callable running one block of the real ``train_one_epoch``; returns seconds per step."""
    from trainables.composer import BatchComposer
    from trainables.loss import make_clip_loss
    from trainables.session import LocalSession
    from trainables.train import TrialState, build_optimizer, train_one_epoch

    config = setup.config.replace(**changes) if changes else setup.config
    model = _fresh_model(setup)
    build = fused_optimizer if fused else build_optimizer
    optimizer, scheduler = build(model, config, config.steps_per_epoch * config.epochs)
    composer = BatchComposer.from_config(config, setup.data.available, setup.data.languages, 0, 1)
    state = TrialState(model, optimizer, scheduler, composer)
    loss_fn, session = make_clip_loss(0, 1), LocalSession()

    def block() -> dict[str, float]:
        clock = Clock()
        metrics = train_one_epoch(state, setup.data, loss_fn, setup.bundle.image_transform, config, session)
        state.epoch += 1
        return clock.elapsed(per=metrics["train/steps"])

    return block


def open_clip_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """open_clip's own training script's groups: no decay on gains, biases and the logit scale."""
    def exclude(name: str, p: torch.nn.Parameter) -> bool:
        return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
            {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": weight_decay}]


def staged_batches(setup: Setup, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` batches of the composer's epoch-0 plan, gathered and transformed up front."""
    from trainables.composer import BatchComposer

    config = setup.config.replace(steps_per_epoch=count)
    composer = BatchComposer.from_config(config, setup.data.available, setup.data.languages, 0, 1)
    plan = composer.plan_epoch(0)
    out = []
    for step in range(count):
        images, tokens = setup.data.batch(plan.indices[step], plan.lang_ids[step])
        out.append((setup.bundle.image_transform(images), tokens))
    return out


def bare_runner(setup: Setup, fused: bool = False) -> Callable[[], dict]:
    """A callable running one block of a minimal open_clip loop; returns seconds per step."""
    from open_clip.loss import ClipLoss

    config = setup.config
    model = _fresh_model(setup)
    optimizer = torch.optim.AdamW(open_clip_param_groups(model, config.weight_decay), lr=config.lr,
                                  betas=(0.9, 0.98), eps=1e-6, fused=fused or None)
    loss_fn = ClipLoss()
    batches = staged_batches(setup, config.steps_per_epoch)
    model.train()

    def block() -> dict[str, float]:
        clock = Clock()
        for images, tokens in batches:
            out = model(images, tokens)
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return clock.elapsed(per=len(batches))

    return block


VARIANTS = {
    "bare": "bare open_clip loop",
    "project": "project step (train_one_epoch, defaults)",
    "project_noclip": "project step, grad_clip=0",
    "bare_fused": "bare loop, fused AdamW",
    "project_fused": "project step, fused AdamW (proposed)",
}


def make_variants(setup: Setup, names: list[str]) -> dict[str, Callable[[], dict]]:
    """The selected variants' block runners (each with its own model copy and optimiser)."""
    makers = {
        "bare": lambda: bare_runner(setup),
        "project": lambda: project_runner(setup),
        "project_noclip": lambda: project_runner(setup, grad_clip=0.0),
        "bare_fused": lambda: bare_runner(setup, fused=True),
        "project_fused": lambda: project_runner(setup, fused=True),
    }
    return {name: makers[name]() for name in names}


def _copy_grads(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Give ``target`` (a copy of the same architecture) clones of ``source``'s gradients."""
    for p, q in zip(source.parameters(), target.parameters()):
        q.grad = None if p.grad is None else p.grad.clone()


def component_costs(setup: Setup, reps: int, epoch_size: int) -> dict[str, float]:
    """Median CPU milliseconds per step of each piece of the project step, timed on its own.

    ``epoch_size``: training samples of a real epoch (the composer's plan is made once
    per epoch, so its cost is divided by that epoch's number of steps).
    """
    from trainables.composer import BatchComposer
    from trainables.loss import make_clip_loss
    from trainables.train import build_optimizer

    config, data, transform = setup.config, setup.data, setup.bundle.image_transform
    model, fused_model = _fresh_model(setup), _fresh_model(setup)
    optimizer, scheduler = build_optimizer(model, config, 10_000)
    fused, _ = fused_optimizer(fused_model, config, 10_000)
    loss_fn = make_clip_loss(0, 1)
    available = torch.ones(epoch_size, len(data.languages), dtype=torch.bool)
    composer = BatchComposer.from_config(config.replace(steps_per_epoch=None), available, data.languages, 0, 1)
    steps, plan, epochs = composer.num_steps(0), composer.plan_epoch(0), iter(range(1, 10**9))
    indices, lang_ids = plan.indices[0] % len(data), plan.lang_ids[0]
    images, tokens = data.batch(indices, lang_ids)
    x, loss_sum = transform(images), torch.zeros(())

    def forward() -> torch.Tensor:
        out = model(x, tokens)
        return loss_fn(out["image_features"], out["text_features"], out["logit_scale"])

    def backward() -> None:
        optimizer.zero_grad(set_to_none=True)
        forward().backward()

    def accumulate() -> None:
        nonlocal loss_sum
        loss_sum += loss.detach().float()

    backward()
    _copy_grads(model, fused_model)
    loss = forward().detach()
    pieces: dict[str, Callable[[], Any]] = {
        "composer plan (per epoch / steps)": lambda: composer.plan_epoch(next(epochs)),
        "composer slice (local_batches)": lambda: next(composer.local_batches(plan.epoch)),  # re-plans once
        "gather (TokenizedTrainSet.batch)": lambda: data.batch(indices, lang_ids),
        "image transform": lambda: transform(images),
        "forward + ClipLoss": forward,
        "zero_grad + forward + backward": backward,
        "clip_grad_norm_": lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip),
        "clip_grad_norm_(foreach=True)": lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip,
                                                                                 foreach=True),
        "AdamW step (default)": optimizer.step,
        "AdamW step (fused=True)": fused.step,
        "LR scheduler step": scheduler.step,
        "logit-scale clamp": lambda: model.logit_scale.data.clamp_(0, math.log(100)),
        "loss accumulation": accumulate,
    }
    out = {}
    for name, fn in pieces.items():
        heavy = name in ("forward + ClipLoss", "zero_grad + forward + backward")
        ms = 1000 * median(time_call(fn, reps=reps if heavy else 5 * reps, warmup=2, clock=time.process_time))
        out[name] = ms / steps if name.startswith("composer plan") else ms
    return out


def _params(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def fused_matches(setup: Setup, steps: int = 3) -> float:
    """Largest absolute parameter difference after ``steps`` identical steps, default vs fused AdamW."""
    from trainables.loss import make_clip_loss
    from trainables.train import build_optimizer

    batches = staged_batches(setup, steps)
    finals = []
    for build in (build_optimizer, fused_optimizer):
        model = _fresh_model(setup)
        optimizer, scheduler = build(model, setup.config, 100)
        loss_fn = make_clip_loss(0, 1)
        for images, tokens in batches:
            out = model(images, tokens)
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), setup.config.grad_clip)
            optimizer.step()
            scheduler.step()
        finals.append([p.detach().clone() for p in model.parameters()])
    return max(float((a - b).abs().max()) for a, b in zip(*finals))
def summarize(times: dict[str, list[dict]], batch: int) -> list[dict[str, Any]]:
    """One row per variant: median ms/step (wall and CPU), wall spread, samples/s, ratios to bare."""
    def med(name: str, clock: str) -> float:
        return median(t[clock] for t in times[name])

    rows = []
    for name, values in times.items():
        wall, cpu = med(name, "wall"), med(name, "cpu")
        walls = [t["wall"] for t in values]
        rows.append({"variant": name, "what": VARIANTS[name], "wall_ms": 1000 * wall, "cpu_ms": 1000 * cpu,
                     "wall_min_ms": 1000 * min(walls), "wall_max_ms": 1000 * max(walls),
                     "samples_per_s": batch / wall,
                     "wall_x_bare": wall / med("bare", "wall") if "bare" in times else float("nan"),
                     "cpu_x_bare": cpu / med("bare", "cpu") if "bare" in times else float("nan")})
    return rows


RATIOS = {"project / bare (goal <= 1.05)": ("project", "bare"),
          "project grad_clip=0 / bare": ("project_noclip", "bare"),
          "project fused / bare fused": ("project_fused", "bare_fused"),
          "project fused / project (proposed change)": ("project_fused", "project")}


def key_ratios(times: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """The comparisons that matter, each a ratio of two medians of this run (wall and CPU)."""
    out = {}
    for label, (a, b) in RATIOS.items():
        if a in times and b in times:
            out[label] = {clock: median(t[clock] for t in times[a]) / median(t[clock] for t in times[b])
                          for clock in ("wall", "cpu")}
    return out


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Command-line options (``--tiny`` shrinks every size for a smoke run)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64, help="per-worker batch (default 64, the study's)")
    p.add_argument("--steps", type=int, default=6, help="steps per timed block (default 6)")
    p.add_argument("--reps", type=int, default=9, help="timed blocks per variant, after one warm-up round")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a 1-CPU Ray Train worker)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--epoch-size", type=int, default=4000, help="samples of a real epoch, for the composer's plan cost")
    p.add_argument("--tiny", action="store_true", help="smoke run: batch 16, 2 steps, 1 rep")
    p.add_argument("--json", help="save the figures to this JSON file")
    args = p.parse_args(argv)
    if args.tiny:
        args.batch, args.steps, args.reps, args.epoch_size = 16, 2, 1, 256
    return args


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    """Run the benchmark, print its tables, return (and optionally save) the figures."""
    args = parse_args(argv)
    threads = set_threads(args.threads)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variant(s): {', '.join(unknown)}")
    setup = build_setup(args.batch, args.steps)
    times = interleaved(make_variants(setup, names), reps=args.reps, warmup=1)
    rows = summarize(times, args.batch)
    print(f"\nTraining step, tiny model, batch {args.batch}, {threads} thread(s), {args.reps} blocks of "
          f"{args.steps} steps per variant (medians; {load_line()})\n")
    print_table(["variant", "wall ms/step", "(min", "max)", "CPU ms/step", "samples/s", "wall x bare", "CPU x bare"],
                [[r["variant"], r["wall_ms"], r["wall_min_ms"], r["wall_max_ms"], r["cpu_ms"], r["samples_per_s"],
                  r["wall_x_bare"], r["cpu_x_bare"]] for r in rows])
    ratios = key_ratios(times)
    print()
    print_table(["ratio of medians", "wall", "CPU"], [[k, v["wall"], v["cpu"]] for k, v in ratios.items()])
    parts = component_costs(setup, reps=max(args.reps, 3), epoch_size=args.epoch_size)
    step_ms = median(t["cpu"] for t in times["project"]) * 1000 if "project" in times else float("nan")
    print(f"\nPieces of the project step, each timed alone (median CPU ms; % of the project step's CPU ms; {load_line()})\n")
    print_table(["piece", "ms/step", "% of step"], [[k, v, 100 * v / step_ms] for k, v in parts.items()])
    diff = fused_matches(setup)
    print(f"\nfused vs default AdamW, 3 identical steps: largest parameter difference {diff:.2e}")
    result = {"benchmark": "step", "machine": machine_info(threads), "args": vars(args), "variants": rows,
              "ratios": ratios, "pieces_ms": parts, "fused_max_abs_diff": diff,
              "raw_seconds_per_step": times}
    save_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
