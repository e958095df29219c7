"""Running a prepared study: Ray, MLflow parent run, the Tuner, and the answer at the end.

Interruption: Ctrl-C (SIGINT) and SIGTERM stop Tune gracefully (Tune saves its state); the
console then prints the resume command. Trials already finished are kept; unfinished ones
re-run on ``--resume`` (from their last Ray Train checkpoint). A full disk (the storage path, the
data cache) stops the study the same way (:mod:`study.stop`), with one line naming it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Optional

from study import console
from study.console import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, plan_text, resume_command
from study.cluster import (
    Capacity,
    ClusterError,
    apply_env_defaults,
    check_trial_fits,
    cluster_capacity,
    max_concurrent_trials,
    release_orphaned_placement_groups,
    start_ray,
)
from study.answer import trial_queries
from study.race import RACE_REPORT, read_race_report, write_race_report
from study.results import FAILED, UNFINISHED, TrialRecord, records_from_results
from study.spaces import SearchSpace
from study.state import StudyState, describe, load_state, save_state
from study.storage import is_uri
from study.tuning import (
    build_tuner,
    can_restore,
    export_optuna_study,
    optuna_storage_url,
    parameter_importance,
    restore_tuner,
)
from study.parent_run import (
    close_parent_run,
    describe_experiment,
    ensure_experiment,
    failure_reasons,
    log_answer_by_ratio,
    log_importance,
    log_summary,
    reconcile_children,
    reopen_parent_run,
    start_parent_run,
)
from study.stop import StopWatch
from trainables.atomic import atomic_file
from trainables.errors import failure_reason, full_disk_line, naming_full, one_line
from trainables.mlflow_layout import BASE_CONFIG_FILE, SPACE_FILE
from trainables.mlflow_store import TrackingError, client_for, sqlite_path
from trainables.trial_run import TrackingInfo


def run_study(state: StudyState, space: SearchSpace, args: Any, fit: Callable) -> int:
    """Start Ray, run (or resume) the study, print and save the answer; returns the exit code.

    Each trial calls ``fit`` (the contract of :func:`trainables.driver.fit_trial`)."""
    import ray

    resumed = bool(state.parent_run_id)
    client = client_for(state.tracking_uri)
    watch = StopWatch(state.storage_path)
    try:
        start_ray(args.address, args.num_cpus, apply_env_defaults())
        if args.address:
            reclaim_cluster_resources()
        capacity = plan_resources(state, resumed)
        open_tracking(client, state, resumed)
        with naming_full("storage path", state.storage_path):
            save_state(state)
        console.say(plan_text(state, space))
        for warning in cluster_warnings(state, args.address):
            console.say(f"  warning:  {warning}")
        console.say(f"  parent:   MLflow experiment {state.name!r} ({state.experiment_id}), run {state.parent_run_id}")
        console.say(f"  UI:       {console.mlflow_ui_command(state.tracking_uri, state.experiment_id, state.parent_run_id)}\n")
        with naming_full("storage path", state.storage_path):  # Tune writes tuner.pkl there
            if resumed and can_restore(state):
                tuner = restore_tuner(state, capacity, fit)
            else:
                tuner = build_tuner(space, state, capacity, fit, args.verbose)
        started = time.monotonic()
        with watch:
            results = fit_handling_signals(tuner)
        if watch.reason:
            return stop_on_full_disk(client, state, watch.reason, args.address)
        return finish(client, state, space, results, time.monotonic() - started, args.address)
    except KeyboardInterrupt:
        if watch.reason:  # the watch's interrupt came before or after Tune listened for it
            return stop_on_full_disk(client, state, watch.reason, args.address)
        if not state.parent_run_id:
            console.say("\nInterrupted before the study started; nothing to resume.")
            return EXIT_INTERRUPTED
        _safe(lambda: close_parent_run(client, state.parent_run_id, "KILLED"), "mark the parent run KILLED")
        console.say(f"\nInterrupted. Resume with:\n  {resume_command(state, args.address)}")
        return EXIT_INTERRUPTED
    except (TrackingError, ClusterError):
        raise  # bad input: one line from study.run
    except Exception as err:  # noqa: BLE001 - Tune/Ray failure: one line and the way back
        full = watch.reason or full_disk_line(err, state.storage_path)
        if full is not None:
            return stop_on_full_disk(client, state, one_line(full), args.address)
        console.error(f"the study stopped: {failure_reason(err)}")
        details = save_traceback(err, Path(state.output_dir))
        if details:
            console.say(f"  (the full traceback: {details})")
        console.say(f"Resume with:\n  {resume_command(state, args.address)}")
        return EXIT_FAILED
    finally:
        ray.shutdown()


STUDY_ERROR_FILE = "study_error.txt"


def save_traceback(err: BaseException, output_dir: Path) -> Optional[Path]:
    """Write ``err``'s full traceback (Tune's own, with its cause) to ``output_dir``/study_error.txt,
    where the one printed line comes from; None when it cannot be written (then the line alone)."""
    import traceback

    path = output_dir / STUDY_ERROR_FILE
    try:
        with atomic_file(path) as out:
            out.write("".join(traceback.format_exception(err)).encode("utf-8"))
    except OSError:
        return None
    return path


def reclaim_cluster_resources() -> None:
    """Free what ended Ray jobs left holding on a shared cluster (:func:`release_orphaned_placement_groups`)."""
    try:
        released = release_orphaned_placement_groups()
    except Exception as err:  # noqa: BLE001 - the state API is optional (no dashboard): say so, go on
        console.say(f"  note:     could not look for placement groups left by ended Ray jobs: {one_line(err)}")
        return
    if released:
        console.say(f"  note:     released {len(released)} placement group(s) left by Ray jobs that no longer run "
                    "(a killed study's trials); their CPUs and GPUs were held")


def stop_on_full_disk(client: Any, state: StudyState, reason: str, address: Optional[str]) -> int:
    """End a study that stopped because a disk is full (``reason``: one line naming it, see
    :mod:`study.stop`): no trial failed for it. The runs of the trials it interrupted end KILLED (a
    resume re-opens them), so does the parent run; then one line says what is full and how to go
    on. Exit code 1, as for any study that stopped after it started (2 is for input refused before)."""
    if state.parent_run_id:
        parent = TrackingInfo(state.tracking_uri, state.experiment_id, state.parent_run_id, "", "")
        _safe(lambda: reconcile_children(client, parent, []), "mark the interrupted trials' runs KILLED")
        _safe(lambda: close_parent_run(client, state.parent_run_id, "KILLED"), "mark the parent run KILLED")
    if _saved(state):
        console.error(f"{reason}; free space, then resume with: {resume_command(state, address)}")
    else:  # the full disk refused the study's first state file: there is nothing to resume
        console.error(f"{reason}; free space, then run the same command again (nothing was saved to resume)")
    return EXIT_FAILED


def _saved(state: StudyState) -> bool:
    """Whether ``state``'s study file is in its storage (a resume can find it); True when unreadable."""
    try:
        return load_state(state.storage_path, state.name) is not None
    except Exception:  # noqa: BLE001 - a storage we cannot read now: say what usually holds
        return True


