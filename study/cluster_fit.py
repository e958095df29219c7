"""Does a study's resource ask fit the node types a Ray autoscaler config declares?

Offline check, before ``ray up`` or before submitting a study::

    python -m study.cluster_fit cluster.yaml --workers-per-trial 2 --gpus-per-worker 1 --concurrent-trials 4

:func:`check_fits` returns a list of problems (empty when the ask fits); the study CLI
can call it with the same numbers it passes to Ray. It reads the ``resources`` each node
type declares (the autoscaler's own view), so those must be written out in the config.
Checked:

* the config is valid against Ray's autoscaler schema;
* the head node type advertises the trial-driver resource and no other type does (trial
  drivers must never land on spot workers);
* ``concurrent_trials`` drivers fit the head's driver slots;
* one worker (``gpus_per_worker`` GPUs, ``cpus_per_worker`` CPUs) fits some node type;
* ``workers_per_trial * concurrent_trials`` workers fit the largest cluster the
  autoscaler may build (each type's ``max_workers``, and the global ``max_workers``).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from study.cluster import DRIVER_RESOURCE


@dataclass(frozen=True)
class NodeType:
    """One ``available_node_types`` entry: declared resources and how many nodes may exist."""

    name: str
    resources: dict
    max_nodes: int
    is_head: bool


def load_cluster_config(cluster_yaml: Union[str, Path, dict]) -> dict:
    """The autoscaler config as a dict (from a YAML path, or a dict as is)."""
    if isinstance(cluster_yaml, dict):
        return cluster_yaml
    import yaml

    with open(cluster_yaml, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    if not isinstance(config, dict):
        raise ValueError(f"{cluster_yaml}: not a YAML mapping")
    return config


def schema_problems(config: dict) -> list[str]:
    """Problems Ray's own validator finds (``ray/autoscaler/ray-schema.json`` plus its extra checks)."""
    from ray.autoscaler._private.util import validate_config

    try:
        validate_config(config)
    except Exception as err:  # jsonschema.ValidationError, ValueError, RuntimeError
        text = getattr(err, "message", None) or str(err)
        where = "/".join(str(p) for p in getattr(err, "absolute_path", []) or [])
        return [f"invalid autoscaler config{f' at {where}' if where else ''}: {text.splitlines()[0]}"]
    return []


def node_types(config: dict) -> list[NodeType]:
    """Node types of ``config``; the head type has exactly one node."""
    head = config.get("head_node_type")
    out = []
    for name, spec in (config.get("available_node_types") or {}).items():
        max_nodes = 1 if name == head else int(spec.get("max_workers", config.get("max_workers", 0)))
        out.append(NodeType(name, dict(spec.get("resources") or {}), max_nodes, name == head))
    return out


def _workers_per_node(node: NodeType, gpus: float, cpus: float) -> int:
    """How many training workers of this shape one node of ``node`` holds."""
    limits = []
    for key, need in (("GPU", gpus), ("CPU", cpus)):
        if need > 0:
            limits.append(math.floor(float(node.resources.get(key, 0)) / need + 1e-9))
    return min(limits) if limits else 1_000_000


def _max_workers(config: dict, types: list[NodeType], gpus: float, cpus: float) -> int:
    """Most workers the largest allowed cluster holds (densest node types first)."""
    per_node = sorted(((_workers_per_node(t, gpus, cpus), t) for t in types), key=lambda x: -x[0])
    budget = int(config.get("max_workers", sum(t.max_nodes for t in types if not t.is_head)))
    total = 0
    for count, node in per_node:
        if count <= 0:
            continue
        nodes = 1 if node.is_head else min(node.max_nodes, budget)
        if not node.is_head:
            budget -= nodes
        total += count * nodes
    return total


