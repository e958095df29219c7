"""Building (and restoring) the Ray Tune ``Tuner`` of a study.

* Optuna spaces: a seeded TPE sampler in ``OptunaSearch``, bounded by ``ConcurrencyLimiter``.
  Multi-objective metric/mode lists go on ``OptunaSearch`` (Ray 2.60), not ``TuneConfig``.
* Grid spaces: Tune's grid search (no Optuna), bounded by ``max_concurrent_trials``.
* With ``search.seeds`` (Optuna or grid): :class:`SeedSearcher`, on Tune's public ``Searcher``
  API, gives every candidate its seeds, equally or raced (:mod:`study.race`); Optuna is told
  each proposal's seed mean, so it models the ratio, not one seed's luck.
* ``--scheduler asha``: ``AsyncHyperBandScheduler`` on the per-epoch target metric.

The Tune experiment, including the pickled searcher, lives in ``<storage>/<name>``;
:func:`restore_tuner` continues it with ``Tuner.restore``.
"""

from __future__ import annotations

import base64
import json
import math
import os
import tempfile
from typing import Any, Callable, Optional, Sequence

import numpy as np
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.search import Searcher

from study.cluster import Capacity, driver_resources
from study.race import RACE_REPORT, SeedRace, write_race_report
from study.spaces import SearchSpace
from study.state import StudyState, join
from study.storage import is_uri
from study.trial import TrialContext, run_trial
from trainables.languages import FAMILIES
from trainables.metric_names import BIAS_METRIC, FAMILY_METRIC, LOSS_METRIC, logged_name
from trainables.mlflow_layout import COMPLETED, EARLY_STOPPED
from trainables.storage_fs import storage_filesystem

# Shown first in Tune's progress table (it shows the first few metrics of a result), under the
# short names the MLflow UI shows too (the trials forward both names: study.trial).
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
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), driver_resources(capacity))
    # Tune prints only these in each trial's result box (the real loop reports ~150 metrics).
    trainable._progress_metrics = progress_metrics(ctx.metrics_first)
    return trainable


def progress_metrics(first: tuple) -> list[str]:
    """The metrics of a trial's result box: objectives, bias, loss, composition, mAP@100 per family
    (short names: ``multi/sinitic``)."""
    families = [logged_name(FAMILY_METRIC.format(f)) for f in FAMILIES]
    return list(dict.fromkeys(["epoch", *first, logged_name("composition/mono_share"), *families]))


class SeedSearcher(Searcher):
    """Tune's searcher of a study with seeds: which (candidate, seed) each new trial trains.

    The decisions are :class:`study.race.SeedRace`'s (equal seeds, or seeds raced to where the
    answer is uncertain); this class adapts them to Tune's public ``Searcher`` API. Candidates
    come from ``inner`` (Optuna: one proposal per candidate, told the mean of its first
    ``min_seeds`` seeds, so it models the ratio, not one seed's luck) or, for a grid, from
    ``grid`` (the grid's points, without seeds). Its state is plain JSON with the inner
    searcher's own file inside, so a resumed study continues the allocation where it stopped.
    """

    def __init__(self, race: SeedRace, metric: str, mode: str, inner: Any = None, grid: Sequence[dict] = (),
                 report: Optional[str] = None):
        super().__init__(metric=metric, mode=mode)
        self.race, self.inner, self.grid = race, inner, [dict(p) for p in grid]
        self.report = report  # where the race's state is written as it changes (the study reads it at the end)

    def _write_report(self) -> None:
        if self.report:
            write_race_report(self.report, self.race)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:  # noqa: D102 - see Searcher
        if self.inner is None:
            return True
        return self.inner.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str):  # noqa: D102 - see Searcher
        action = self.race.next_action()
        if action[0] == "propose":
            if self.inner is None:
                cand = self.race.add_candidate(self.grid[len(self.race.candidates)])
            else:
                config = self.inner.suggest(trial_id)
                if config is None or config == Searcher.FINISHED:
                    return config
                cand = self.race.add_candidate(config, proposal=trial_id)
            action = ("seed", cand, self.race.next_seed(cand))
        if action[0] == "wait":
            return None
        if action[0] == "finished":
            self._write_report()
            return Searcher.FINISHED
        _, cand, seed = action
        self.race.start(trial_id, cand, seed)
        return {**self.race.candidates[cand]["config"], "seed": seed}

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:  # noqa: D102
        value = None if error or not result else result.get(self.metric)
        cand = self.race.complete(trial_id, value)
        self._write_report()
        if cand is None or self.inner is None:
            return
        candidate = self.race.candidates[cand]
        if candidate["proposal"] is None or candidate.get("told") or not self.race.told(cand):
            return  # Optuna is told once, when the proposal's first min_seeds values are in
        candidate["told"] = True
        values = list(self.race.values(cand).values())[: self.race.plan.min_seeds]
        if values:
            self.inner.on_trial_complete(candidate["proposal"], result={self.metric: float(np.mean(values))})
        else:
            self.inner.on_trial_complete(candidate["proposal"], result=None, error=True)
        self._write_report()

    def save(self, checkpoint_path: str) -> None:  # noqa: D102 - see Searcher
        blob = None
        if self.inner is not None:
            with tempfile.TemporaryDirectory() as folder:
                inner = os.path.join(folder, "inner.pkl")
                self.inner.save(inner)
                with open(inner, "rb") as f:
                    blob = base64.b64encode(f.read()).decode("ascii")
        state = {"race": self.race.state(), "inner": blob, "grid": self.grid}
        with open(checkpoint_path, "w", encoding="utf-8") as f:
            json.dump(state, f)  # plain data: a resumed study never unpickles a file of ours

    def restore(self, checkpoint_path: str) -> None:  # noqa: D102 - see Searcher
        with open(checkpoint_path, encoding="utf-8") as f:
            state = json.load(f)
        if state.get("inner") is not None and self.inner is not None:
            with tempfile.TemporaryDirectory() as folder:
                inner = os.path.join(folder, "inner.pkl")
                with open(inner, "wb") as f:
                    f.write(base64.b64decode(state["inner"]))
                self.inner.restore(inner)  # the inner searcher's own format (Tune restores it the same way)
        self.race = SeedRace.from_state(state["race"])
        self.grid = state.get("grid", self.grid)


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


