"""The study's own state, kept next to the Tune experiment in the storage path.

``<storage>/<name>/study.json`` records what ``--resume`` needs beyond Tune's experiment
state and the pickled Optuna searcher: the space, the base trial config, the search and
resource settings and the MLflow experiment and parent run, so that a resumed study logs
into the same runs instead of creating new ones.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from study.parent_run import objectives_param
from trainables import mlflow_layout as layout

STATE_FILE = "study.json"
STATE_VERSION = 1


class StorageError(RuntimeError):
    """The storage path cannot be used. One-line message."""


@dataclass
class StudyState:
    """Everything a study needs to run and to resume, JSON-serialisable."""

    name: str
    storage_path: str
    space: dict  # {"name", "source", "raw"}
    base_config: dict
    objectives: list  # [{"metric", "mode"}]
    num_samples: int
    num_trials: int
    max_concurrent: int
    workers_per_trial: int
    cpus_per_worker: float
    gpus_per_worker: float
    scheduler: str
    seed: int
    max_failures: int
    tracking_uri: str
    output_dir: str
    fit: str = ""  # the trial function, module:name ("" in a state saved before it was recorded)
    experiment_id: str = ""
    parent_run_id: str = ""
    version: int = STATE_VERSION

    @property
    def experiment_path(self) -> str:
        """The Tune experiment folder (or URI): ``<storage>/<name>``."""
        return join(self.storage_path, self.name)

    @property
    def metric(self) -> str:
        """The first (or only) objective's metric."""
        return self.objectives[0]["metric"]

    @property
    def mode(self) -> str:
        """The first (or only) objective's mode."""
        return self.objectives[0]["mode"]

    @property
    def multi_objective(self) -> bool:
        """Whether the study optimises several objectives (Pareto)."""
        return len(self.objectives) > 1

    def to_json(self) -> str:
        """Pretty JSON text."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "StudyState":
        """Parse :meth:`to_json` output (unknown keys are ignored, for forward compatibility)."""
        data = json.loads(text)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


# ---------------------------------------------------------------------------
# Storage (a local folder, or a URI pyarrow understands)
# ---------------------------------------------------------------------------
def is_uri(path: str) -> bool:
    """True for ``scheme://...`` storage (s3, gs, ...), False for local paths."""
    return "://" in path and not path.startswith("file://")