def _driver_problems(types: list[NodeType], concurrent_trials: int) -> list[str]:
    problems = []
    head = next((t for t in types if t.is_head), None)
    slots = float(head.resources.get(DRIVER_RESOURCE, 0)) if head else 0.0
    if head is None:
        problems.append("no head_node_type among available_node_types")
    elif slots < 1:
        problems.append(f"head node type {head.name!r} does not declare the trial-driver resource "
                        f"{DRIVER_RESOURCE!r}; add resources: {{{DRIVER_RESOURCE}: 1000}} so drivers stay on the head")
    elif concurrent_trials > slots:
        problems.append(f"{concurrent_trials} concurrent trials need {concurrent_trials} {DRIVER_RESOURCE} "
                        f"slots but the head declares {slots:g}")
    for node in types:
        if not node.is_head and node.resources.get(DRIVER_RESOURCE):
            problems.append(f"worker node type {node.name!r} declares {DRIVER_RESOURCE!r}: trial drivers could "
                            "land on it (and die with a spot node); declare it on the head only")
    return problems


def check_fits(cluster_yaml: Union[str, Path, dict], workers_per_trial: int, gpus_per_worker: float,
               concurrent_trials: int, cpus_per_worker: float = 1.0) -> list[str]:
    """Problems that keep this resource ask from running on the cluster ``cluster_yaml`` declares.

    Args:
        cluster_yaml: path of a Ray autoscaler YAML (or the parsed dict).
        workers_per_trial: Ray Train workers of one trial.
        gpus_per_worker, cpus_per_worker: resources of one worker.
        concurrent_trials: trials meant to run side by side.
    Returns:
        One-line problem descriptions; an empty list when everything fits.
    """
    if workers_per_trial < 1 or concurrent_trials < 1 or gpus_per_worker < 0 or cpus_per_worker < 0:
        return [f"invalid ask: workers_per_trial={workers_per_trial}, concurrent_trials={concurrent_trials}, "
                f"gpus_per_worker={gpus_per_worker}, cpus_per_worker={cpus_per_worker}"]
    try:
        config = load_cluster_config(cluster_yaml)
    except (OSError, ValueError) as err:
        return [f"cannot read cluster config: {err}"]
    problems = schema_problems(config)
    if problems:
        return problems
    types = node_types(config)
    problems += _driver_problems(types, concurrent_trials)
    shape = f"{gpus_per_worker:g} GPU + {cpus_per_worker:g} CPU"
    hosts = [t.name for t in types if _workers_per_node(t, gpus_per_worker, cpus_per_worker) >= 1]
    if not hosts:
        declared = ", ".join(f"{t.name}: {t.resources}" for t in types)
        problems.append(f"no node type holds one worker ({shape}); declared resources: {declared}")
        return problems
    need = workers_per_trial * concurrent_trials
    most = _max_workers(config, types, gpus_per_worker, cpus_per_worker)
    if need > most:
        problems.append(f"{concurrent_trials} trial(s) x {workers_per_trial} worker(s) = {need} workers of "
                        f"{shape}, but the cluster can grow to hold only {most} (node types {', '.join(hosts)}; "
                        "raise max_workers or lower the ask)")
    return problems


def main(argv=None) -> int:
    """CLI: print the problems (exit 1) or a one-line OK (exit 0)."""
    parser = argparse.ArgumentParser(prog="python -m study.cluster_fit", description=__doc__.splitlines()[0])
    parser.add_argument("cluster_yaml")
    parser.add_argument("--workers-per-trial", type=int, default=1)
    parser.add_argument("--gpus-per-worker", type=float, default=1.0)
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--concurrent-trials", type=int, default=1)
    args = parser.parse_args(argv)
    problems = check_fits(args.cluster_yaml, args.workers_per_trial, args.gpus_per_worker,
                          args.concurrent_trials, args.cpus_per_worker)
    for problem in problems:
        print(f"does not fit: {problem}", file=sys.stderr)
    if not problems:
        print(f"fits: {args.concurrent_trials} trial(s) x {args.workers_per_trial} worker(s) on {args.cluster_yaml}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
