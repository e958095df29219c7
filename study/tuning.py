"""Building (and restoring) the Ray Tune ``Tuner`` of a study.

* Optuna spaces: a seeded TPE sampler in ``OptunaSearch`` (under
  :class:`study.searchers.ResumeSafeOptuna`, so a study killed mid-save resumes), bounded by
  ``ConcurrencyLimiter`` (kept in step with Tune by :class:`study.searchers.LimiterSync`, and a seed race by
  :class:`study.searchers.RaceSync`).
  Multi-objective metric/mode lists go on ``OptunaSearch`` (Ray 2.60), not ``TuneConfig``.
* Grid spaces: Tune's grid search (no Optuna), bounded by ``max_concurrent_trials``.
* With ``search.seeds`` (Optuna or grid): :class:`study.searchers.SeedSearcher`, on Tune's public
  ``Searcher`` API, gives every candidate its seeds, equally or raced (:mod:`study.race`); Optuna is told
  each proposal's seed mean, so it models the ratio, not one seed's luck.
* ``--scheduler asha``: ``AsyncHyperBandScheduler`` on the per-epoch target metric.

The Tune experiment, including the pickled searcher, lives in ``<storage>/<name>``;
:func:`restore_tuner` continues it with ``Tuner.restore``.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Sequence

from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from study.cluster import Capacity, driver_resources
from study.progress import StudyProgress, tune_output_env
from study.race import RACE_REPORT, SeedRace
from study.searchers import ResumeSafeOptuna, SeedSearcher, searcher_callbacks
from study.spaces import SearchSpace
from study.state import StudyState, join
from study.storage import is_uri
from study.trial import TrialContext, run_trial
from trainables.metric_names import BIAS_METRIC, LOSS_METRIC, logged_name
from trainables.mlflow_layout import COMPLETED, EARLY_STOPPED
from trainables.storage_fs import storage_filesystem

# First in each result a trial reports (Tune's progress.csv columns), under the short names the
# MLflow UI shows too (the trials forward both names: study.trial).
_TABLE_METRICS = tuple(logged_name(m) for m in (BIAS_METRIC, LOSS_METRIC))


def trial_dirname(trial: Any) -> str:
    """Trial folder names carry the trial id, never a timestamp (restore depends on them)."""
    return f"trial_{trial.trial_id}"


def trial_context(state: StudyState, fit: Callable) -> TrialContext:
    """The per-study context every trial receives; ``fit`` fits one trial (see :class:`TrialContext`)."""
    resources = {"CPU": state.cpus_per_worker}
    if state.gpus_per_worker:
        resources["GPU"] = state.gpus_per_worker
    first = tuple(dict.fromkeys([logged_name(o["metric"]) for o in state.objectives] + list(_TABLE_METRICS)))
    return TrialContext(
        study_name=state.name,
        base_config=dict(state.base_config),
        fit=fit,
        train_storage=join(state.experiment_path, "train_runs"),
        tracking_uri=state.tracking_uri,
        experiment_id=state.experiment_id,
        parent_run_id=state.parent_run_id,
        max_failures=state.max_failures,
        resources_per_worker=resources,
        metrics_first=first,
        objectives=tuple(o["metric"] for o in state.objectives),
        storage_path=state.storage_path,
    )


def build_trainable(state: StudyState, capacity: Capacity, fit: Callable) -> Any:
    """The Tune function with its context bound and a driver reservation that holds no worker CPU."""
    from ray import tune

    ctx = trial_context(state, fit)
    return tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), driver_resources(capacity))


def seed_race(space: SearchSpace, state: StudyState) -> SeedRace:
    """The study's :class:`SeedRace`: its seeds, candidates (proposals or grid points) and budget."""
    return SeedRace(plan=space.seed_plan(), n_candidates=space.num_candidates(state.num_samples), mode=state.mode)


def build_searcher(space: SearchSpace, state: StudyState) -> Any:
    """The study's searcher under a ConcurrencyLimiter, or None for a grid without ``search.seeds``.

    Optuna spaces: seeded TPE in ``OptunaSearch``. With ``search.seeds`` (Optuna or grid), a
    :class:`SeedSearcher` decides each trial's candidate and seed (:mod:`study.race`).
    """
    if space.algorithm == "grid" and not space.seeds:
        return None
    from ray.tune.search import ConcurrencyLimiter

    searcher = _optuna_searcher(space, state) if space.algorithm == "optuna" else None
    if searcher is not None and not space.seeds:
        searcher = ResumeSafeOptuna(searcher)
    if space.seeds:
        grid = space.grid_points() if space.algorithm == "grid" else ()
        searcher = SeedSearcher(seed_race(space, state), state.metric, state.mode, inner=searcher, grid=grid,
                                report=os.path.join(state.output_dir, RACE_REPORT))
        searcher._write_report()  # a fresh study's race replaces any earlier file there
    return ConcurrencyLimiter(searcher, max_concurrent=state.max_concurrent)


