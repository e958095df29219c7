"""What a person sees: the study's plan, error lines, the trial table, the answer, the best config,
the exit codes of ``study.run`` and the command that resumes a study.

``study.run`` (end of a study) and ``study.report`` (from MLflow) share :func:`summarize`, so
both print the same table and write the same files (:mod:`study.outputs` computes the answer and
writes them).
"""

from __future__ import annotations

import atexit
import math
import os
import shlex
import sys
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

from study import outputs
from study.answer_conditional import ConditionalEffect, conditional_ratio_effect
from study.answer_text import (
    answer_headline,
    best_ratio_sentence,
    conditional_headline,
    conditional_sentence,
    format_table,
)
from study.answer import AnswerInput, left_out_line
from study.results import BIAS_METRIC, COMPLETED, FAILED, TARGET_METRIC, TrialRecord, best_record, pareto_front, table
from study.spaces import SearchSpace
from study.state import StudyState
from trainables.metric_names import SEARCHED_PARAMS
from trainables.mlflow_layout import ratio_label
from trainables.mlflow_store import is_tracking_server

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130  # the exit codes of study.run


def error(message: str) -> None:
    """One clear line on stderr."""
    print(f"error: {message}", file=sys.stderr, flush=True)


def say(message: str = "") -> None:
    """A line on stdout, flushed (Ray writes to the same terminal)."""
    print(message, flush=True)


UI_PORT = 5000
# One server worker: MLflow's default of 4 kept dying on a 2-core machine; one serves a study's UI.
UI_WORKERS = 1


def mlflow_ui_command(tracking_uri: str, experiment_id: Optional[str] = None, parent_run_id: Optional[str] = None) -> str:
    """Where to see the study in MLflow's UI, for the kind of tracking URI.

    A tracking server (``http://``, ``https://``) already serves the UI: its own pages of the
    experiment (``experiment_id``) and of the parent run (``parent_run_id``). A database or file
    store has no server: the ``mlflow ui`` command that serves it on localhost, then the page
    to open (see :func:`mlflow_ui_url`).
    """
    if is_tracking_server(tracking_uri):
        base = tracking_uri.rstrip("/")
        if not experiment_id:
            return base
        pages = mlflow_ui_url(experiment_id, base)
        return f"{pages}\n  parent run: {parent_run_url(experiment_id, parent_run_id, base)}" if parent_run_id else pages
    command = (f"mlflow ui --backend-store-uri {shlex.quote(tracking_uri)} --host 127.0.0.1 --port {UI_PORT} "
               f"--workers {UI_WORKERS}")
    if not experiment_id:
        return command
    shown = f"{command}\n  then open {mlflow_ui_url(experiment_id)}"
    return f"{shown}\n  parent run: {parent_run_url(experiment_id, parent_run_id)}" if parent_run_id else shown


def parent_run_url(experiment_id: str, run_id: str, base: str = f"http://127.0.0.1:{UI_PORT}") -> str:
    """The parent run's page (its Overview is the full answer), in the machine-learning view: MLflow
    3.17 takes a page's view from the URL's ``workflowType``, else from the browser's saved switch
    (GenAI unless the reader clicked "Model training"), and its own links between pages drop it."""
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def mlflow_ui_url(experiment_id: str, base: str = f"http://127.0.0.1:{UI_PORT}") -> str:
    """The experiment's runs table in MLflow 3's UI.

    MLflow 3.17's UI picks an experiment's landing page from the browser's workflow type
    (GenAI or machine learning: the sidebar switch, kept in the browser's local storage, GenAI by
    default), not from the experiment (its ``mlflow.experimentKind`` tag is not consulted);
    ``workflowType=machine_learning`` in the URL selects the runs view for this page. The page lists
    the trials flat, sorted by ratio (``metrics.ratio >= 0`` leaves out the parent run, whose answer
    the experiment's description above the table shows), where MLflow would fold them under it.
    """
    query = urllib.parse.urlencode({"workflowType": "machine_learning", "searchFilter": "metrics.ratio >= 0",
                                    "orderByKey": "metrics.`ratio`", "orderByAsc": "true"},
                                   quote_via=urllib.parse.quote)
    return f"{base}/#/experiments/{experiment_id}/runs?{query}"


