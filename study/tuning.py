"""Building (and restoring) the Ray Tune ``Tuner`` of a study.

* Optuna spaces: a seeded TPE sampler in ``OptunaSearch``, bounded by ``ConcurrencyLimiter``.
  Multi-objective metric/mode lists go on ``OptunaSearch`` (Ray 2.60), not ``TuneConfig``.
  With ``search.seeds``, every proposal runs once per seed (:class:`SeedRepeater`, Tune's
  ``Repeater``); Optuna is told the seeds' mean, so it models the ratio, not one seed's luck.
* Grid spaces: Tune's grid search (no Optuna), bounded by ``max_concurrent_trials``.
* ``--scheduler asha``: ``AsyncHyperBandScheduler`` on the per-epoch target metric.

The Tune experiment, including the pickled searcher, lives in ``<storage>/<name>``;
:func:`restore_tuner` continues it with ``Tuner.restore``.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from typing import Any, Callable

from ray.tune.search import Repeater
from ray.tune.search.repeater import TRIAL_INDEX, _TrialGroup

from study.cluster import Capacity, driver_resources
from study.spaces import SearchSpace
from study.state import StudyState, join
from study.trial import TrialContext, run_trial
from trainables.metric_names import BIAS_METRIC, FAMILY_METRIC, LOSS_METRIC, logged_name

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
    from trainables.languages import FAMILIES

    families = [logged_name(FAMILY_METRIC.format(f)) for f in FAMILIES]
    return list(dict.fromkeys(["epoch", *first, logged_name("composition/mono_share"), *families]))


class SeedRepeater(Repeater):
    """Tune's ``Repeater`` that gives the i-th repeat of a proposal ``seed = seeds[i]``.

    Its state (which trial belongs to which proposal) is saved with the inner searcher's, so a
    resumed study still reports each proposal's mean once all its seeds have finished (Tune's
    ``Repeater.save`` keeps only the inner searcher).
    """

    def __init__(self, searcher: Any, seeds: tuple):
        super().__init__(searcher, repeat=len(seeds), set_index=True)
        self.seeds = tuple(seeds)

    def suggest(self, trial_id: str):  # noqa: D102 - see Repeater
        config = super().suggest(trial_id)
        if isinstance(config, dict) and TRIAL_INDEX in config:
            config = dict(config)
            config["seed"] = self.seeds[config.pop(TRIAL_INDEX)]
        return config

    def save(self, checkpoint_path: str) -> None:  # noqa: D102 - see Searcher
        with tempfile.TemporaryDirectory() as folder:
            inner = os.path.join(folder, "inner.pkl")
            self.searcher.save(inner)
            with open(inner, "rb") as f:
                blob = base64.b64encode(f.read()).decode("ascii")
        groups = [{"primary": g.primary_trial_id, "config": g.config, "trials": g._trials, "max": g.max_trials}
                  for g in self._groups]
        index = {id(g): i for i, g in enumerate(self._groups)}
        state = {"groups": groups, "inner": blob, "seeds": list(self.seeds),
                 "trials": {t: index[id(g)] for t, g in self._trial_id_to_group.items()},
                 "current": index.get(id(self._current_group))}
        with open(checkpoint_path, "w", encoding="utf-8") as f:
            json.dump(state, f)  # plain data: a resumed study never unpickles a file of ours

    def restore(self, checkpoint_path: str) -> None:  # noqa: D102 - see Searcher
        with open(checkpoint_path, encoding="utf-8") as f:
            state = json.load(f)
        with tempfile.TemporaryDirectory() as folder:
            inner = os.path.join(folder, "inner.pkl")
            with open(inner, "wb") as f:
                f.write(base64.b64decode(state["inner"]))
            self.searcher.restore(inner)  # the inner searcher's own format (Tune restores it the same way)
        self._groups = []
        for g in state["groups"]:
            group = _TrialGroup(g["primary"], g["config"], max_trials=g["max"])
            group._trials = dict(g["trials"])
            self._groups.append(group)
        self._trial_id_to_group = {t: self._groups[i] for t, i in state["trials"].items()}
        current = state.get("current")
        self._current_group = self._groups[current] if current is not None else None
        self.seeds = tuple(state["seeds"])


def build_searcher(space: SearchSpace, state: StudyState) -> Any:
    """Seeded TPE in OptunaSearch under a ConcurrencyLimiter; None for grid spaces."""
    if space.algorithm == "grid":
        return None
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(
        seed=state.seed, n_startup_trials=space.n_startup_trials, multivariate=space.multivariate
    )
    points = [dict(p) for p in space.initial_points] or None
    if state.multi_objective:
        searcher = OptunaSearch(
            metric=[o["metric"] for o in state.objectives],
            mode=[o["mode"] for o in state.objectives],
            sampler=sampler,
            points_to_evaluate=points,
        )
    else:
        searcher = OptunaSearch(sampler=sampler, points_to_evaluate=points)
    if space.seeds:
        searcher = SeedRepeater(searcher, space.seeds)
    return ConcurrencyLimiter(searcher, max_concurrent=state.max_concurrent)


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
        time_attr="epoch",  # not training_iteration: epochs without evaluation are not forwarded
        max_t=max(1, epochs),
        grace_period=max(1, epochs // 3),
        reduction_factor=2,
    )


def build_tuner(space: SearchSpace, state: StudyState, capacity: Capacity, fit: Callable, verbose: int = 1) -> Any:
    """A fresh Tuner for the study, whose trials each call ``fit`` (see :class:`TrialContext`)."""
    from ray import tune

    single = not state.multi_objective
    tune_config = tune.TuneConfig(
        metric=state.metric if single else None,
        mode=state.mode if single else None,
        search_alg=build_searcher(space, state),
        scheduler=build_scheduler(state, space),
        num_samples=state.num_samples if space.algorithm == "grid" else state.num_trials,  # repeats included
        max_concurrent_trials=state.max_concurrent if space.algorithm == "grid" else None,
        trial_name_creator=trial_dirname,
        trial_dirname_creator=trial_dirname,
    )
    run_config = tune.RunConfig(
        name=state.name,
        storage_path=state.storage_path,
        verbose=verbose,
        failure_config=tune.FailureConfig(max_failures=0),  # worker restarts happen inside Ray Train
    )
    return tune.Tuner(
        build_trainable(state, capacity, fit),
        param_space=space.tune_param_space(),
        tune_config=tune_config,
        run_config=run_config,
    )


def can_restore(state: StudyState) -> bool:
    """Whether Tune saved an experiment state for this study."""
    from ray import tune

    return tune.Tuner.can_restore(state.experiment_path)


def restore_tuner(state: StudyState, capacity: Capacity, fit: Callable) -> Any:
    """Continue the study: finished and failed trials stay as they are, unfinished ones run again."""
    from ray import tune

    return tune.Tuner.restore(
        state.experiment_path,
        trainable=build_trainable(state, capacity, fit),
        resume_unfinished=True,
        resume_errored=False,
        restart_errored=False,
    )