OPTUNA_DB = "optuna.db"  # the study's trials as an Optuna study: optuna-dashboard reads it


def optuna_storage_url(state: StudyState) -> str:
    """Where the study's Optuna study is written: ``sqlite:///<storage>/<name>/optuna.db`` beside
    Tune's state, or in the output folder when the storage path is a URI (sqlite needs a local file)."""
    folder = state.output_dir if is_uri(state.storage_path) else state.experiment_path
    return f"sqlite:///{os.path.join(folder, OPTUNA_DB)}"


def export_optuna_study(state: StudyState, space: SearchSpace, records: Sequence[Any]) -> str:
    """Write the study's trials to :func:`optuna_storage_url` as an Optuna study named after the study,
    through Optuna's public API (``create_trial``/``add_trials``), and return the URL.

    One Optuna trial per Tune trial (each seed its own): its searched values (the seed left out)
    and its objectives; a trial that did not complete is FAIL (stopped early: PRUNED). The search
    itself keeps its Optuna study in memory, inside the searcher Tune checkpoints, so that a
    resumed study continues it exactly; this file is the view of it for optuna-dashboard and for
    :func:`parameter_importance`, written anew at the end of every run.
    """
    import optuna  # only an Optuna space needs it (an import of its own)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = optuna_storage_url(state)
    os.makedirs(os.path.dirname(url[len("sqlite:///"):]), exist_ok=True)
    try:
        optuna.delete_study(study_name=state.name, storage=url)
    except KeyError:
        pass
    directions = [("maximize" if o["mode"] == "max" else "minimize") for o in state.objectives]
    study = optuna.create_study(study_name=state.name, storage=url, directions=directions)
    distributions = {p.name: _distribution(p) for p in space.params if p.name != "seed"}
    trials = []
    for record in records:
        params = {k: record.params[k] for k in distributions if k in record.params}
        if len(params) != len(distributions):
            continue
        values = [record.value(o["metric"]) for o in state.objectives]
        complete = record.status == COMPLETED and all(math.isfinite(v) for v in values)
        trial_state = (optuna.trial.TrialState.COMPLETE if complete else optuna.trial.TrialState.PRUNED
                       if record.status == EARLY_STOPPED else optuna.trial.TrialState.FAIL)
        trials.append(optuna.trial.create_trial(params=params, distributions=distributions, state=trial_state,
                                                values=values if complete else None,
                                                user_attrs={"tune_trial_id": record.trial_id,
                                                            "seed": record.params.get("seed")}))
    study.add_trials(trials)
    return url


def _distribution(param: Any) -> Any:
    import optuna  # see export_optuna_study

    if param.type in ("uniform", "loguniform"):
        return optuna.distributions.FloatDistribution(param.low, param.high, log=param.type == "loguniform")
    if param.type == "int":
        return optuna.distributions.IntDistribution(int(param.low), int(param.high))
    return optuna.distributions.CategoricalDistribution(list(param.values))


