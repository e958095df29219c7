"""``python -m study.run``: a hyperparameter study of the mixed-batch CLIP trial.

Ray Tune (Optuna TPE, or a grid) searches the space; each trial trains under Ray Train;
MLflow records a parent run for the study and a child run per trial. With no flag it runs
the embedded default, ``--space ratio_only``, on a local Ray cluster. See ``--help``.

Everything that can be checked before Ray starts is checked first (space, storage, tracking
URI, resources, data, metric names; see :mod:`study.preflight`), each failure giving one
``error:`` line and exit code 2, with nothing created. A study then runs holding its lock
(:mod:`study.lock`: one driver per study) and, on a local cluster, the machine's one
local-cluster slot (:func:`study.cluster.local_cluster_slot`).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from study import console
from study.console import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, plan_text
from study.cluster import ClusterError, check_trial_fits, local_capacity
from study.lock import LockError
from study.preflight import (
    PreflightError,
    check_data_cache,
    check_eval_folder,
    check_metric,
    check_name_length,
    check_output_dir,
    check_resource,
    check_seed,
    eval_ks,
)
from study.spaces import (
    SearchSpace,
    SpaceError,
    build_trial_config,
    coerce_config_values,
    contain_paths,
    load_space,
    make_objective,
    parse_space,
    validate_space,
    validation_points,
)
from study.state import (
    StorageError,
    StudyState,
    check_writable,
    experiment_exists,
    load_state,
    resolve_storage_path,
)
from trainables.config import ConfigError, TrialConfig
from trainables.driver import fit_trial
from trainables.mlflow_store import TrackingError, check_tracking_uri, resolve_tracking_uri

DEFAULT_SPACE = "ratio_only"
DEFAULT_STORAGE = "ray_results"
DEFAULT_OUTPUT_ROOT = "study_results"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Flags that define a study; on --resume the saved values apply and these are ignored.
_STUDY_FLAGS = (
    "space", "num_samples", "max_concurrent", "workers_per_trial", "cpus_per_worker", "gpus_per_worker",
    "epochs", "metric", "mode", "seed", "train_data", "eval_data", "images_dir", "set", "scheduler",
    "max_failures",
)


class StudyError(RuntimeError):
    """Bad input for the study. One-line message."""


BAD_INPUT = (StudyError, SpaceError, ConfigError, StorageError, TrackingError, ClusterError, PreflightError, LockError)
# Flags whose empty value would silently mean the default (``--space ''`` ran the default space).
_NOT_EMPTY = {
    "space": "space name", "name": "study name", "storage_path": "storage path", "tracking_uri": "tracking URI",
    "output_dir": "output folder", "metric": "metric name", "train_data": "data path", "eval_data": "data path",
    "images_dir": "folder",
}


# Control characters (every one str.splitlines() breaks on among them) as their escapes: an
# error stays one line, and a NUL or ESC in a user's value reaches the terminal as text.
_CONTROLS = {ord(c): repr(c)[1:-1] for c in map(chr, [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029])}


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors (``error: MESSAGE``, exit 2) instead of usage + message."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        console.error(one_line(f"{message} (see --help)"))
        raise SystemExit(EXIT_BAD_INPUT)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The ``study.run`` argument parser (defaults None: 'not given' is distinguishable)."""
    p = _Parser(
        prog="python -m study.run",
        description="Run a Ray Tune + Optuna study of the mixed-batch multilingual CLIP trial, tracked in MLflow.",
    )
    p.add_argument("--space", help=f"search space: a name from search_spaces/ or a .yaml file (default {DEFAULT_SPACE}); see --list-spaces")
    p.add_argument("--list-spaces", action="store_true", help="list the available spaces and exit")
    p.add_argument("--list-fields", action="store_true", help="list the trial-config fields (--set KEY=VALUE) and exit")
    p.add_argument("--num-samples", type=int, help="number of trials (Optuna spaces) or repeats of the whole grid (grid spaces); default from the space")
    p.add_argument("--max-concurrent", type=int, help="most trials at once (default: as many as the cluster holds)")
    p.add_argument("--workers-per-trial", type=int, help="Ray Train (DDP) workers per trial (default from the space, else 1)")
    p.add_argument("--cpus-per-worker", type=float, help="CPUs reserved per worker (default 1)")
    p.add_argument("--gpus-per-worker", type=float, help="GPUs per worker; > 0 trains on GPU (default 0)")
    p.add_argument("--epochs", type=int, help="epochs per trial (default from the space)")
    p.add_argument("--metric", help="target metric (default from the space: map100/multilingual)")
    p.add_argument("--mode", choices=("max", "min"), help="direction of --metric (default max)")
    p.add_argument("--scheduler", choices=("fifo", "asha"), help="fifo (default) or asha: early-stop weak trials on the per-epoch metric")
    p.add_argument("--name", help="study name: Tune experiment and MLflow experiment (default: the space name)")
    p.add_argument("--storage-path", help=f"where Tune keeps the study state, a folder or URI (default ./{DEFAULT_STORAGE})")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    p.add_argument("--output-dir", help=f"folder for the table CSV, figure and best config (default ./{DEFAULT_OUTPUT_ROOT}/NAME)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted study NAME from the storage path")
    p.add_argument("--seed", type=int, help="seeds the Optuna sampler and the trials (unless the space searches seed); default 0")
    p.add_argument("--train-data", help="training data: synthetic (default), a JSONL manifest, or WebDataset shards")
    p.add_argument("--eval-data", help="evaluation data: synthetic (default) or an XTD-layout folder")
    p.add_argument("--images-dir", help="folder of the images referenced by --train-data/--eval-data")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a fixed trial-config field (repeatable), e.g. --set lr=1e-3; --list-fields lists them")
    p.add_argument("--max-failures", type=int, help="worker-group restarts per trial after a worker dies (default 1)")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="attach to a running Ray cluster (auto, or ray://HOST:PORT; default $RAY_ADDRESS, else a local cluster)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray cluster (default: all)")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1, help="Tune output: 0 quiet, 1 progress table and trial results (default), 2 every result")
    p.add_argument("--dry-run", action="store_true", help="check everything, print the plan, start nothing")
    return p