def exit_quietly(code: int) -> None:
    """End the process with ``code`` once Python's exit handlers have run and output is flushed.

    Skips the C++ static destructors of the native libraries: Ray's core and gRPC keep
    background threads past ``ray.shutdown()``, and a thread that locks an absl Mutex after
    exit destroyed it hits that Mutex's event-logging path, which prints
    ``[mutex.cc : 452] RAW: Lock blocking / Lock returning / Unlock`` (absl's raw log has no
    runtime switch, so no environment setting silences it).
    """
    atexit._run_exitfuncs()  # what a normal exit runs first: ray.shutdown, logging.shutdown, ...
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


@dataclass
class Summary:
    """What :func:`summarize` produced."""

    text: str
    best: Optional[TrialRecord]  # the best single run (one seed)
    front: list = field(default_factory=list)
    files: list = field(default_factory=list)
    markdown: str = ""  # the answer's markdown summary (empty without per-query arrays)
    overview: str = ""  # the answer in brief, for the MLflow experiment page (empty without per-query arrays)
    headline: str = ""  # the answer in one line (the experiment description's heading)
    ratio_effect: Optional[ConditionalEffect] = None  # a confounded study's ratio effect with the others held fixed
    best_ratio: Optional[dict] = None  # the answer's best ratio (outputs.Answer.best_ratio): the study's "best"
    answer_rows: list = field(default_factory=list)  # the answer per (setting, family, ratio): answer_stats.answer_rows


def summarize(
    records: Sequence[TrialRecord],
    objectives: Sequence[dict],
    output_dir: Path,
    title: str = "",
    extra_params: Sequence[str] = (),
    answer_input: Optional[AnswerInput] = None,
    target_halfwidth: float = 0.02,
) -> Summary:
    """Table, best config (or Pareto front), failures; write CSV, figure(s) and best config.

    ``answer_input``: the completed trials' per-query AP arrays and the trials left out of them
    (:func:`study.answer.trial_queries`); with them the answer (per family and setting, with intervals: :func:`study.outputs.study_answer`)
    is printed and saved as ``answer.csv``, ``answer.md`` and the figure; ``target_halfwidth`` is the
    half-width whose seed count the answer estimates for each unresolved comparison.
    """
    metric, mode = objectives[0]["metric"], objectives[0]["mode"]
    headers, rows = table(records, extra_params)
    parts = []
    queries = answer_input.trials if answer_input else []
    left_out = left_out_line(answer_input.left_out) if answer_input else ""
    answer = outputs.study_answer(queries, target=target_halfwidth) if queries else None
    varying = [k for k in extra_params if len({repr(r.params.get(k)) for r in records}) > 1]
    others = held_fixed(varying) if any(r.status == COMPLETED for r in records) else ()
    confounded = confounded_line(others)
    conditional, headline, effect, effects = "", "", None, []
    for i, objective in enumerate(objectives if confounded else []):  # each objective's effect; the first heads
        sentence, words, held = conditional_answer(records, others, objective["metric"])
        conditional = f"{conditional}\n{sentence}" if conditional else sentence
        effects += [(objective["metric"], held)] if held is not None else []
        if i == 0:
            headline, effect = words, held
    if confounded:  # the ratio's effect with the others held fixed; no per-ratio grouping, no best ratio
        if answer is not None:
            answer.confounded_by = others
        parts.append(f"{confounded}\n{conditional}\n{no_grouping(answer is not None)}")
    elif answer is not None:  # the answer first: what the study found, then what it is made of
        parts.append(_answer_text(answer, queries))
        if answer.best_ratio is not None:
            parts.append(best_ratio_sentence(answer.best_ratio))
    if left_out:
        parts.append(left_out)
    best = best_record(records, metric, mode)
    front = pareto_front(records, objectives) if len(objectives) > 1 else []
    if front:
        parts.append(_front_text(front, objectives))
    if best is not None:
        parts.append(_best_text(best, metric, mode, extra_params))
    parts.append("Trials:\n" + format_table(headers, rows) if rows else "(no trials)")
    failed = [r for r in records if r.status == FAILED]
    if failed:
        parts.append("Failed trials:\n" + "\n".join(f"  {r.trial_id}: {r.reason or 'unknown reason'}" for r in failed))
    if confounded:
        markdown = overview = "\n\n".join(part for part in (f"**{confounded}**", conditional.replace("\n", "\n\n"),
                                                             no_grouping(answer is not None), left_out) if part)
    else:
        markdown = "\n\n".join(part for part in (answer.markdown if answer else "", left_out) if part)
        overview = "\n\n".join(part for part in (answer.overview if answer else "", left_out) if part)
    files = outputs.write_outputs(records, objectives, best, front, output_dir, title, answer, markdown, others, effects)
    parts.append("Saved to " + str(output_dir) + ":\n" + "\n".join(f"  {p.name}" for p in files))
    headline = headline or answer_headline(answer.best_ratio if answer else None)
    return Summary("\n\n".join(parts), best, front, files, markdown, overview, headline, effect,
                   answer.best_ratio if answer else None, answer.rows if answer and not confounded else [])


