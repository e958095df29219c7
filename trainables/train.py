"""The per-worker training function: one trial's training loop, in labelled phases.

``train_worker(config, session, tracking)`` is what every Ray Train worker runs
(through :func:`trainables.driver.ray_worker_entry`) and what tests and profilers
call directly with a :class:`~trainables.session.LocalSession` (no Ray).

Phases: setup -> data -> model -> optimiser -> resume -> epochs (train, evaluate,
report + checkpoint). Each epoch reports one flat metrics dict: evaluation metrics
from :mod:`trainables.evaluate`, realised composition from the composer, and
``train/*`` figures (loss, throughput).

Rank 0 evaluates every ``eval_every`` epochs and after the last. The evaluations before the
last epoch rank only the first ``config.intermediate_eval_images`` test images (the learning
curve, at a fraction of the cost); the last one ranks the whole split (the study's objective
and the per-query arrays of its answer). Both report the same metric names, so MLflow shows
one curve per metric; ``eval/images`` says how many images each point ranked.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Optional

import torch

from trainables.batches import cached_tokenize_set
from trainables.composer import BatchComposer
from trainables.config import ConfigError, TrialConfig, resume_differences
from trainables.data.sources import check_eval_data, load_train_set
from trainables.data.synthetic import cache_root
from trainables.data.types import ImageCaptionSet
from trainables.data.xtd import load_xtd
from trainables.errors import is_out_of_space, naming_full
from trainables.evaluate import embed_dataset, evaluate_embeddings
from trainables.languages import LANGUAGES
from trainables.loss import clamp_logit_scale_, make_clip_loss
from trainables.model import build_model, make_tokenizer
from trainables.progress import epoch_progress
from trainables.session import LocalSession, Session, UnsafeCheckpointError  # noqa: F401 - re-exported
from trainables.stream import StreamComposer, StreamTrainSet
from trainables.tokenizer import captions_digest
from trainables.trial_run import TrialRun

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN/inf. The last good checkpoint is kept."""


@dataclass
class TrialState:
    """Everything the epoch loop mutates, in one place (and in each checkpoint)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    composer: Any
    epoch: int = 0  # next epoch to run


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------
def load_datasets(config: TrialConfig) -> tuple[Any, Any]:
    """The raw training split and the XTD-format evaluation set of ``config``.

    The raw split is an :class:`~trainables.data.types.ImageCaptionSet` in memory, or None with
    ``train_loading="stream"`` (each rank reads its shards later, see :func:`train_set`).
    """
    if config.train_loading == "stream":
        train_raw, default_eval_dir = None, check_eval_data(config)
    else:
        train_raw, default_eval_dir = load_train_set(config)
    eval_dir = default_eval_dir if config.eval_data == "synthetic" else config.eval_data
    eval_set = load_xtd(
        eval_dir,
        config.images_dir if config.eval_data != "synthetic" else None,
        allow_missing_images=config.allow_missing_images,
        unreadable_policy=config.unreadable_image_policy,
        image_size=config.image_size,
    )
    return train_raw, eval_set


def first_images(eval_set: Any, n: Optional[int]) -> Any:
    """The first ``n`` images of an :class:`~trainables.data.types.ImageCaptionSet` and their captions,
    in the set's order (``eval_set`` itself when ``n`` is None or covers it all).

    The evaluations before a trial's last epoch use ``first_images(eval_set,
    config.intermediate_eval_images)``: the same images at every epoch and in every trial, so a
    learning curve's points compare across trials. The images are a view, not a copy.
    """
    if n is None or n >= len(eval_set):
        return eval_set

    return ImageCaptionSet(eval_set.images[:n], list(eval_set.captions[:n]), list(eval_set.names[:n]),
                           dict(eval_set.skipped))


def train_set(config: TrialConfig, train_raw: Any, tokenizer, rank: int = 0, world_size: int = 1,
              digest: Optional[str] = None) -> Any:
    """The train set the step consumes: a :class:`~trainables.batches.TokenizedTrainSet` (tokenised
    once, cached in the data cache), or with ``train_loading="stream"`` this rank's
    :class:`~trainables.stream.StreamTrainSet`. ``digest``: the
    :func:`~trainables.tokenizer.captions_digest` of ``train_raw``'s captions, if known."""
    if train_raw is None:
        return StreamTrainSet(config, tokenizer.tokenize, rank, world_size)
    return cached_tokenize_set(train_raw, tokenizer, cache_root(config), digest=digest)