def main(argv: Optional[list[str]] = None, *, fit: Optional[Callable] = None) -> int:
    """Entry point; returns the exit code.

    ``fit`` fits one trial, with the contract of :func:`trainables.driver.fit_trial` (the
    default). A library user (or a test) may study another training function through it; it
    must be importable by, or picklable to, the Ray workers, and is given again on ``--resume``.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or a malformed flag (one error line already printed)
        return int(done.code or 0)
    _quiet_libraries()
    if args.list_spaces:
        from search_spaces import available_spaces

        console.say("\n".join(available_spaces()))
        return EXIT_OK
    if args.list_fields:
        from trainables.config import describe_fields

        rows = describe_fields()
        widths = [max(len(r[i]) for r in rows) for i in range(2)]
        console.say("\n".join(f"{n:<{widths[0]}}  {t:<{widths[1]}}  default {d}\n    {m}" for n, t, d, m in rows))
        return EXIT_OK
    try:
        check_flag_text(args)
        fit = fit or fit_trial
        state, space = prepare_resume(args, fit_name(fit)) if args.resume else prepare_new(args, fit_name(fit))
        if args.dry_run:
            console.say(plan_text(state, space))
            for note in start_notes(state, args):
                console.say(f"  note:     {note}")
            console.say("(dry run: nothing started)")
            return EXIT_OK
        return run_held(state, space, args, fit)
    except BAD_INPUT as err:
        console.error(one_line(str(err)))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        console.say("\nInterrupted before the study started; nothing to resume.")
        return EXIT_INTERRUPTED


def one_line(message: str) -> str:
    """``message`` with the control characters a user's value may carry (a path, a --set value) escaped."""
    return message.translate(_CONTROLS)