def plan_resources(state: StudyState, resumed: bool) -> Capacity:
    """Check one trial fits the cluster and set how many run at once (kept as saved on resume)."""
    capacity = cluster_capacity()
    shape = (state.workers_per_trial, state.cpus_per_worker, state.gpus_per_worker)
    if resumed:
        check_trial_fits(capacity, *shape)
        return capacity
    state.max_concurrent = max_concurrent_trials(
        capacity, *shape, requested=state.max_concurrent or None, num_trials=state.num_trials
    )
    return capacity


def cluster_warnings(state: StudyState, address: Any) -> list[str]:
    """On a Ray cluster, local storage and a sqlite store reach only the nodes that hold them; in a Ray
    job (``ray job submit --working-dir``), a path inside the job's copy of that folder goes with it."""
    if not address:
        return []
    out = [f"{what} {path} is inside this Ray job's copy of its working directory, which Ray deletes after the job: "
           f"pass {flag} with a lasting path{extra}" for what, path, flag, extra in _paths_in_job_copy(state)]
    if not is_uri(state.storage_path):
        out.append(f"storage path {state.storage_path} is local: on several nodes, use a shared folder or a URI (s3://...)")
    if state.tracking_uri.startswith("sqlite:"):
        out.append("a sqlite MLflow store is reachable from this node only: on several nodes, use an MLflow server")
    return out


def _paths_in_job_copy(state: StudyState) -> list[tuple[str, str, str, str]]:
    """(what, path, flag, note) of the study's paths inside the working-directory copy of the Ray job
    this driver runs in; none outside a job with a working directory."""
    import ray

    if not (ray.get_runtime_context().runtime_env or {}).get("working_dir"):
        return []
    copy = Path.cwd().resolve()
    db = sqlite_path(state.tracking_uri)
    candidates = [("storage path", state.storage_path, "--storage-path", " (--resume reads the study's state there)"),
                  ("MLflow database", str(db) if db else "", "--tracking-uri", ""),
                  ("output folder", state.output_dir, "--output-dir", " (its files are also the parent run's "
                   "summary/ artifacts in MLflow)")]
    return [c for c in candidates if c[1] and not is_uri(c[1]) and Path(c[1]).resolve().is_relative_to(copy)]