def held_fixed(varying: Sequence[str]) -> tuple:
    """The searched parameters besides the ratio and the seed among ``varying`` (those that differ
    across the trials): what a ratio answer must hold fixed."""
    return tuple(p for p in varying if p not in ("ratio", "seed"))


def confounded_line(others: Sequence[str]) -> str:
    """The warning a per-ratio answer needs when the trials differ in other searched parameters too
    (``others``: :func:`held_fixed`; '' when there are none)."""
    if not others:
        return ""
    return (f"Confounded: this study searched {' and '.join(others)} together with the ratio, so its trials differ "
            "in more than the ratio, and grouping them by ratio would mix their effects. The lines below hold "
            "them fixed in a model; to measure the ratio directly, study it with these fixed (a space that searches "
            "the ratio only, with seeds).")


def no_grouping(with_answer_rows: bool) -> str:
    """What a confounded study does not say (and where its per-ratio rows went, when it has them)."""
    return ("No ratio is named best and no per-ratio table is shown (the per-ratio rows, which mix those effects, "
            "are in answer.csv for reference only)." if with_answer_rows else "No ratio is named best.")


def conditional_answer(records: Sequence[TrialRecord], others: Sequence[str],
                       metric: str) -> tuple[str, str, Optional[ConditionalEffect]]:
    """The ratio's effect on ``metric`` with the searched parameters ``others`` (:func:`held_fixed`)
    held fixed, over the completed trials (:func:`study.answer_conditional.conditional_ratio_effect`):
    in a sentence, in a heading's few words, and the effect itself (None when it cannot be separated)."""
    done = [r for r in records if r.status == COMPLETED and isinstance(r.params.get("ratio"), (int, float))
            and all(isinstance(r.params.get(p), (int, float)) for p in others) and math.isfinite(r.value(metric))]
    ratios = [float(r.params["ratio"]) for r in done]
    effect = conditional_ratio_effect(ratios, {p: [float(r.params[p]) for r in done] for p in others},
                                      [r.value(metric) for r in done])
    tried = (min(ratios), max(ratios)) if ratios else (0.0, 0.0)
    return conditional_sentence(effect, others, metric, len(done), tried), conditional_headline(effect, others), effect


def importance_text(importance: Mapping[str, Mapping[str, float]]) -> str:
    """Parameter importance per objective, most important first (:func:`study.tuning.parameter_importance`)."""
    lines = ["Parameter importance (fANOVA over the Optuna study's trials; shares of each objective's variance):"]
    for metric, shares in importance.items():
        ranked = sorted(shares.items(), key=lambda item: -item[1])
        lines.append(f"  {metric}: " + ", ".join(f"{param} {share:.2f}" for param, share in ranked))
    return "\n".join(lines)


def _best_text(best: TrialRecord, metric: str, mode: str, extra_params: Sequence[str]) -> str:
    """The best single run: one seed, named as such (the answer weighs every seed)."""
    keys = list(dict.fromkeys([*SEARCHED_PARAMS, *extra_params]))
    settings = ", ".join(f"{k}={ratio_label(best.params[k]) if k == 'ratio' else best.params[k]}"
                         for k in keys if k in best.params)
    extras = f"{TARGET_METRIC}={best.value(TARGET_METRIC):.4f}, {BIAS_METRIC}={best.value(BIAS_METRIC):.4f}"
    return f"Best single run ({metric}, {mode}; one seed, not the answer): {best.trial_id}: {settings}\n  {extras}"