def check_flag_text(args: argparse.Namespace) -> None:
    """No flag value holds a NUL (no path or name can); an empty value is refused, not read as 'not given'."""
    for flag, value in vars(args).items():
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and "\x00" in text:
                raise StudyError(f"--{flag.replace('_', '-')} {text!r}: holds a NUL character")
    for flag, what in _NOT_EMPTY.items():
        value = getattr(args, flag, None)
        if isinstance(value, str) and not value.strip():
            raise StudyError(f"--{flag.replace('_', '-')} {value!r}: empty {what}; give one, or leave the flag out")


def run_held(state: StudyState, space: SearchSpace, args: argparse.Namespace, fit: Callable = fit_trial) -> int:
    """Run the prepared study holding its lock and, without --address, the machine's local-cluster slot."""
    from contextlib import nullcontext

    from study.cluster import local_cluster_slot
    from study.execute import run_study
    from study.lock import hold_study

    with hold_study(state.storage_path, state.name, say=console.say):
        if not args.resume and experiment_exists(state.storage_path, state.name):
            raise _exists_error(state.name, state.storage_path)  # started by another driver since the check
        with local_cluster_slot(state.name) if not args.address else nullcontext():
            return run_study(state, space, args, fit)


def start_notes(state: StudyState, args: argparse.Namespace) -> list[str]:
    """What would refuse a start right now, though the input is fine (for --dry-run)."""
    from study.cluster import running_ray_instances
    from study.lock import describe, study_holder

    notes = []
    holder = study_holder(state.storage_path, state.name)
    if holder is not None:
        notes.append(f"study {state.name!r} is being run by {describe(holder)}; a start now would be refused")
    others = [] if args.address else running_ray_instances()
    if others:
        notes.append(f"a Ray instance already runs on this machine ({', '.join(others)}); without --address "
                     "a start now would be refused")
    return notes


def _quiet_libraries() -> None:
    """Warnings and errors stay visible; chatter (INFO lines, tracebacks repeated by the summary) goes."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("alembic", "optuna", "ray._private.authentication.authentication_token_setup"):
        logging.getLogger(name).setLevel(logging.ERROR if "ray" in name else logging.WARNING)
    # A failed trial's traceback stays in its error file; the console names the reason once.
    for name in ("ray.tune.execution.tune_controller", "ray.tune.tune"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


# ---------------------------------------------------------------------------
# A new study
# ---------------------------------------------------------------------------
def fit_name(fit: Callable) -> str:
    """``module:name`` of a trial function (of its class, for a callable object): what a study records."""
    named = fit if hasattr(fit, "__qualname__") else type(fit)
    return f"{named.__module__}:{named.__qualname__}"


def prepare_new(args: argparse.Namespace, fit: str = fit_name(fit_trial)) -> tuple[StudyState, SearchSpace]:
    """Check every input of a new study (no Ray yet, nothing created) and build its state; ``fit``
    names the trial function (:func:`fit_name`)."""
    check_seed(args.seed)
    cpw = check_resource("cpus-per-worker", args.cpus_per_worker, 1.0)
    gpw = check_resource("gpus-per-worker", args.gpus_per_worker, 0.0)
    space = _checked_search(load_space(args.space or DEFAULT_SPACE), args)
    objectives = study_objectives(space, args)
    base = base_config(space, args)
    check_fixed_settings(space, base)
    validate_space(space, base)
    where = "--metric" if args.metric else f"space {space.name!r}"
    for objective in objectives:
        check_metric(objective.metric, eval_ks(base, space), where)
    if not args.address:  # on a cluster the data lives on the workers' file system, not here
        check_local_data(base)
    name = study_name(args.name or space.name)
    storage = resolve_storage_path(args.storage_path or DEFAULT_STORAGE)
    check_writable(storage)
    if experiment_exists(storage, name):
        raise _exists_error(name, storage)
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


def _exists_error(name: str, storage: str) -> StudyError:
    return StudyError(
        f"study {name!r} already exists in {storage}; continue it with --resume --name {name}, "
        "or start another with --name"
    )


def check_local_data(base: dict) -> None:
    """Local data the trials will read or write: the XTD folder's structure, the data cache."""
    check_eval_folder(base)
    check_data_cache(base)