def resolve_storage_path(path: str) -> str:
    """An absolute local path, or the URI unchanged (Tune requires absolute storage paths)."""
    if is_uri(path):
        return path.rstrip("/")
    if path.startswith("file://"):
        path = path[len("file://"):]
    return str(Path(path).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    """Join storage path parts with ``/`` (works for local paths and URIs)."""
    return "/".join([base.rstrip("/"), *parts])


def _fs(path: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(path)


def check_writable(storage_path: str) -> None:
    """StorageError unless ``storage_path`` can be written; creates nothing that stays.

    A local path that does not exist yet is not created here (a refused study leaves no
    folder behind): the deepest part of it that exists must be a folder that takes a new
    entry. A URI is probed with a small object, deleted at once.
    """
    try:
        if not is_uri(storage_path):
            check_folder_writable(Path(storage_path))
            return
        probe = join(storage_path, f".write_probe_{uuid.uuid4().hex[:8]}")
        fs, fs_path = _fs(storage_path)
        fs.create_dir(fs_path, recursive=True)
        fs_probe = _fs(probe)[1]
        with fs.open_output_stream(fs_probe) as out:
            out.write(b"ok")
        fs.delete_file(fs_probe)
    except Exception as err:  # noqa: BLE001 - any failure: not writable, say why
        reason = " ".join(str(err).split()) or type(err).__name__
        raise StorageError(f"storage path {storage_path} is not writable: {reason}") from None


def check_folder_writable(path: Path) -> None:
    """OSError unless folder ``path`` exists and takes a new entry, or could be created; nothing stays.

    Every existing part of ``path`` must be a folder. The deepest existing one is probed by
    making and removing a temporary folder in it: ``os.access`` answers yes to root even
    where ``mkdir`` fails (under ``/proc``, on a read-only bind mount).
    """
    probe_in = Path(path)
    while not _exists(probe_in):
        if probe_in.is_symlink():
            raise NotADirectoryError(f"{probe_in} is a broken symbolic link")
        if probe_in.parent == probe_in:
            break
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise NotADirectoryError(f"{probe_in} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write_probe_", dir=probe_in))
    except OSError as err:
        raise OSError(f"cannot create a folder in {probe_in} ({err.strerror or type(err).__name__})") from None


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. no permission to look: treat as there, and let the probe say why
        return True


def state_path(storage_path: str, name: str) -> str:
    """Where the study's state file lives."""
    return join(storage_path, name, STATE_FILE)


def save_state(state: StudyState) -> None:
    """Write ``study.json`` atomically (local) or in one put (URI)."""
    target = state_path(state.storage_path, state.name)
    data = state.to_json().encode()
    if not is_uri(target):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(f"{target}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        return
    fs, fs_path = _fs(target)
    fs.create_dir(fs_path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(fs_path) as out:
        out.write(data)


def load_state(storage_path: str, name: str) -> Optional[StudyState]:
    """The saved state of study ``name``, or None when there is none."""
    target = state_path(storage_path, name)
    try:
        if not is_uri(target):
            if not Path(target).is_file():
                return None
            text = Path(target).read_text(encoding="utf-8")
        else:
            fs, fs_path = _fs(target)
            with fs.open_input_stream(fs_path) as src:
                text = src.read().decode()
    except FileNotFoundError:
        return None
    try:
        return StudyState.from_json(text)
    except (ValueError, TypeError) as err:
        raise StorageError(f"study state {target} is corrupt: {err}") from None


def experiment_exists(storage_path: str, name: str) -> bool:
    """Whether a Tune experiment (or study state) already lives at ``<storage>/<name>``.

    A study's lock file alone (:mod:`study.lock`: left by a driver killed before it saved
    anything, or held by the driver asking) is not a study.
    """
    from study.lock import LEASE_FILE, LOCK_FILE

    folder = join(storage_path, name)
    if not is_uri(folder):
        return Path(folder).is_dir() and any(p.name not in (LOCK_FILE, LEASE_FILE) for p in Path(folder).iterdir())
    import pyarrow.fs

    fs, fs_path = _fs(folder)
    if fs.get_file_info(fs_path).type == pyarrow.fs.FileType.NotFound:
        return False
    entries = fs.get_file_info(pyarrow.fs.FileSelector(fs_path, allow_not_found=True))
    return any(e.base_name not in (LOCK_FILE, LEASE_FILE) for e in entries)


def describe(state: StudyState) -> dict[str, Any]:
    """Search settings worth logging as parent-run params (named in :mod:`trainables.mlflow_layout`)."""
    return {
        layout.PARAM_SPACE: state.space.get("name"),
        layout.PARAM_SPACE_SOURCE: state.space.get("source"),
        layout.PARAM_OBJECTIVES: objectives_param(state.objectives),
        layout.PARAM_NUM_TRIALS: state.num_trials,
        layout.PARAM_NUM_SAMPLES: state.num_samples,
        layout.PARAM_MAX_CONCURRENT: state.max_concurrent,
        layout.PARAM_WORKERS_PER_TRIAL: state.workers_per_trial,
        layout.PARAM_CPUS_PER_WORKER: state.cpus_per_worker,
        layout.PARAM_GPUS_PER_WORKER: state.gpus_per_worker,
        layout.PARAM_SCHEDULER: state.scheduler,
        layout.PARAM_SEARCHER: "grid" if state.space.get("algorithm") == "grid" else "optuna-tpe",
        layout.PARAM_SEED: state.seed,
        layout.PARAM_MAX_FAILURES: state.max_failures,
        layout.PARAM_FIT: state.fit,
        layout.PARAM_STORAGE_PATH: state.storage_path,
    }
