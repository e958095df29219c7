"""Ray start-up and resource accounting for a study.

A trial is a Tune function (the trial's *driver*) that starts a Ray Train worker group. The
driver must not hold a CPU its own workers need: on 2 CPUs, a driver holding 1 CPU plus two
1-CPU workers never starts its worker group. So the driver asks for a custom resource
(``mlclip_trial_driver``, which a locally started cluster provides) and no CPU; on a cluster
without that resource it falls back to a token 0.01 CPU, which the concurrency plan counts.
The number of concurrent trials is derived from what the cluster can hold.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from study.lock import FileLock, Held, describe_holder, holder_record
from trainables.driver import HEALTH_CHECK_INTERVAL_S
from trainables.errors import one_line

DRIVER_RESOURCE = "mlclip_trial_driver"
DRIVER_SLOTS = 1000  # "unlimited": the concurrency plan, not this resource, bounds trials
FALLBACK_DRIVER_CPU = 0.01
# Held by the study that runs this machine's local Ray cluster (see local_cluster_slot).
LOCAL_CLUSTER_LOCK = "mlclip-study-local-ray.lock"
# Run by Ray in each worker process of a study (a module path: it imports nothing here).
FULL_DISK_HOOK = "study.stop.quiet_full_disk_logs"

# Environment for the driver process and every Ray worker (setdefault: the user's values win).
RAY_ENV_DEFAULTS = {
    "RAY_TRAIN_V2_ENABLED": "1",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": HEALTH_CHECK_INTERVAL_S,  # faster per-trial teardown (trainables/driver.py)
    "RAY_DEDUP_LOGS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_GLOBAL_CHECKPOINT_S": "2",  # experiment state saved often: a killed driver loses little
    # Ray Train's own log setup prints every report (all ~600 metrics) and each worker-group
    # start at INFO, partly through a logger its level filter misses. Without it, the
    # controller and workers log at the job's WARNING level (see start_ray).
    "RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING": "0",
    "RAY_TRAIN_ENABLE_CONTROLLER_STRUCTURED_LOGGING": "0",
    # MLflow draws a tqdm bar on stderr for every artifact download (the study fetches each
    # trial's per-query file); read at each download, so setting it here is early enough.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # With a tracking server, MLflow prints "View run NAME at: URL" for every run it ends (each
    # trial's too); the study prints the experiment's and the parent run's pages once, at the end.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    # Ray Train's preemption watcher only hands an early drain notice to a training function
    # that reads it (the per-worker loop does not: it checkpoints every epoch); a lost spot node
    # is still classed as a preemption from the dead actor's cause, and the trial restarts from
    # its checkpoint. Off, it also stops printing core_worker's "constructor arguments in the
    # object store and max_restarts > 0" error line into every job log on a cluster.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}


class ClusterError(RuntimeError):
    """The cluster cannot run the study as asked. One-line message."""


@dataclass(frozen=True)
class Capacity:
    """What the cluster holds, in total and on its largest node."""

    total_cpu: float
    total_gpu: float
    max_node_cpu: float
    max_node_gpu: float
    driver_slots: float = 0.0


# Forwarded to every Ray worker when set here: how long MLflow's HTTP client keeps retrying a
# tracking server that is down (docs/reliability.md), the same in the driver and on every node.
FORWARDED_ENV_PREFIXES = ("MLFLOW_HTTP_REQUEST_",)


def apply_env_defaults() -> dict[str, str]:
    """Set the study's Ray environment defaults here; return the env to pass to Ray workers (those
    defaults, and the variables named by :data:`FORWARDED_ENV_PREFIXES` that are set)."""
    env = {}
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
        env[key] = os.environ[key]
    env.update({key: value for key, value in os.environ.items() if key.startswith(FORWARDED_ENV_PREFIXES)})
    return env


def local_cpu_count() -> int:
    """CPUs this process may use (what a locally started Ray cluster would offer)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def running_ray_instances() -> list[str]:
    """GCS addresses of the Ray instances running on this machine (Ray's own process scan)."""
    try:
        from ray._private import services

        services.find_gcs_addresses.cache_clear()
        return sorted(services.find_gcs_addresses())
    except Exception:  # noqa: BLE001 - a private Ray API: without it there is no check, as before
        return []