def _checked_search(space: SearchSpace, args: argparse.Namespace) -> SearchSpace:
    for flag in ("num_samples", "max_concurrent", "max_failures", "num_cpus"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "max_failures" else 1):
            raise StudyError(f"--{flag.replace('_', '-')}={value}: must be {'>= 0' if flag == 'max_failures' else 'positive'}")
    if args.scheduler == "asha" and space.multi_objective:
        raise StudyError(f"--scheduler asha needs a single objective; space {space.name!r} has {len(space.objectives)}")
    if args.scheduler == "asha" and space.seed_min:
        raise StudyError(f"--scheduler asha with raced seeds (space {space.name!r}): early stopping would race "
                         "the seeds on cut-short trials; use the default fifo scheduler")
    if space.algorithm == "grid" and space.seeds and args.num_samples not in (None, 1):
        raise StudyError(f"--num-samples {args.num_samples}: a grid with search.seeds (space {space.name!r}) runs each "
                         "point once per seed; leave --num-samples out")
    try:
        space.check_seed_budget(args.num_samples)
    except SpaceError as err:
        raise StudyError(f"{err} (--num-samples {args.num_samples})") from None
    return space


def _output_dir(value: Optional[str], name: str) -> str:
    return str(Path(value or Path(DEFAULT_OUTPUT_ROOT) / name).expanduser().resolve())


def study_name(name: str) -> str:
    """A study name usable as a folder and an MLflow experiment name."""
    if not _NAME.match(name):
        raise StudyError(f"study name {name!r}: use letters, digits, '_', '-', '.' (starting with a letter or digit)")
    check_name_length(name)
    return name


def study_objectives(space: SearchSpace, args: argparse.Namespace) -> tuple:
    """The space's objectives, or the single one given by --metric/--mode."""
    if args.metric is None and args.mode is None:
        return space.objectives
    if space.multi_objective:
        raise StudyError(f"space {space.name!r} is multi-objective ({', '.join(o.metric for o in space.objectives)}); --metric/--mode do not apply")
    first = space.objectives[0]
    return (make_objective(args.metric or first.metric, args.mode or first.mode, "--metric/--mode"),)


# ---------------------------------------------------------------------------
# The trial config shared by all trials
# ---------------------------------------------------------------------------
def base_config(space: SearchSpace, args: argparse.Namespace) -> dict:
    """TrialConfig defaults <- the space's ``fixed`` <- CLI flags; searched fields left out."""
    searched = set(space.param_names)
    base = {**TrialConfig().to_dict(), **space.fixed}
    overrides = cli_overrides(args, searched)
    clash = sorted(set(overrides) & searched - {"seed"})
    if clash:
        raise StudyError(f"{', '.join(clash)} searched by space {space.name!r}; it cannot also be fixed on the command line")
    base.update({k: v for k, v in overrides.items() if k not in searched})
    base = absolute_data_paths(base)
    if not args.address:  # on a cluster the data lives on the workers' file system, not here
        check_data_paths_exist(base)
    for key in searched:
        base.pop(key, None)
    return base


