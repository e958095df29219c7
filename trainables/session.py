"""Where a per-worker function runs: under Ray Train, or in a plain process.

The training loop only talks to a :class:`Session`: its rank and world size, its
device, a ``report(metrics, checkpoint_state)`` call once per epoch, and the
latest checkpoint to resume from. :class:`RaySession` maps these onto
``ray.train``; :class:`LocalSession` keeps them in memory and on local disk, so the
same loop runs in tests and under a profiler without Ray.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from trainables.atomic import atomic_file
from trainables.errors import naming_full

CHECKPOINT_FILE = "state.pt"


def save_checkpoint(state: dict[str, Any], directory: Path) -> Path:
    """Write a checkpoint state (tensors and plain Python only) to ``directory/state.pt``."""
    with atomic_file(directory / CHECKPOINT_FILE) as out:  # a reader never sees half a file
        torch.save(state, out)
    return directory / CHECKPOINT_FILE


class UnsafeCheckpointError(RuntimeError):
    """The checkpoint holds pickled objects; it is refused, never unpickled."""


def load_checkpoint(directory: Path | str) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`. ``weights_only=True``: no pickled code runs.

    A checkpoint holding any pickled object raises :class:`UnsafeCheckpointError` with one
    line (torch's own refusal spans many).
    """
    import pickle

    try:
        return torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        what = f" ({found.group(1)})" if found else ""
        raise UnsafeCheckpointError(
            f"refusing the checkpoint to resume from: it holds a pickled object{what}, not only tensors "
            "and plain data (loaded with torch.load(weights_only=True), so nothing in it ran)"
        ) from None


def pick_device(use_gpu: bool, local_rank: int = 0) -> torch.device:
    if use_gpu:
        if not torch.cuda.is_available():
            raise RuntimeError("use_gpu=True but this worker sees no CUDA device")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


class Session:
    """Interface of what the loop needs from its runtime (see module docstring)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    def report(self, metrics: dict[str, float], state: Optional[dict[str, Any]]) -> None:
        raise NotImplementedError

    def latest_state(self) -> Optional[dict[str, Any]]:
        raise NotImplementedError


@dataclass
class LocalSession(Session):
    """One plain process. Reports land in ``self.reports``; checkpoints in ``checkpoint_dir``."""

    use_gpu: bool = False
    checkpoint_dir: Optional[Path] = None
    resume: bool = True
    reports: list[dict[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.device = pick_device(self.use_gpu)

    def report(self, metrics: dict[str, float], state: Optional[dict[str, Any]]) -> None:
        self.reports.append(dict(metrics))
        if state is not None and self.checkpoint_dir is not None:
            save_checkpoint(state, Path(self.checkpoint_dir))

    def latest_state(self) -> Optional[dict[str, Any]]:
        if self.resume and self.checkpoint_dir is not None and (Path(self.checkpoint_dir) / CHECKPOINT_FILE).exists():
            return load_checkpoint(self.checkpoint_dir)
        return None


class RaySession(Session):
    """A Ray Train worker: rank/world from the train context, checkpoints through ``ray.train``."""

    def __init__(self, use_gpu: bool) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.local_rank = ctx.get_local_rank()
        self.device = pick_device(use_gpu, self.local_rank)
        if use_gpu:
            torch.cuda.set_device(self.device)

    def report(self, metrics: dict[str, float], state: Optional[dict[str, Any]]) -> None:
        import ray.train

        # Every rank calls report (it is a barrier); only rank 0 carries the checkpoint.
        if state is None or self.rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            with naming_full("temporary folder", tmp):  # this node's own disk, not the storage path
                save_checkpoint(state, Path(tmp))
            epoch = int(metrics.get("epoch", 0))
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(tmp),
                checkpoint_dir_name=f"checkpoint_epoch_{epoch:04d}",
            )

    def latest_state(self) -> Optional[dict[str, Any]]:
        import ray.train

        from trainables.storage_fs import is_whole_files  # imports pyarrow, which Ray brings

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        if is_whole_files(checkpoint.filesystem):
            # A local storage path written in whole files (trainables.storage_fs) is read in place.
            return load_checkpoint(Path(checkpoint.path))
        # Elsewhere (an object store), each rank copies it into a folder of its own. Not through
        # Checkpoint.as_directory: it shares one temporary folder among the ranks of a node, and a
        # rank arriving after another's copy copies again into the folder the other is reading
        # (seen as a corrupt 2-worker resume: "PytorchStreamReader failed reading file").
        with tempfile.TemporaryDirectory() as tmp:
            return load_checkpoint(checkpoint.to_directory(tmp))