def make_composer(config: TrialConfig, data: Any, rank: int, world_size: int) -> Any:
    """The composer that matches ``data``: planned epochs in memory, per-step draws for a stream."""
    if isinstance(data, StreamTrainSet):
        return StreamComposer.from_config(config, LANGUAGES, rank, world_size, data.nominal_steps)
    return BatchComposer.from_config(config, data.available, data.languages, rank, world_size)


# ---------------------------------------------------------------------------
# optimiser
# ---------------------------------------------------------------------------
def build_optimizer(model: torch.nn.Module, config: TrialConfig, total_steps: int):
    """AdamW with no weight decay on gains, biases and the logit scale; linear warm-up, cosine decay."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "logit_scale" in name or "bias" in name else decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, betas=(0.9, 0.98), eps=1e-6,
        fused=True,  # one kernel for all parameters: faster on CPU (measured: benchmarks/step.py)
    )
    warmup = min(config.warmup_steps, max(total_steps // 2, 1))

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(total_steps - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)


# ---------------------------------------------------------------------------
# one epoch
# ---------------------------------------------------------------------------
def train_one_epoch(state: TrialState, data: Any, loss_fn, transform, config: TrialConfig,
                    session: Session) -> dict[str, float]:
    """Run this rank's share of every global step of ``state.epoch``; returns ``train/*`` metrics.

    ``data`` is a :class:`~trainables.batches.TokenizedTrainSet` or a
    :class:`~trainables.stream.StreamTrainSet`: its ``epoch_batches(composer, epoch)`` yields
    ``(step, uint8 images [b, 3, H, W], int64 tokens [b, C])``.

    The loss is accumulated on the device and read back only every ``check_every``
    steps, so a GPU never waits on the host each step; a non-finite loss is caught
    at the next read and stops the trial before it is checkpointed. Rank 0 shows the
    step, loss, throughput and ETA every few seconds (:mod:`trainables.progress`).
    """
    model, device = state.model, session.device
    model.train()
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if _use_bf16(config, device) else nullcontext())
    loss_sum = torch.zeros((), device=device)
    steps, check_every, t0, cpu0 = 0, 25, time.perf_counter(), time.process_time()
    progress = epoch_progress(config, state.epoch, state.composer.num_steps(state.epoch), session.rank)
    for step, images, tokens in data.epoch_batches(state.composer, state.epoch):
        images = transform(images.to(device, non_blocking=True))
        tokens = tokens.to(device, non_blocking=True)
        with autocast:
            out = model(images, tokens)
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        state.optimizer.step()
        state.scheduler.step()
        clamp_logit_scale_(_unwrap(model).logit_scale)  # as open_clip: logit scale <= 100 (temperature >= 0.01)
        loss_sum += loss.detach().float()
        steps += 1
        if steps % check_every == 0:
            _check_finite(loss_sum, state.epoch + 1, step)
        progress.update(steps, loss_sum)
    progress.close()
    _check_finite(loss_sum, state.epoch + 1, "end")
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    samples = steps * config.batch_size  # global samples: every rank ran the same number of steps
    return {
        "train/loss": float(loss_sum) / max(steps, 1),
        "train/steps": float(steps),
        "train/epoch_time_s": elapsed,
        "train/epoch_cpu_s": cpu,  # this process's CPU seconds (all its threads): steadier than wall on a shared machine
        "train/samples_per_s": samples / elapsed if elapsed > 0 else 0.0,
        "train/lr": float(state.scheduler.get_last_lr()[0]),
        "train/temperature": float(1.0 / _unwrap(model).logit_scale.detach().exp()),
    }


def _check_finite(loss_sum: torch.Tensor, epoch: int, step) -> None:
    if not torch.isfinite(loss_sum):
        raise NonFiniteLossError(
            f"non-finite training loss in epoch {epoch} (detected at step {step}); "
            "the trial stops and keeps its last good checkpoint"
        )


def _use_bf16(config: TrialConfig, device: torch.device) -> bool:
    return device.type == "cuda" and config.precision in ("auto", "bf16")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


# ---------------------------------------------------------------------------
# evaluation and checkpoints
# ---------------------------------------------------------------------------
def evaluate(model: torch.nn.Module, bundle, eval_set, config: TrialConfig, device,
             per_query: Optional[dict] = None) -> dict[str, float]:
    """XTD-format retrieval metrics of the current model on every image of ``eval_set`` (see
    :mod:`trainables.evaluate`), plus ``eval/time_s`` and ``eval/images`` (how many test images
    were ranked); ``per_query`` (a dict) is filled with every query's AP.

    :func:`train_worker` passes the whole test split after the last epoch and its first
    ``config.intermediate_eval_images`` images (:func:`first_images`) before: the metric names
    are the same either way (one learning curve in MLflow), ``eval/images`` tells them apart.
    """
    t0 = time.perf_counter()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if _use_bf16(config, device) else nullcontext()
    with autocast:
        image_emb, text_emb = embed_dataset(_unwrap(model), bundle.tokenize, bundle.image_transform, eval_set, device)
    metrics = evaluate_embeddings(image_emb.float(), {k: v.float() for k, v in text_emb.items()}, k=config.eval_k,
                                  per_query=per_query)
    metrics["eval/time_s"] = time.perf_counter() - t0
    metrics["eval/images"] = float(len(eval_set))
    return metrics


def checkpoint_state(state: TrialState, config: TrialConfig,
                     metrics: Optional[dict[str, float]] = None) -> dict[str, Any]:
    """Plain state for ``torch.save``: loadable with ``weights_only=True``.

    ``metrics`` (the epoch's reported metrics, plain floats) are kept so that a run restored
    after its last epoch can report them again (see :func:`train_worker`).
    """
    return {
        "model": _unwrap(state.model).state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "composer": state.composer.state_dict(),
        "epoch": state.epoch,
        "config": config.to_dict(),
        "metrics": {str(k): float(v) for k, v in (metrics or {}).items()},
    }


def check_resumable(saved: Optional[dict[str, Any]], config: TrialConfig) -> None:
    """Refuse a checkpoint written under other settings (ConfigError, one line naming the fields).

    A restarted worker group or a resumed study could otherwise continue silently with, say,
    another learning rate or more epochs (another schedule): the checkpoint's config must match
    the running one in every field but :data:`~trainables.config.RESUMABLE_FIELDS` (where the
    cache lives, how the work is spread).
    """
    changed = resume_differences((saved or {}).get("config") or {}, config)
    if changed:
        raise ConfigError(f"the checkpoint to resume from was written with other settings: {'; '.join(changed)}; "
                          "start the trial afresh (another study name) or restore those settings")


def restore(state: TrialState, saved: dict[str, Any]) -> None:
    """Continue from checkpoint ``saved`` (checked by :func:`check_resumable`)."""
    _unwrap(state.model).load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    state.composer.load_state_dict(saved["composer"])
    state.epoch = int(saved["epoch"]) + 1


# ---------------------------------------------------------------------------
# the per-worker function
# ---------------------------------------------------------------------------
def train_worker(config: TrialConfig, session: Session, tracking=None) -> list[dict[str, float]]:
    """Train and evaluate one trial on this worker; returns the per-epoch metrics it reported.

    Inputs: a validated ``config``; a ``session`` (rank, world size, device,
    report/resume); optional MLflow ``tracking`` info, used by rank 0 only.
    """
    # --- resume check first: a checkpoint of other settings is refused before any setup work
    saved = session.latest_state()
    check_resumable(saved, config)

    # --- data: the raw split first, since the corpus tokenizer is trained on its captions; what is
    # written meanwhile goes to the data cache, which a full disk names (trainables.errors.naming_full)
    cache = str(cache_root(config))
    with naming_full("data_cache", cache):
        train_raw, eval_set = load_datasets(config)
    # evaluations before the last epoch rank the first images of the test split only (the learning
    # curve, at a fraction of the cost); the last one ranks them all (the objective, per-query arrays)
    intermediate_set = first_images(eval_set, config.intermediate_eval_images)
    # the captions' digest keys both the tokenizer cache and the tokenised-set cache: computed once
    digest = captions_digest(train_raw.captions) if train_raw is not None else None
    with naming_full("data_cache", cache):
        tokenizer = make_tokenizer(config, train_raw.captions if train_raw is not None else None, digest)

    # --- model: the same seed on every rank, so every rank builds the same model
    torch.manual_seed(config.seed)
    bundle = build_model(config, device=session.device, tokenizer=tokenizer)

    # --- tokenised once and cached (or streamed per rank); the composer decides (sample, language) per step
    with naming_full("data_cache", cache):
        data = train_set(config, train_raw, tokenizer, session.rank, session.world_size, digest)
    truncated = float(getattr(data, "truncated_share", 0.0))
    if truncated > 0 and session.rank == 0:
        log.warning("context_length=%d cuts off %.1f%% of the training captions (data/truncated_share); the "
                    "longest has %s tokens", tokenizer.context_length, 100 * truncated, tokenizer.longest or "more")
    composer = make_composer(config, data, session.rank, session.world_size)
    steps_per_epoch = composer.num_steps(0)

    # --- model and optimiser (DDP wrapping happens only with several workers)
    model = _wrap_ddp(bundle.model, session)
    optimizer, scheduler = build_optimizer(model, config, steps_per_epoch * config.epochs)
    state = TrialState(model, optimizer, scheduler, composer)
    loss_fn = make_clip_loss(session.rank, session.world_size)

    # --- resume: a restarted worker group continues after the last finished epoch
    if saved is not None:
        restore(state, saved)
    run = TrialRun(tracking if session.rank == 0 else None, config, steps_per_epoch)
    reports: list[dict[str, float]] = []
    try:
        if saved is not None and state.epoch >= config.epochs:
            reports.append(_report_again(saved, session, run))
        while state.epoch < config.epochs:
            metrics = {"epoch": float(state.epoch + 1)}
            metrics.update(train_one_epoch(state, data, loss_fn, bundle.image_transform, config, session))
            metrics.update(composer.stats())
            last = state.epoch + 1 == config.epochs
            if session.rank == 0 and ((state.epoch + 1) % config.eval_every == 0 or last):
                per_query: Optional[dict] = {} if last else None  # the answer's intervals use the final evaluation
                metrics.update(evaluate(model, bundle, eval_set if last else intermediate_set, config,
                                        session.device, per_query))
                run.log_per_query(per_query or {})
            metrics.update({f"data/{k}": float(v) for k, v in data.skipped.items()})
            metrics["data/truncated_share"] = truncated
            run.log_epoch(metrics, epoch=state.epoch + 1)
            session.report(metrics, checkpoint_state(state, config, metrics) if session.rank == 0 else None)
            reports.append(metrics)
            state.epoch += 1
    except BaseException as err:
        # a full disk is no failure of the trial: its study stops and a resume continues it (study.stop)
        run.finish("KILLED" if is_out_of_space(err) else "FAILED", reason=f"{type(err).__name__}: {err}")
        raise
    run.finish("FINISHED")
    return reports


def _report_again(saved: dict[str, Any], session: Session, run) -> dict[str, float]:
    """Re-report the last epoch of a run restored with every epoch done; returns those metrics.

    This happens when a worker group (or a resumed study's trial) restarts after the last
    checkpoint was written. Without it the restarted run would report nothing, and its
    driver and Tune would see no final result. Every rank calls it (a report is a barrier).
    """
    metrics = dict(saved.get("metrics") or {"epoch": float(int(saved["epoch"]) + 1)})
    run.log_epoch(metrics, epoch=int(metrics["epoch"]))  # a no-op when MLflow already has it
    session.report(metrics, None)
    return metrics


def _wrap_ddp(model: torch.nn.Module, session: Session) -> torch.nn.Module:
    model = model.to(session.device)
    if session.world_size == 1:
        return model
    device_ids = [session.device.index] if session.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def run_local(config: TrialConfig, checkpoint_dir=None, tracking=None, resume: bool = True) -> list[dict[str, float]]:
    """Run the per-worker function in this process, without Ray (one worker)."""
    if config.num_workers != 1:
        config = config.replace(num_workers=1)
    session = LocalSession(use_gpu=config.use_gpu, checkpoint_dir=checkpoint_dir, resume=resume)
    return train_worker(config, session, tracking)
