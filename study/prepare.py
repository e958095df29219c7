"""A study from its command line: a new one checked and built, or a saved one loaded to resume.

:func:`prepare_new` and :func:`prepare_resume` run the checks of :mod:`study.preflight` in
order, before Ray starts and creating nothing, and return the :class:`~study.state.StudyState`
that :mod:`study.execute` runs. The trial config shared by all trials is assembled here:
``TrialConfig`` defaults, then the space's ``fixed``, then the flags.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from study import console
from study.cluster import check_trial_fits, local_capacity
from study.preflight import PreflightError, is_local_path
from study.preflight.configs import check_fixed_settings, check_trial_sizes, single_language_note, validate_space
from study.preflight.flags import check_ray_address, check_resource, check_search_flags, check_seed, study_name
from study.preflight.metrics import check_metric, eval_ks
from study.preflight.paths import (
    check_data_paths_exist,
    check_local_data,
    check_output_dir,
    check_tracking_uri,
    contain_paths,
    load_space,
)
from study.spaces import SearchSpace, SpaceError, coerce_config_values, make_objective, parse_space
from study.state import StudyState, load_state
from study.storage import check_writable, experiment_exists, resolve_storage_path
from trainables.config import TrialConfig
from trainables.driver import fit_trial
from trainables.memory import machine_memory
from trainables.mlflow_store import resolve_tracking_uri

DEFAULT_SPACE = "ratio_only"
DEFAULT_STORAGE = "ray_results"
DEFAULT_OUTPUT_ROOT = "study_results"
# Flags that define a study; on --resume the saved values apply and these are ignored.
_STUDY_FLAGS = (
    "space", "num_samples", "max_concurrent", "workers_per_trial", "cpus_per_worker", "gpus_per_worker",
    "epochs", "metric", "mode", "seed", "train_data", "eval_data", "images_dir", "set", "scheduler",
    "max_failures",
)


def fit_name(fit: Callable) -> str:
    """``module:name`` of a trial function (of its class, for a callable object): what a study records."""
    named = fit if hasattr(fit, "__qualname__") else type(fit)
    return f"{named.__module__}:{named.__qualname__}"


def prepare_new(args: argparse.Namespace, fit: str = fit_name(fit_trial)) -> tuple[StudyState, SearchSpace]:
    """Check every input of a new study (no Ray yet, nothing created) and build its state; ``fit``
    names the trial function (:func:`fit_name`)."""
    check_seed(args.seed)
    check_ray_address(args.address)
    cpw = check_resource("cpus-per-worker", args.cpus_per_worker, 1.0)
    gpw = check_resource("gpus-per-worker", args.gpus_per_worker, 0.0)
    space = check_search_flags(load_space(args.space or DEFAULT_SPACE), args)
    objectives = study_objectives(space, args)
    base = base_config(space, args)
    check_fixed_settings(space, base)
    validate_space(space, base)
    check_trial_sizes(space, base, None if args.address else machine_memory())
    note = single_language_note(space, base)
    if note:
        console.say(f"note: {note}")
    where = "--metric" if args.metric else f"space {space.name!r}"
    for objective in objectives:
        check_metric(objective.metric, eval_ks(base, space), where)
    if not args.address:  # on a cluster the data lives on the workers' file system, not here
        check_local_data(base)
    name = study_name(args.name or space.name)
    storage = resolve_storage_path(args.storage_path or DEFAULT_STORAGE)
    check_writable(storage)
    if experiment_exists(storage, name):
        raise exists_error(name, storage)
    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    check_tracking_uri(tracking_uri)
    workers = base["num_workers"]
    if not args.address:
        check_trial_fits(local_capacity(args.num_cpus), workers, cpw, gpw)
    output_dir = _output_dir(args.output_dir, name)
    check_output_dir(output_dir)  # written at the end: a bad one used to fail the study after every trial trained
    return StudyState(
        name=name,
        storage_path=storage,
        space={"name": space.name, "source": space.source, "algorithm": space.algorithm, "raw": space.raw},
        base_config=base,
        objectives=[{"metric": o.metric, "mode": o.mode} for o in objectives],
        num_samples=args.num_samples or space.num_samples,
        num_trials=space.num_trials(args.num_samples),
        max_concurrent=args.max_concurrent or 0,
        workers_per_trial=workers,
        cpus_per_worker=cpw,
        gpus_per_worker=gpw,
        scheduler=args.scheduler or "fifo",
        seed=args.seed if args.seed is not None else 0,
        max_failures=args.max_failures if args.max_failures is not None else 1,
        tracking_uri=tracking_uri,
        output_dir=output_dir,
        fit=fit,
    ), space


def exists_error(name: str, storage: str) -> PreflightError:
    """The refusal of a new study whose name is taken in ``storage``."""
    return PreflightError(
        f"study {name!r} already exists in {storage}; continue it with --resume --name {name}, "
        "or start another with --name"
    )


def _output_dir(value: Optional[str], name: str) -> str:
    return str(Path(value or Path(DEFAULT_OUTPUT_ROOT) / name).expanduser().resolve())


def study_objectives(space: SearchSpace, args: argparse.Namespace) -> tuple:
    """The space's objectives, or the single one given by --metric/--mode."""
    if args.metric is None and args.mode is None:
        return space.objectives
    if space.multi_objective:
        raise PreflightError(f"space {space.name!r} is multi-objective ({', '.join(o.metric for o in space.objectives)}); --metric/--mode do not apply")
    first = space.objectives[0]
    return (make_objective(args.metric or first.metric, args.mode or first.mode, "--metric/--mode"),)