def open_tracking(client: Any, state: StudyState, resumed: bool) -> None:
    """The study's MLflow experiment and parent run (re-opened on resume)."""
    try:
        if resumed:
            reopen_parent_run(client, state.parent_run_id)
            return
        state.experiment_id = ensure_experiment(client, state.name)
        files = {SPACE_FILE: state.space.get("raw", {}), BASE_CONFIG_FILE: state.base_config}
        state.parent_run_id = start_parent_run(client, state.experiment_id, state.name, str(state.space.get("name")),
                                               describe(state), files)
    except TrackingError:
        raise
    except Exception as err:  # noqa: BLE001 - one line, not a traceback
        raise TrackingError(f"MLflow at {state.tracking_uri}: {one_line(err)}") from None


def fit_handling_signals(tuner: Any) -> Any:
    """``tuner.fit()`` with SIGTERM turned into Tune's graceful SIGINT stop."""
    def on_term(signum, frame):  # noqa: ARG001
        os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        return tuner.fit()
    finally:
        signal.signal(signal.SIGTERM, previous)


def finish(client: Any, state: StudyState, space: SearchSpace, results: Any, seconds: float,
           address: Optional[str] = None) -> int:
    """Reconcile MLflow, print the table and best config, save and log the summary files (``address``:
    the study's ``--address``, for the resume command)."""
    records = records_from_results(results, state.base_config)
    _attach_reasons(records, failure_reasons(client, state.experiment_id, state.parent_run_id))
    reconcile_children(client, TrackingInfo(state.tracking_uri, state.experiment_id, state.parent_run_id, "", ""), records)
    race = read_race_report(os.path.join(state.output_dir, RACE_REPORT)) if space.seeds else None
    if race is not None and race.stop_reason is None:
        race.next_action()  # Tune stops asking at its trial budget: the race then says it is done here
        write_race_report(os.path.join(state.output_dir, RACE_REPORT), race)
    cut_short = race.stop_reason is None if race is not None else len(records) < state.num_trials
    interrupted = cut_short or any(r.status == UNFINISHED for r in records)
    title = f"{state.name}: mAP@100 per family vs ratio"
    answer_input = trial_queries(client, state.experiment_id, state.parent_run_id, records)
    summary = console.summarize(records, state.objectives, Path(state.output_dir), title, space.param_names, answer_input,
                                target_halfwidth=space.target_halfwidth or 0.02)
    planned = f"at most {state.num_trials}" if race is not None else str(state.num_trials)
    console.say(f"\nTrials of study {state.name} ({len(records)}/{planned}, {seconds:.0f} s):\n")
    if race is not None:
        console.say(f"Seeds: {race.summary()}\n")
    console.say(summary.text)
    importance = _optuna_view(state, space, records) if space.algorithm == "optuna" else {}
    if importance:
        console.say("\n" + console.importance_text(importance))
    log_summary(client, state.parent_run_id, summary.best, state.metric, summary.files, summary.markdown,
                summary.best_ratio, summary.ratio_effect)
    describe_experiment(client, state.experiment_id, state.name, summary.headline, summary.overview)
    log_answer_by_ratio(client, state.parent_run_id, summary.answer_rows)
    log_importance(client, state.parent_run_id, importance)
    close_parent_run(client, state.parent_run_id, "KILLED" if interrupted else "FINISHED")
    console.say(f"\nMLflow UI: {console.mlflow_ui_command(state.tracking_uri, state.experiment_id, state.parent_run_id)}")
    if space.algorithm == "optuna":
        console.say(f"Optuna: optuna-dashboard {optuna_storage_url(state)}  (the search's own view: trials, history, importance)")
    if interrupted:
        console.say(f"\nThe study is incomplete. Resume with:\n  {resume_command(state, address)}")
        return EXIT_INTERRUPTED
    if records and all(r.status == FAILED for r in records):
        return EXIT_FAILED
    return EXIT_OK


def _attach_reasons(records: list[TrialRecord], reasons: dict[str, str]) -> None:
    for record in records:
        if record.status == FAILED and reasons.get(record.trial_id):
            record.reason = reasons[record.trial_id]


def _optuna_view(state: StudyState, space: SearchSpace, records: list[TrialRecord]) -> dict:
    """Write the study's Optuna study (:func:`study.tuning.export_optuna_study`), then the parameter
    importance of the searched parameters (the seed is not one); a failure is said in one line:
    the answer above stands without it."""
    try:
        export_optuna_study(state, space, records)
        return parameter_importance(state, [p for p in space.param_names if p != "seed"])
    except Exception as err:  # noqa: BLE001 - optional analysis: any failure is a note, not a failed study
        console.say(f"note: no Optuna study or parameter importance: {one_line(err)}")
        return {}


def _safe(action, what: str) -> None:
    """Run ``action`` while exiting on Ctrl-C; a failure is said in one line, not raised over the way back."""
    try:
        action()
    except Exception as err:  # noqa: BLE001 - exiting anyway: say it, then show how to resume
        console.say(f"note: could not {what}: {one_line(err)} (a --resume reopens and closes it)")