def one_cluster_command() -> str:
    """How to start one long-lived local cluster that several studies attach to."""
    return f"ray start --head --resources='{{\"{DRIVER_RESOURCE}\": {DRIVER_SLOTS}}}'"


@contextmanager
def local_cluster_slot(study: str) -> Iterator[None]:
    """Hold this machine's one local-cluster slot while ``study`` runs its own Ray cluster.

    Two local Ray clusters on one machine break each other: Ray Train's placement-group
    cleaner finds two instances and fails (``Found multiple active Ray instances``), and each
    cluster counts the same CPUs as its own. So a study that would start a local cluster
    refuses (ClusterError, before Ray starts) while another study holds the slot (a flock in
    the temp folder, dropped by the kernel however that study ends) or while any other Ray
    instance runs here; the message names ``--address``.
    """
    lock: Optional[FileLock] = FileLock(Path(tempfile.gettempdir()) / LOCAL_CLUSTER_LOCK, holder_record(study=study))
    try:
        lock.acquire()
    except Held as held:
        other = (held.record or {}).get("study", "?")
        raise ClusterError(
            f"another study ({other!r}, {describe_holder(held.record)}) runs a local Ray cluster on this machine, and two "
            f"local clusters break each other's Ray Train clean-up; wait for it to end, or run both on one cluster: "
            f"{one_cluster_command()}, then --address auto for each study"
        ) from None
    except OSError:
        lock = None  # a temp folder this user cannot lock in: the process scan below still checks
    try:
        others = running_ray_instances()
        if others:
            raise ClusterError(
                f"a Ray instance already runs on this machine (GCS at {', '.join(others)}), and a second local "
                f"cluster beside it breaks Ray Train's clean-up; attach to it with --address {others[0]}, "
                "or stop it first"
            )
        yield
    finally:
        if lock is not None:
            lock.release()


def start_ray(address: Optional[str], num_cpus: Optional[int], env: dict[str, str]) -> None:
    """Start a quiet local Ray cluster, or attach to ``address`` (``auto``, ``ray://...``)."""
    import ray

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    runtime_env: dict = {"env_vars": env}
    if not (address or "").startswith("ray://"):  # Ray Client runs no setup hook
        # Every worker drops Ray's traceback of a full disk: the study says it in one line (study.stop).
        runtime_env["worker_process_setup_hook"] = FULL_DISK_HOOK
    common = dict(
        logging_level=logging.WARNING,
        # Worker root loggers at WARNING: Ray Train logs every report (all metrics) at INFO.
        logging_config=ray.LoggingConfig(encoding="TEXT", log_level="WARNING"),
        log_to_driver=True,
        runtime_env=runtime_env,
        ignore_reinit_error=True,
    )
    try:
        if address:
            ray.init(address=address, **common)
        else:
            # The dashboard hosts the State API that Ray Train's PlacementGroupCleaner polls
            # (without it: a warning every few seconds); it binds to localhost only.
            ray.init(
                num_cpus=num_cpus,
                resources={DRIVER_RESOURCE: DRIVER_SLOTS},
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                **common,
            )
    except Exception as err:  # noqa: BLE001 - report any start failure in one line
        where = f"attach to the Ray cluster at {address}" if address else "start a local Ray cluster"
        raise ClusterError(f"cannot {where}: {one_line(err)}") from None


# Ray jobs whose placement groups are still wanted (ray.job_submission.JobStatus names).
LIVE_JOB_STATUSES = ("PENDING", "RUNNING")


def release_orphaned_placement_groups() -> list[str]:
    """Remove the placement groups of jobs that no longer run; return their ids (hex).

    On a shared cluster a study's driver can die (killed, its node lost) while its trials are
    starting their Ray Train worker groups. Ray removes a job's placement groups when the job
    ends, but a trial controller of that job may register one a moment later: on Ray 2.60 one
    was seen registered 56 ms after its job was marked finished, never removed, and holding its
    CPUs until the cluster stopped, so the study's ``--resume`` waited forever for a worker
    group. Detached placement groups outlive their job by design and are kept, as are those of
    every job still pending or running (other studies on the cluster). Uses Ray's state API
    (the dashboard); without it nothing is removed.
    """
    import ray
    from ray.util import state
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    jobs = state.list_jobs(limit=10_000)
    groups = state.list_placement_groups(detail=True, limit=10_000)
    found = orphaned_placement_groups(groups, jobs, own_job=ray.get_runtime_context().get_job_id())
    for pg_id in found:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(pg_id)))
    return found