def check_data_paths_exist(base: dict) -> None:
    """Fail before Ray starts when a local data path does not exist (else every trial fails on it)."""
    from trainables.config import ConfigError
    from trainables.data import DataError
    from trainables.data.shards import expand_shards
    from trainables.data.sources import train_data_kind

    for key in ("eval_data", "images_dir"):
        value = base.get(key)
        if isinstance(value, str) and value != "synthetic" and "://" not in value and not os.path.exists(value):
            raise StudyError(f"--{key.replace('_', '-')} {value}: no such file or folder")
    train = base.get("train_data")
    if not isinstance(train, str) or train == "synthetic" or "://" in train:
        return
    try:
        if train_data_kind(train) == "shards":
            expand_shards(train)  # the same expansion the trial will do: patterns, folders, lists
        elif not os.path.exists(train):
            raise StudyError(f"--train-data {train}: no such file, folder or shard pattern")
    except (ConfigError, DataError) as err:
        raise StudyError(f"--train-data {train}: {err}") from None
    except OSError as err:  # e.g. a name too long for the file system
        raise StudyError(f"--train-data {train}: {err.strerror or err}") from None
    except ValueError as err:  # braceexpand's unbalanced braces, which the trial would meet too
        raise StudyError(f"--train-data {train}: {err}") from None


def check_fixed_settings(space: SearchSpace, base: dict) -> None:
    """Blame a bad fixed setting (space ``fixed`` or a flag) on itself, not on the space's samples."""
    point = validation_points(space, n_samples=0)[0]
    try:
        build_trial_config(base, point)
    except ConfigError as err:
        if not any(name in str(err) for name in space.param_names):
            raise StudyError(f"trial settings (space 'fixed' + command line): {err}") from None


def cli_overrides(args: argparse.Namespace, searched: set) -> dict:
    """Trial-config fields given by flags (``--set`` included)."""
    out: dict[str, Any] = {}
    for item in args.set or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise StudyError(f"--set {item!r}: expected KEY=VALUE")
        if key in ("num_workers", "use_gpu"):
            raise StudyError(f"--set {key}: use --workers-per-trial / --gpus-per-worker")
        if key not in TrialConfig.__dataclass_fields__:
            raise StudyError(f"--set {key}: not a trial config field (python -m study.run --list-fields lists them)")
        try:
            out[key] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise StudyError(f"--set {item!r}: unreadable value") from None
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
        raise StudyError(str(err)) from None


def absolute_data_paths(base: dict) -> dict:
    """Relative data paths become absolute: Ray workers run in another working directory."""
    out = dict(base)
    for key in ("train_data", "eval_data", "images_dir", "data_cache"):
        value = out.get(key)
        if isinstance(value, str) and value and value != "synthetic" and "://" not in value:
            out[key] = os.path.abspath(os.path.expanduser(value))
    pretrained = out.get("pretrained")
    if isinstance(pretrained, str) and os.path.exists(pretrained):
        out["pretrained"] = os.path.abspath(pretrained)
    return out


# ---------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------
def prepare_resume(args: argparse.Namespace, fit: str = fit_name(fit_trial)) -> tuple[StudyState, SearchSpace]:
    """Load the saved study NAME (default: the space name) and check it can continue with the trial
    function named ``fit`` (the one it started with: a study never mixes two)."""
    name = study_name(args.name or _space_name_for_resume(args.space))
    storage = resolve_storage_path(args.storage_path or DEFAULT_STORAGE)
    state = load_state(storage, name)
    if state is None:
        raise StudyError(f"nothing to resume: no study {name!r} in {storage} (start it without --resume)")
    if state.fit and state.fit != fit:
        raise StudyError(f"study {name!r} runs the trial function {state.fit}, not {fit}; resume it with the same one")
    check_writable(storage)
    state.storage_path = storage  # the folder may have moved
    if args.tracking_uri and resolve_tracking_uri(args.tracking_uri) != state.tracking_uri:
        raise StudyError(f"study {name!r} is tracked in {state.tracking_uri}; --tracking-uri cannot change on --resume")
    check_tracking_uri(state.tracking_uri)
    if args.output_dir:
        state.output_dir = _output_dir(args.output_dir, name)
    check_output_dir(state.output_dir)
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


if __name__ == "__main__":
    console.exit_quietly(main())  # not sys.exit: native exit-time noise, see console.exit_quietly