def parameter_importance(state: StudyState, params: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per objective metric: each searched parameter's share of the variance of the objective over
    the completed trials of the study's exported Optuna study (:func:`export_optuna_study`; fANOVA,
    ``optuna.importance``; shares sum to 1). Empty with fewer than 2 searched parameters or 3
    completed trials (too few to apportion anything)."""
    import optuna  # see export_optuna_study

    if len(params) < 2:
        return {}
    study = optuna.load_study(study_name=state.name, storage=optuna_storage_url(state))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) < 3:
        return {}
    out = {}
    for k, objective in enumerate(state.objectives):
        shares = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), params=list(params),
            target=lambda t, k=k: t.values[k])
        out[objective["metric"]] = {name: float(value) for name, value in shares.items()}
    return out


def _optuna_searcher(space: SearchSpace, state: StudyState) -> Any:
    import optuna  # only an Optuna space needs it (an import of its own)
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(
        seed=state.seed, n_startup_trials=space.n_startup_trials, multivariate=space.multivariate
    )
    points = [dict(p) for p in space.initial_points] or None
    if state.multi_objective:
        return OptunaSearch(
            metric=[o["metric"] for o in state.objectives],
            mode=[o["mode"] for o in state.objectives],
            sampler=sampler,
            points_to_evaluate=points,
        )
    return OptunaSearch(metric=state.metric, mode=state.mode, sampler=sampler, points_to_evaluate=points)


# ASHA's first rung, as a share of a trial's epochs. Measured on the default recipe (12 trials of the
# README's study, 3 ratios x 3-5 seeds): Spearman's rank correlation with the final objective is 0.90
# after 200 of 500 steps (the first evaluation) and 0.99 after 400.
ASHA_FIRST_RUNG = 0.4


def build_scheduler(state: StudyState, space: SearchSpace) -> Any:
    """ASHA early stopping on the per-epoch target metric, or None (FIFO).

    Its horizon ``max_t`` is the most epochs a trial may run: the largest value of a searched
    ``epochs``, else the fixed one (the base config holds no searched field). Its first rung is at
    :data:`ASHA_FIRST_RUNG` of that budget: on the default recipe, the value there ranks the
    trials as their final value does (docs/architecture.md, "Early stopping").
    """
    if state.scheduler != "asha":
        return None
    from ray.tune.schedulers import AsyncHyperBandScheduler

    searched = [p for p in space.params if p.name == "epochs"]
    epochs = int(max(searched[0].corner_values())) if searched else int(state.base_config.get("epochs", 1))
    return AsyncHyperBandScheduler(
        metric=state.metric,
        mode=state.mode,
        time_attr="epoch",  # not training_iteration: epochs without evaluation are not forwarded
        max_t=max(1, epochs),
        grace_period=max(1, round(ASHA_FIRST_RUNG * epochs)),
        reduction_factor=2,
    )


def build_tuner(space: SearchSpace, state: StudyState, capacity: Capacity, fit: Callable, verbose: int = 1) -> Any:
    """A fresh Tuner for the study, whose trials each call ``fit`` (see :class:`TrialContext`)."""
    from ray import tune

    searcher = build_searcher(space, state)
    # No metric for Tune itself: the searcher and the scheduler are given theirs; Tune would only use
    # one for its "best trial" (one seed), which is not the study's answer.
    tune_config = tune.TuneConfig(
        search_alg=searcher,
        scheduler=build_scheduler(state, space),
        num_samples=state.num_samples if searcher is None else state.num_trials,  # seeds included
        max_concurrent_trials=state.max_concurrent if searcher is None else None,
        trial_name_creator=trial_dirname,
        trial_dirname_creator=trial_dirname,
    )
    _tune_env()
    run_config = tune.RunConfig(
        name=state.name,
        storage_path=state.storage_path,
        storage_filesystem=storage_filesystem(state.storage_path),  # whole files only: a full disk corrupts nothing
        verbose=0,  # Tune prints nothing of its own; StudyProgress prints the study's lines
        failure_config=tune.FailureConfig(max_failures=0),  # worker restarts happen inside Ray Train
        # Tune's CSV and JSON results (result.json, progress.csv), without its TensorBoard logger:
        # MLflow is where a study is read, and Tune would print a TensorBoard hint for it.
        callbacks=[CSVLoggerCallback(), JsonLoggerCallback(), *searcher_callbacks(searcher),
                   StudyProgress(state.metric, state.num_trials, verbose, at_most=bool(space.seeds))],
    )
    return tune.Tuner(
        build_trainable(state, capacity, fit),
        param_space={} if space.algorithm == "grid" and space.seeds else space.tune_param_space(),  # the searcher's
        tune_config=tune_config,
        run_config=run_config,
    )


def _tune_env() -> None:
    """Tune adds its default loggers (TensorBoard included) unless told not to; the study gives its
    own list (CSV, JSON) in its RunConfig, which a restored Tuner keeps. Tune's reporter is off
    (:func:`study.progress.tune_output_env`)."""
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    tune_output_env()


def can_restore(state: StudyState) -> bool:
    """Whether Tune saved an experiment state for this study."""
    from ray import tune

    return tune.Tuner.can_restore(state.experiment_path, storage_filesystem=storage_filesystem(state.storage_path))


def restore_tuner(state: StudyState, capacity: Capacity, fit: Callable) -> Any:
    """Continue the study: finished and failed trials stay as they are, unfinished ones run again."""
    from ray import tune

    _tune_env()
    return tune.Tuner.restore(
        state.experiment_path,
        trainable=build_trainable(state, capacity, fit),
        resume_unfinished=True,
        resume_errored=False,
        restart_errored=False,
        storage_filesystem=storage_filesystem(state.storage_path),  # Tune keeps none from the saved Tuner
    )
