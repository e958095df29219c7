"""Shared fixtures: a tiny, fast trial config, an isolated data cache, and one finished smoke study."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray workers (of an in-process ray.init or a study subprocess) unpickle the stand-ins of
# tests/standins.py by reference: this checkout must be importable there, from any folder.
_REPO = str(Path(__file__).resolve().parents[1])
os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([_REPO, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# The suite runs in two pytest-xdist workers (pyproject's addopts, -n 2). The modules below start Ray
# (an in-process cluster, a study that starts one, a Ray head): they run one after another, in
# collection order, in one worker, since two Ray instances on one machine break each other
# (study.cluster.local_cluster_slot); the other tests are shared out beside them
# (pytest_xdist_make_scheduler). A new module that starts Ray goes here (tests/test_structure.py checks).
RAY_MODULES = (
    "test_study_lock", "test_storage_full", "test_fault_injection", "test_trial_ray", "test_mlflow_ui",
    "test_study_e2e", "test_cluster_rehearsal",
)
# Beside a Ray trial (one thread per worker), a test's own torch threads would oversubscribe the
# cores: one intra-op thread each while workers share the machine.
SHARED = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1
if SHARED:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# The Ray modules are the suite's critical path (their trials are mostly Ray's own process starts,
# one after another); a worker whose first test is another module's runs at a lower priority, on
# the CPU they leave (docs/performance.md, "The suite").
OTHER_WORKER_NICE = 10
_first_test_seen = []


def pytest_runtest_setup(item):
    if SHARED and not _first_test_seen:
        _first_test_seen.append(item.nodeid)
        if item.path.stem not in RAY_MODULES:
            os.nice(OTHER_WORKER_NICE)


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: none without it (-p no:xdist)
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's scheduling, with every test of :data:`RAY_MODULES` in one unit of work (its
    ``xdist_group`` mark would do this, but xdist 3.8 cannot rename nodes on pytest 9)."""
    from xdist.scheduler import LoadScopeScheduling

    class RayModulesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "ray" if Path(nodeid.split("::", 1)[0]).stem in RAY_MODULES else nodeid

    return RayModulesTogether(config, log)


def pytest_collection_modifyitems(items):
    """The Ray modules in :data:`RAY_MODULES`' order (the others keep theirs). Which goes first
    barely matters: the other worker's CPU slows whichever runs beside it (docs/performance.md)."""
    rank = {name: i for i, name in enumerate(RAY_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.stem, -1))


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory):
    """One synthetic-data cache for the whole test session (generation runs once per xdist worker)."""
    return str(tmp_path_factory.mktemp("data_cache"))


SMOKE_STUDY = "e2e"


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory, data_cache):
    """(folder, finished process) of one smoke study on the real trial, run once for the session:
    the end-to-end checks and the MLflow UI checks both read it (each smoke study costs ~40 s)."""
    from tests.test_study_e2e import _study

    cwd = tmp_path_factory.mktemp("smoke_study")
    return cwd, _study(cwd, "--space", "smoke", "--name", SMOKE_STUDY, "--set", f"data_cache={data_cache}")


@pytest.fixture
def tiny_config(data_cache):
    """A trial that trains in seconds: 256 train images, 64 test images, batch 32."""
    from trainables.config import TrialConfig

    return TrialConfig(
        ratio=0.5, batch_size=32, epochs=2, steps_per_epoch=None, synthetic_train_size=256, synthetic_test_size=64,
        data_cache=data_cache, warmup_steps=2, eval_k=10, eval_every=1,
    )


@pytest.fixture
def here(tmp_path, monkeypatch):
    """Run in an empty folder with no inherited tracking URI or Ray address."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


@pytest.fixture
def synthetic_shards(tiny_config, tmp_path):
    """tiny_config's synthetic train split as WebDataset shards of 96 samples (3 shards), and its XTD test folder."""
    from trainables.data.shards import write_image_set
    from trainables.data.synthetic import load_synthetic

    train, test_dir = load_synthetic(tiny_config)
    write_image_set(train, tmp_path / "shards", per_shard=96)
    return tmp_path / "shards", test_dir
