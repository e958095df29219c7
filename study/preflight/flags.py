"""Checks of the command line's own values: flag text, counts and resources, seeds, the study
name, the search flags against the space, and the Ray address to attach to."""

from __future__ import annotations

import argparse
import math
import re
import socket
from typing import Optional
from urllib.parse import urlsplit

from study.preflight import PreflightError
from study.spaces import SearchSpace, SpaceError
from trainables.config import is_seed
from trainables.errors import one_line

MAX_NAME_LENGTH = 100  # a folder name (255 bytes at most) with room for Tune's and Ray Train's suffixes
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Flags whose empty value would silently mean the default (``--space ''`` ran the default space).
_NOT_EMPTY = {
    "space": "space name", "name": "study name", "storage_path": "storage path", "tracking_uri": "tracking URI",
    "output_dir": "output folder", "metric": "metric name", "train_data": "data path", "eval_data": "data path",
    "images_dir": "folder",
}


def check_flag_text(args: argparse.Namespace) -> None:
    """No flag value holds a NUL (no path or name can); an empty value is refused, not read as 'not given'."""
    for flag, value in vars(args).items():
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and "\x00" in text:
                raise PreflightError(f"--{flag.replace('_', '-')} {text!r}: holds a NUL character")
    for flag, what in _NOT_EMPTY.items():
        value = getattr(args, flag, None)
        if isinstance(value, str) and not value.strip():
            raise PreflightError(f"--{flag.replace('_', '-')} {value!r}: empty {what}; give one, or leave the flag out")


def check_search_flags(space: SearchSpace, args: argparse.Namespace) -> SearchSpace:
    """The search flags (counts, scheduler, seeds budget) against ``space``; returns ``space``."""
    for flag in ("num_samples", "max_concurrent", "max_failures", "num_cpus"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "max_failures" else 1):
            raise PreflightError(f"--{flag.replace('_', '-')}={value}: must be {'>= 0' if flag == 'max_failures' else 'positive'}")
    if args.scheduler == "asha" and space.multi_objective:
        raise PreflightError(f"--scheduler asha needs a single objective; space {space.name!r} has {len(space.objectives)}")
    if args.scheduler == "asha" and space.seed_min:
        raise PreflightError(f"--scheduler asha with raced seeds (space {space.name!r}): early stopping would race "
                         "the seeds on cut-short trials; use the default fifo scheduler")
    if args.scheduler == "asha" and space.seeds:
        raise PreflightError(f"--scheduler asha with seeds (space {space.name!r}): early stopping keeps the seeds that "
                             "look good early, so each ratio's mean would be of survivors; use the default fifo scheduler")
    if space.algorithm == "grid" and space.seeds and args.num_samples not in (None, 1):
        raise PreflightError(f"--num-samples {args.num_samples}: a grid with search.seeds (space {space.name!r}) runs each "
                         "point once per seed; leave --num-samples out")
    try:
        space.check_seed_budget(args.num_samples)
    except SpaceError as err:
        raise PreflightError(f"{err} (--num-samples {args.num_samples})") from None
    return space


def check_resource(flag: str, value: Optional[float], default: float) -> float:
    """A per-worker resource (``--cpus-per-worker``, ``--gpus-per-worker``): finite and >= 0."""
    if value is None:
        return default
    if not math.isfinite(value) or value < 0:
        # NaN passed every comparison before and hung the study: Ray never places a NaN CPU ask.
        raise PreflightError(f"--{flag} {value}: resources per worker must be a finite number >= 0")
    return float(value)


def check_seed(value: Optional[int]) -> None:
    """``--seed`` seeds Optuna's sampler (32-bit) as well as the trials."""
    if value is not None and not is_seed(value):
        raise PreflightError(f"--seed {value}: must lie in [0, 2**32 - 1] (it seeds Optuna's sampler and the trials)")


def check_name_length(name: str) -> None:
    """A study name becomes a folder and an MLflow experiment: keep it well under 255 bytes."""
    if len(name.encode()) > MAX_NAME_LENGTH:
        raise PreflightError(f"study name of {len(name)} characters ({name[:24]}...): at most {MAX_NAME_LENGTH} "
                             "(it names the state folder and the MLflow experiment)")


def study_name(name: str) -> str:
    """A study name usable as a folder and an MLflow experiment name."""
    if not _NAME.match(name):
        raise PreflightError(f"study name {name!r}: use letters, digits, '_', '-', '.' (starting with a letter or digit)")
    check_name_length(name)
    return name


def check_ray_address(address: Optional[str], timeout_s: float = 5.0) -> None:
    """PreflightError unless a Ray cluster answers at ``address`` (``HOST:PORT``, a GCS, or
    ``ray://HOST:PORT``, a Ray Client server) within ``timeout_s``: Ray itself retries an
    address nobody answers at for minutes. ``auto`` and no address are Ray's to resolve (it
    says at once when nothing runs here)."""
    if not address or address == "auto":
        return
    parts = urlsplit(address if "://" in address else f"gcs://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as err:  # a port that is not a number
        raise PreflightError(f"--address {address}: {one_line(err)}") from None
    if not host or port is None:
        raise PreflightError(f"--address {address}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as err:
        reason = f"no answer in {timeout_s:g} s" if isinstance(err, TimeoutError) else (err.strerror or type(err).__name__)
        raise PreflightError(f"--address {address}: no Ray cluster answers at {host}:{port} ({reason}); start one "
                             "with `ray start --head`, or leave --address out for a local cluster") from None