def _front_text(front: Sequence[TrialRecord], objectives: Sequence[dict]) -> str:
    names = [o["metric"] for o in objectives]
    wanted = ", ".join(f"{o['metric']} {o['mode']}" for o in objectives)
    lines = [f"Pareto front ({wanted}):"]
    for r in front:
        values = ", ".join(f"{m}={r.value(m):.4f}" for m in names)
        lines.append(f"  {r.trial_id}: ratio={r.params.get('ratio')}, temperature={r.params.get('temperature')}: {values}")
    return "\n".join(lines)


def _answer_text(answer: outputs.Answer, queries: Sequence) -> str:
    """The answer as printed: a head line, the best ratio (and its plausible set) per setting and
    family, the ends sentence, the resolution and the hypotheses."""
    seeds = sorted({q.seed for q in queries})
    head = (f"Answer ({len(queries)} trials, seeds {', '.join(map(str, seeds))}; 95% intervals over seeds and "
            "test images; best ratio per setting and family, and the tried ratios not distinguishable from it):")
    best = answer.best
    families = list(dict.fromkeys(b["family"] for b in best))
    cells = {(b["setting"], b["family"]): f"{ratio_label(b['best_ratio'])} ({ratio_label(b['set_low'])}-{ratio_label(b['set_high'])})"
             for b in best}
    settings = list(dict.fromkeys(b["setting"] for b in best))
    grid = [[setting, *(cells.get((setting, f), "") for f in families)] for setting in settings]
    lines = [head, format_table(["setting", *families], [row + [""] for row in grid]).replace("  \n", "\n").rstrip()]
    return "\n".join([*lines, answer.sentence, *answer.notes])


# ---------------------------------------------------------------------------
# The plan of a study and the way back to it
# ---------------------------------------------------------------------------
def plan_text(state: StudyState, space: SearchSpace) -> str:
    """What the study will do, in a few lines."""
    goal = ", ".join(f"{o['metric']} ({o['mode']})" for o in state.objectives)
    searched = ", ".join(f"{p.name}~{p.describe()}" for p in space.params)
    at_once = f"up to {state.max_concurrent}" if state.max_concurrent else "as many as fit"
    gpu = f" + {state.gpus_per_worker:g} GPU" if state.gpus_per_worker else ""
    data = f"train={state.base_config.get('train_data')}, eval={state.base_config.get('eval_data')}"
    seeds = f" ({len(space.seeds)} seeds per candidate: {', '.join(map(str, space.seeds))})" if space.seeds else ""
    if space.seed_min:
        seeds = (f" at most ({space.seed_min} seeds per candidate, then up to {len(space.seeds)}, raced: the least "
                 f"precise comparison first, target half-width {space.target_halfwidth:g}"
                 + (f"; stops after {space.max_minutes:g} min" if space.max_minutes else "") + ")")
    base = state.base_config
    steps = f"{base.get('epochs')} epochs" + (f" x {base['steps_per_epoch']} steps" if base.get("steps_per_epoch") else "")
    return "\n".join(
        [
            f"Study {state.name}: space {space.name} ({space.source})",
            f"  search:   {space.algorithm} over {searched}; target {goal}; scheduler {state.scheduler}; seed {state.seed}",
            f"  trials:   {state.num_trials}{seeds}, {at_once} at a time; each {state.workers_per_trial} worker(s) x "
            f"{state.cpus_per_worker:g} CPU{gpu}; {steps}; data {data}",
            f"  state:    {state.experiment_path}",
            f"  MLflow:   {state.tracking_uri}",
            f"  outputs:  {state.output_dir}",
        ]
    )


def resume_command(state: StudyState, address: Optional[str] = None) -> str:
    """The command that continues this study; on the Ray cluster at ``address`` (``--address``) when
    it ran there (a resume without it would start a local cluster beside that one, and be refused)."""
    command = f"python -m study.run --resume --name {shlex.quote(state.name)} --storage-path {shlex.quote(state.storage_path)}"
    return f"{command} --address {shlex.quote(address)}" if address else command