def base_config(space: SearchSpace, args: argparse.Namespace) -> dict:
    """TrialConfig defaults <- the space's ``fixed`` <- CLI flags; searched fields left out."""
    searched = set(space.param_names)
    base = {**TrialConfig().to_dict(), **space.fixed}
    overrides = cli_overrides(args, searched)
    clash = sorted(set(overrides) & searched - {"seed"})
    if clash:
        raise PreflightError(f"{', '.join(clash)} searched by space {space.name!r}; it cannot also be fixed on the command line")
    base.update({k: v for k, v in overrides.items() if k not in searched})
    base = absolute_data_paths(base)
    if not args.address:  # on a cluster the data lives on the workers' file system, not here
        check_data_paths_exist(base)
    for key in searched:
        base.pop(key, None)
    return base


def cli_overrides(args: argparse.Namespace, searched: set) -> dict:
    """Trial-config fields given by flags (``--set`` included)."""
    out: dict[str, Any] = {}
    for item in args.set or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise PreflightError(f"--set {item!r}: expected KEY=VALUE")
        if key in ("num_workers", "use_gpu"):
            raise PreflightError(f"--set {key}: use --workers-per-trial / --gpus-per-worker")
        if key not in TrialConfig.__dataclass_fields__:
            raise PreflightError(f"--set {key}: not a trial config field (python -m study.run --list-fields lists them)")
        try:
            out[key] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise PreflightError(f"--set {item!r}: unreadable value") from None
    flags = {
        "epochs": args.epochs, "num_workers": args.workers_per_trial, "seed": args.seed,
        "train_data": args.train_data, "eval_data": args.eval_data, "images_dir": args.images_dir,
    }
    out.update({k: v for k, v in flags.items() if v is not None})
    if args.gpus_per_worker is not None:
        out["use_gpu"] = args.gpus_per_worker > 0
    try:
        return coerce_config_values(out, "--set")
    except SpaceError as err:
        raise PreflightError(str(err)) from None


def absolute_data_paths(base: dict) -> dict:
    """Relative data paths become absolute: Ray workers run in another working directory."""
    out = dict(base)
    for key in ("train_data", "eval_data", "images_dir", "data_cache"):
        value = out.get(key)
        if is_local_path(value):
            out[key] = os.path.abspath(os.path.expanduser(value))
    pretrained = out.get("pretrained")
    if isinstance(pretrained, str) and os.path.exists(pretrained):
        out["pretrained"] = os.path.abspath(pretrained)
    return out


def prepare_resume(args: argparse.Namespace, fit: str = fit_name(fit_trial)) -> tuple[StudyState, SearchSpace]:
    """Load the saved study NAME (default: the space name) and check it can continue with the trial
    function named ``fit`` (the one it started with: a study never mixes two)."""
    name = study_name(args.name or _space_name_for_resume(args.space))
    storage = resolve_storage_path(args.storage_path or DEFAULT_STORAGE)
    state = load_state(storage, name)
    if state is None:
        raise PreflightError(f"nothing to resume: no study {name!r} in {storage} (start it without --resume)")
    if state.fit and state.fit != fit:
        raise PreflightError(f"study {name!r} runs the trial function {state.fit}, not {fit}; resume it with the same one")
    check_writable(storage)
    state.storage_path = storage  # the folder may have moved
    if args.tracking_uri and resolve_tracking_uri(args.tracking_uri) != state.tracking_uri:
        raise PreflightError(f"study {name!r} is tracked in {state.tracking_uri}; --tracking-uri cannot change on --resume")
    check_tracking_uri(state.tracking_uri)
    if args.output_dir:
        state.output_dir = _output_dir(args.output_dir, name)
    check_output_dir(state.output_dir)
    check_ray_address(args.address)
    if not args.address:  # the data may have moved or broken since the study started
        check_data_paths_exist(state.base_config)
        check_local_data(state.base_config)
    ignored = [f"--{f.replace('_', '-')}" for f in _STUDY_FLAGS if getattr(args, f, None) not in (None, [])]
    ignored = [f for f in ignored if f != "--space" or args.name]
    if ignored:
        console.say(f"note: --resume continues the saved study; ignoring {', '.join(ignored)}")
    space = parse_space(state.space["raw"], name=state.space["name"], source=state.space["source"])
    if Path(state.space["source"]).suffix in (".yaml", ".yml"):  # its paths resolve beside it, as at the start
        space = contain_paths(space, Path(state.space["source"]).parent)
    return state, space


def _space_name_for_resume(space_arg: Optional[str]) -> str:
    if not space_arg:
        return DEFAULT_SPACE
    return Path(space_arg).stem if space_arg.endswith((".yaml", ".yml")) else space_arg
