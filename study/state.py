"""The study's own state, kept next to the Tune experiment in the storage path.

``<storage>/<name>/study.json`` records what ``--resume`` needs beyond Tune's experiment
state and the pickled Optuna searcher: the space, the base trial config, the search and
resource settings and the MLflow experiment and parent run, so that a resumed study logs
into the same runs instead of creating new ones.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from study.parent_run import objectives_param
from study.storage import StorageError, filesystem, is_uri, join
from trainables import mlflow_layout as layout
from trainables.atomic import atomic_file

STATE_FILE = "study.json"
STATE_VERSION = 1


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


def state_path(storage_path: str, name: str) -> str:
    """Where the study's state file lives."""
    return join(storage_path, name, STATE_FILE)


def save_state(state: StudyState) -> None:
    """Write ``study.json`` atomically (local) or in one put (URI)."""
    target = state_path(state.storage_path, state.name)
    data = state.to_json().encode()
    if not is_uri(target):
        with atomic_file(target) as out:
            out.write(data)
        return
    fs, fs_path = filesystem(target)
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
            fs, fs_path = filesystem(target)
            with fs.open_input_stream(fs_path) as src:
                text = src.read().decode()
    except FileNotFoundError:
        return None
    try:
        return StudyState.from_json(text)
    except (ValueError, TypeError) as err:
        raise StorageError(f"study state {target} is corrupt: {err}") from None


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
