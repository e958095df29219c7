"""The study's output files, and the answer they hold: ``trials.csv``, the figures, ``answer.csv``,
``answer.md`` and ``best_config.json`` in the study's output folder (the same that go to the MLflow
parent run under ``summary/``).

:func:`study_answer` computes the answer (numbers: :mod:`study.answer_stats`; sentences:
:mod:`study.answer_text`) and :func:`write_outputs` writes every file; ``study.console`` prints.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from study.answer import TrialQueries
from study.answer_metrics import COLUMNS, OBJECTIVE
from study.answer_stats import _analyse, _best, _ratio_key, _rows
from study.answer_text import (
    _ends,
    _hypotheses,
    _resolution,
    answer_markdown,
    answer_overview,
    plot_answer,
    plot_conditional,
)
from study.results import TrialRecord, plot_families, plot_pareto, write_csv
from trainables import mlflow_layout as layout


@dataclass
class Answer:
    """The whole answer of one study, from one analysis (see :func:`study_answer`)."""

    rows: list
    best: list
    sentence: str
    resolution: list
    hypotheses: list

    # the other searched parameters the trials differ in: then no ratio is named best (each ratio's
    # trials differ in those too; the answer's conditional line holds them fixed instead)
    confounded_by: tuple = ()

    @property
    def notes(self) -> list:
        """The lines under the sentence: the resolution, then the hypotheses."""
        return [*self.resolution, *self.hypotheses]

    @property
    def best_ratio(self) -> Optional[dict]:
        """The study's one "best": the ratio with the best mean over seeds on the objective
        (:data:`~study.answer_metrics.OBJECTIVE`), ``{ratio, mean, ci_low, ci_high, n_seeds, plausible}``
        (``plausible``: the tried ratios not distinguishable from it); None without that cell, or when
        the study is confounded (:attr:`confounded_by`)."""
        if self.confounded_by:
            return None
        cell = next((b for b in self.best if (b["setting"], b["family"]) == OBJECTIVE), None)
        if cell is None:
            return None
        row = next(r for r in self.rows if (r["setting"], r["family"]) == OBJECTIVE and r["ratio"] == cell["best_ratio"])
        return {"ratio": cell["best_ratio"], "mean": row["mean"], "ci_low": row["ci_low"], "ci_high": row["ci_high"],
                "n_seeds": row["n_seeds"], "plausible": list(cell["plausible"])}

    @property
    def overview(self) -> str:
        """The answer in brief (the MLflow experiment page): :func:`answer_overview`."""
        return answer_overview(self.rows, self.best, self.sentence)

    @property
    def markdown(self) -> str:
        """``answer.md`` (and the MLflow parent run's description): :func:`answer_markdown`."""
        return answer_markdown(self.rows, self.best, self.sentence, self.notes, self.best_ratio)


def study_answer(trials: Sequence[TrialQueries], confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0,
                 target: float = 0.02) -> Answer:
    """:func:`~study.answer_stats.answer_rows`, :func:`~study.answer_stats.best_ratios`,
    :func:`~study.answer_text.ends_sentence`, the resolution lines (each comparison's half-width, and
    the seeds a half-width of ``target`` would need) and the two hypotheses, all from one image
    bootstrap."""
    analysis = _analyse(trials, n_resamples, seed)
    return Answer(rows=_rows(analysis, confidence), best=_best(analysis, confidence),
                  sentence=_ends(analysis, confidence), resolution=_resolution(analysis, confidence, target),
                  hypotheses=_hypotheses(analysis, confidence))


def write_answer_csv(rows: Sequence[dict], path: Union[str, Path]) -> Path:
    """Write :func:`~study.answer_stats.answer_rows` rows to ``path`` with exactly the columns
    :data:`~study.answer_metrics.COLUMNS`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def best_ratio_config(answer: Optional[Answer], records: Sequence[TrialRecord]) -> Optional[dict]:
    """``best_config.json``'s ``best``: the answer's best ratio (:attr:`Answer.best_ratio`) with the
    config to train it again (a trial's config at that ratio, without its seed); None without an answer."""
    best = answer.best_ratio if answer is not None else None
    if best is None:
        return None
    at_ratio = [r for r in records if isinstance(r.params.get("ratio"), (int, float))
                and _ratio_key(r.params["ratio"]) == _ratio_key(best["ratio"])]
    config = {k: v for k, v in at_ratio[0].params.items() if k != "seed"} if at_ratio else {"ratio": best["ratio"]}
    return {**best, "metric": "multilingual mAP@100 (i2t+t2t), mean over seeds", "config": config}


def write_outputs(records: Sequence[TrialRecord], objectives: Sequence[dict], best: Optional[TrialRecord],
                  front: Sequence[TrialRecord], output_dir: Path, title: str,
                  answer: Optional[Answer] = None, markdown: str = "", held: Sequence[str] = (),
                  ratio_effects: Sequence[tuple] = ()) -> list[Path]:
    """Write the study's files to ``output_dir`` and return their paths: ``trials.csv``; with an
    ``answer``, ``answer.csv`` and ``answer.md`` (``markdown``, else the answer's own); the figure:
    the answer's, or for a study whose trials also differ in the searched parameters ``held``, the
    ratio's effect with those held fixed (``ratio_effects``: (metric, effect) pairs; no figure when
    none could be separated), or without an answer the trials' own metrics; the Pareto figure with
    several objectives; ``best_config.json`` with a ``best``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    files = [write_csv(records, output_dir / layout.CSV_NAME)]
    if answer is not None:
        files.append(write_answer_csv(answer.rows, output_dir / layout.ANSWER_CSV))
        (output_dir / layout.ANSWER_MD).write_text(markdown or answer.markdown, encoding="utf-8")
        files.append(output_dir / layout.ANSWER_MD)
    if held:  # grouped by ratio, these trials would mix the other parameters' effects
        figure = plot_conditional(ratio_effects, held, output_dir / layout.FIGURE_NAME, title)
    elif answer is not None:
        figure = plot_answer(answer.rows, output_dir / layout.FIGURE_NAME, title)
    else:
        figure = plot_families(records, output_dir / layout.FIGURE_NAME, title)
    if figure:
        files.append(figure)
    if len(objectives) > 1:
        pareto = plot_pareto(records, objectives, output_dir / layout.PARETO_FIGURE_NAME)
        if pareto:
            files.append(pareto)
    if best is not None:
        path = output_dir / layout.BEST_NAME
        payload = {
            "best": best_ratio_config(answer, records),
            "best_single_run": {"trial_id": best.trial_id, "config": best.params, "metrics": best.metrics},
            "pareto_front": [r.trial_id for r in front],
        }
        path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str), encoding="utf-8")
        files.append(path)
    return files