def orphaned_placement_groups(groups: Iterable[Any], jobs: Iterable[Any], own_job: str) -> list[str]:
    """The ids of ``groups`` (Ray's ``PlacementGroupState`` rows) not removed, not detached, and made by a
    job that is neither ``own_job`` nor, among ``jobs`` (``JobState`` rows), pending or running."""
    live = {job.job_id for job in jobs if job.job_id and getattr(job.status, "value", job.status) in LIVE_JOB_STATUSES}
    live.add(own_job)
    return [pg.placement_group_id for pg in groups
            if pg.state != "REMOVED" and not pg.is_detached and pg.creator_job_id not in live]


def cluster_capacity() -> Capacity:
    """Resources of the alive nodes of the connected Ray cluster."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    cpus = [r.get("CPU", 0.0) for r in nodes] or [0.0]
    gpus = [r.get("GPU", 0.0) for r in nodes] or [0.0]
    return Capacity(
        total_cpu=sum(cpus),
        total_gpu=sum(gpus),
        max_node_cpu=max(cpus),
        max_node_gpu=max(gpus),
        driver_slots=sum(r.get(DRIVER_RESOURCE, 0.0) for r in nodes),
    )


def driver_resources(capacity: Capacity) -> dict:
    """What a trial's driver (the Tune function) reserves: a driver slot, never a worker's CPU."""
    if capacity.driver_slots >= 1:
        return {"cpu": 0, DRIVER_RESOURCE: 1}
    return {"cpu": FALLBACK_DRIVER_CPU}


def check_trial_fits(capacity: Capacity, workers: int, cpus_per_worker: float, gpus_per_worker: float) -> None:
    """Raise ClusterError when one trial's worker group can never be placed."""
    need_cpu, need_gpu = workers * cpus_per_worker, workers * gpus_per_worker
    shape = f"--workers-per-trial {workers}, --cpus-per-worker {cpus_per_worker:g}, --gpus-per-worker {gpus_per_worker:g}"
    if need_cpu > capacity.total_cpu + 1e-9 or cpus_per_worker > capacity.max_node_cpu + 1e-9:
        raise ClusterError(
            f"a trial needs {need_cpu:g} CPU ({shape}) but the cluster has {capacity.total_cpu:g} CPU "
            f"(largest node {capacity.max_node_cpu:g}); use fewer workers or CPUs per worker"
        )
    if need_gpu > capacity.total_gpu + 1e-9 or gpus_per_worker > capacity.max_node_gpu + 1e-9:
        raise ClusterError(
            f"a trial needs {need_gpu:g} GPU ({shape}) but the cluster has {capacity.total_gpu:g} GPU "
            f"(largest node {capacity.max_node_gpu:g}); use fewer workers or GPUs per worker"
        )


def max_concurrent_trials(
    capacity: Capacity,
    workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float,
    requested: Optional[int] = None,
    num_trials: Optional[int] = None,
) -> int:
    """How many trials fit side by side (at least 1), capped by ``requested`` and ``num_trials``."""
    check_trial_fits(capacity, workers, cpus_per_worker, gpus_per_worker)
    driver_cpu = 0.0 if capacity.driver_slots >= 1 else FALLBACK_DRIVER_CPU
    limits = []
    per_trial_cpu = workers * cpus_per_worker + driver_cpu
    if per_trial_cpu > 0:
        limits.append(math.floor(capacity.total_cpu / per_trial_cpu + 1e-9))
    if gpus_per_worker > 0:
        limits.append(math.floor(capacity.total_gpu / (workers * gpus_per_worker) + 1e-9))
    if capacity.driver_slots >= 1:
        limits.append(int(capacity.driver_slots))
    if requested:
        limits.append(requested)
    if num_trials:
        limits.append(num_trials)
    return max(1, min(limits) if limits else 1)


def local_capacity(num_cpus: Optional[int]) -> Capacity:
    """The CPU capacity a local cluster will have, known before Ray starts (GPUs unknown: inf)."""
    cpus = float(num_cpus or local_cpu_count())
    return Capacity(cpus, math.inf, cpus, math.inf, DRIVER_SLOTS)
