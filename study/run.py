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
import warnings
from contextlib import nullcontext
from typing import Callable, Optional

from search_spaces import available_spaces
from study import console
from study.cluster import ClusterError, local_cluster_slot, running_ray_instances
from study.console import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, plan_text
from study.lock import LockError, describe_holder, hold_study, study_holder
from study.preflight import PreflightError
from study.preflight.flags import check_flag_text
from study.prepare import (
    DEFAULT_OUTPUT_ROOT,
    DEFAULT_SPACE,
    DEFAULT_STORAGE,
    exists_error,
    fit_name,
    prepare_new,
    prepare_resume,
)
from study.spaces import SearchSpace, SpaceError
from study.state import StudyState
from study.storage import StorageError, experiment_exists
from trainables.config import ConfigError, describe_fields
from trainables.driver import fit_trial
from trainables.mlflow_store import TrackingError

BAD_INPUT = (SpaceError, ConfigError, StorageError, TrackingError, ClusterError, PreflightError, LockError)

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
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1, help="progress lines: 0 none, 1 each trial's start, evaluations and end (default), 2 also mAP@100 per family")
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
        console.say("\n".join(available_spaces()))
        return EXIT_OK
    if args.list_fields:
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


def run_held(state: StudyState, space: SearchSpace, args: argparse.Namespace, fit: Callable = fit_trial) -> int:
    """Run the prepared study holding its lock and, without --address, the machine's local-cluster slot."""
    from study.execute import run_study  # imports Ray Tune, which a refused input never needs (docs/performance.md)

    with hold_study(state.storage_path, state.name, say=console.say):
        if not args.resume and experiment_exists(state.storage_path, state.name):
            raise exists_error(state.name, state.storage_path)  # started by another driver since the check
        with local_cluster_slot(state.name) if not args.address else nullcontext():
            return run_study(state, space, args, fit)


def start_notes(state: StudyState, args: argparse.Namespace) -> list[str]:
    """What would refuse a start right now, though the input is fine (for --dry-run)."""
    notes = []
    holder = study_holder(state.storage_path, state.name)
    if holder is not None:
        notes.append(f"study {state.name!r} is being run by {describe_holder(holder)}; a start now would be refused")
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


if __name__ == "__main__":
    console.exit_quietly(main())  # not sys.exit: native exit-time noise, see console.exit_quietly