def build_scheduler(state: StudyState, space: SearchSpace) -> Any:
    """ASHA early stopping on the per-epoch target metric, or None (FIFO).

    Its horizon ``max_t`` is the most epochs a trial may run: the largest value of a searched
    ``epochs``, else the fixed one (the base config holds no searched field).
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
        grace_period=max(1, epochs // 3),
        reduction_factor=2,
    )


def build_tuner(space: SearchSpace, state: StudyState, capacity: Capacity, fit: Callable, verbose: int = 1) -> Any:
    """A fresh Tuner for the study, whose trials each call ``fit`` (see :class:`TrialContext`)."""
    from ray import tune

    searcher = build_searcher(space, state)
    # No metric for Tune itself: the searcher and the scheduler are given theirs, and Tune's reporter
    # would otherwise print a "Current best trial" (one seed) that is not the study's answer.
    tune_config = tune.TuneConfig(
        search_alg=searcher,
        scheduler=build_scheduler(state, space),
        num_samples=state.num_samples if searcher is None else state.num_trials,  # seeds included
        max_concurrent_trials=state.max_concurrent if searcher is None else None,
        trial_name_creator=trial_dirname,
        trial_dirname_creator=trial_dirname,
    )
    _no_tensorboard_logger()
    run_config = tune.RunConfig(
        name=state.name,
        storage_path=state.storage_path,
        storage_filesystem=storage_filesystem(state.storage_path),  # whole files only: a full disk corrupts nothing
        verbose=verbose,
        failure_config=tune.FailureConfig(max_failures=0),  # worker restarts happen inside Ray Train
        # Tune's CSV and JSON results (result.json, progress.csv), without its TensorBoard logger:
        # MLflow is where a study is read, and Tune would print a TensorBoard hint for it.
        callbacks=[CSVLoggerCallback(), JsonLoggerCallback()],
    )
    return tune.Tuner(
        build_trainable(state, capacity, fit),
        param_space={} if space.algorithm == "grid" and space.seeds else space.tune_param_space(),  # the searcher's
        tune_config=tune_config,
        run_config=run_config,
    )


def _no_tensorboard_logger() -> None:
    """Tune adds its default loggers (TensorBoard included) unless told not to; the study gives its
    own list (CSV, JSON) in its RunConfig, which a restored Tuner keeps."""
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"


def can_restore(state: StudyState) -> bool:
    """Whether Tune saved an experiment state for this study."""
    from ray import tune

    return tune.Tuner.can_restore(state.experiment_path, storage_filesystem=storage_filesystem(state.storage_path))


def restore_tuner(state: StudyState, capacity: Capacity, fit: Callable) -> Any:
    """Continue the study: finished and failed trials stay as they are, unfinished ones run again."""
    from ray import tune

    _no_tensorboard_logger()
    return tune.Tuner.restore(
        state.experiment_path,
        trainable=build_trainable(state, capacity, fit),
        resume_unfinished=True,
        resume_errored=False,
        restart_errored=False,
        storage_filesystem=storage_filesystem(state.storage_path),  # Tune keeps none from the saved Tuner
    )
