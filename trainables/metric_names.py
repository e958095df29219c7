"""The one registry of the metric and parameter names a study shows.

A trial's evaluation yields ~600 metrics under long, systematic names (the *source* names,
documented in :mod:`trainables.evaluate`, e.g. ``map100/multilingual/family/sinitic``). Ray
Tune sees all of them. An MLflow child run logs only the :data:`HEADLINES` (about 50) under
short *logged* names that fit a column header of the MLflow UI (``multi/sinitic``), plus the
searched hyperparameters as numbers (:data:`SEARCHED_PARAMS`, named as the params). The full
breakdown goes, in long format, into the run's artifact ``metrics_full.csv``
(:mod:`trainables.trial_run`; the layout: :mod:`trainables.mlflow_layout`).

Either name works wherever a user names a metric (``--metric``, the objectives of a space,
``study.report``, the tables): :func:`source_name` maps a logged name back to its source,
:func:`logged_name` the other way. The study writes :func:`definitions_markdown` into the
MLflow experiment's description, so a UI user can read what each column means.

Where to change a metric's name: here, and only here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from trainables.languages import FAMILIES

# ---------------------------------------------------------------------------
# Names the study's code refers to (source names)
# ---------------------------------------------------------------------------
TARGET_METRIC = "map100/multilingual"  # the default objective of every space
BIAS_METRIC = "bias/multilingual"
LOSS_METRIC = "train/loss"  # reported every epoch (evaluation metrics only on evaluated epochs)
FAMILY_METRIC = "map100/multilingual/family/{}"  # .format(family): the families of the answer's table

# The searched parameters shown first in tables, CSVs and run names, in this order. Each is
# also logged as a numeric MLflow metric of the same name (params are strings in MLflow).
SEARCHED_PARAMS = ("ratio", "temperature", "batch_size", "seed")
# Run-name abbreviations: "r=0.02 s=1 · 9925bc90".
PARAM_ABBREVIATIONS = {"ratio": "r", "temperature": "t", "batch_size": "b", "seed": "s", "lr": "lr", "epochs": "e"}


@dataclass(frozen=True)
class Headline:
    """One metric a child run logs: its short MLflow name, its source name, what it means."""

    logged: str
    source: str
    meaning: str


def _settings() -> list[Headline]:
    """mAP@100 per retrieval setting, its directions and its families."""
    out = [
        Headline("multi", "map100/multilingual",
                 "multilingual mAP@100 (the default target): mean of image -> all-captions pool (multi/i2t) "
                 "and caption -> pool (multi/t2t); so it is not the mean of the families, which are text -> text"),
        Headline("multi/i2t", "map100/multilingual/i2t", "image -> pool of all captions of all languages"),
        Headline("multi/t2t", "map100/multilingual/t2t",
                 "caption(l) -> pool minus itself, relevant = the image's captions in the other languages; mean over l"),
    ]
    out += [Headline(f"multi/{f}", FAMILY_METRIC.format(f), f"multi/t2t over the {f} languages") for f in FAMILIES]
    out += [
        Headline("mono", "map100/monolingual", "monolingual mAP@100: caption(l) <-> image within one language, mean over l"),
        Headline("mono/t2i", "map100/monolingual/t2i", "caption(l) -> image, mean over languages"),
        Headline("mono/i2t", "map100/monolingual/i2t", "image -> caption(l), mean over languages"),
    ]
    out += [Headline(f"mono/{f}", f"map100/monolingual/family/{f}", f"mono over the {f} languages") for f in FAMILIES]
    out.append(Headline("cross", "map100/crosslingual",
                        "cross-lingual mAP@100: caption(a) -> caption(b) of the same image, mean over the ordered pairs"))
    out += [Headline(f"cross/{f}", f"map100/crosslingual/family/{f}", f"cross with query languages of the {f} family")
            for f in FAMILIES]
    return out


def _others() -> list[Headline]:
    """Recall, language bias, training, composition and bookkeeping figures."""
    recall = [Headline(f"r10/{short}", f"recall10/{long}", f"Recall@10, {long} setting")
              for short, long in (("multi", "multilingual"), ("mono", "monolingual"), ("cross", "crosslingual"))]
    return recall + [
        Headline("bias", BIAS_METRIC,
                 "language bias: max minus min over languages of the mean rank of each language's correct caption "
                 "(image -> pool); 0 = unbiased, lower is better"),
        Headline("bias/norm", "bias/multilingual/normalised", "bias / (pool size - 1), in [0, 1]"),
        Headline("bias/meanrank", "bias/multilingual/meanrank", "mean rank of an image's caption in the pool"),
        Headline("train/loss", LOSS_METRIC, "mean contrastive (CLIP) loss of the epoch"),
        Headline("train/lr", "train/lr", "learning rate at the end of the epoch"),
        Headline("train/temp", "train/temperature", "learned softmax temperature (1 / logit scale) at the end of the epoch"),
        Headline("train/samples_s", "train/samples_per_s", "training throughput, samples per second (all workers)"),
        Headline("train/epoch_s", "train/epoch_time_s", "wall-clock seconds of the epoch's training"),
        Headline("train/cpu_s", "train/epoch_cpu_s", "CPU seconds of rank 0 in the epoch's training"),
        Headline("comp/mono", "composition/mono_share", "realised share of samples with a monolingual caption"),
        Headline("comp/mono_steps", "composition/mono_step_share", "realised share of monolingual steps"),
        Headline("comp/redraws", "composition/redraws", "caption-language redraws in the epoch"),
        Headline("eval/time_s", "eval/time_s", "seconds of the evaluation"),
        Headline("data/truncated", "data/truncated_share", "share of training captions cut at the context length"),
    ]


HEADLINES: tuple[Headline, ...] = tuple(_settings() + _others())
_BY_LOGGED = {h.logged: h for h in HEADLINES}
_BY_SOURCE = {h.source: h for h in HEADLINES}

# Most metrics a child run holds: the headlines and the numeric searched parameters (plus an
# objective outside the headlines, which is logged under its own name; see trial_run.TrialRun).
MAX_LOGGED_METRICS = len(HEADLINES) + len(SEARCHED_PARAMS)


# ---------------------------------------------------------------------------
# Mapping between the two vocabularies
# ---------------------------------------------------------------------------
def source_name(name: str) -> str:
    """The source name of ``name``: a logged headline name maps to its source, any other name is kept."""
    headline = _BY_LOGGED.get(name)
    return headline.source if headline else name


def logged_name(name: str) -> str:
    """The MLflow name of ``name``: a headline's source maps to its short name, any other name is kept."""
    headline = _BY_SOURCE.get(name)
    return headline.logged if headline else name


def is_headline(name: str) -> bool:
    """Whether ``name`` (source or logged) is one of the :data:`HEADLINES`."""
    return name in _BY_SOURCE or name in _BY_LOGGED


def headline_metrics(metrics: Mapping[str, Any], keep: Iterable[str] = ()) -> dict[str, Any]:
    """The headlines among ``metrics`` (source names) under their logged names, plus the ``keep``
    names (e.g. an objective that is no headline) under their own names."""
    out = {_BY_SOURCE[k].logged: v for k, v in metrics.items() if k in _BY_SOURCE}
    for name in keep:
        source = source_name(name)
        if source in metrics and logged_name(source) not in out:
            out[source] = metrics[source]
    return out


def with_logged_aliases(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``metrics`` (source names) plus each present headline under its logged name too, so that an
    objective given by its short name (``--metric multi``) is found in Tune's results."""
    aliases = {h.logged: metrics[h.source] for h in HEADLINES if h.source in metrics and h.logged not in metrics}
    return {**metrics, **aliases}


def to_source_names(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``metrics`` keyed by source names: logged headline names renamed, aliases of present sources dropped."""
    out = dict((k, v) for k, v in metrics.items() if k not in _BY_LOGGED)
    for name, value in metrics.items():
        headline = _BY_LOGGED.get(name)
        if headline is not None and headline.source not in out:
            out[headline.source] = value
    return out


# ---------------------------------------------------------------------------
# What a UI user reads
# ---------------------------------------------------------------------------
def definitions_markdown() -> str:
    """The metric definitions as markdown (the MLflow experiment's description)."""
    lines = [
        "## How to read this study",
        "",
        "One parent run per study (`study-NAME`): its description and `summary/` artifacts hold the answer "
        "(`answer.md`, `answer.csv`, the figure, `trials.csv`). One child run per trial, named by its searched "
        "values (`r=0.02 s=1 · 9925bc90`: ratio, seed, Tune trial id; the id is also the tag `mlclip.trial_id`).",
        "",
        "Searched parameters are metrics too, so they sort and filter as numbers: "
        + ", ".join(f"`{p}`" for p in SEARCHED_PARAMS)
        + " (e.g. the filter `metrics.ratio < 0.1`; `metrics.ratio >= 0` shows the trials without the parent, and "
        "sorting by `ratio` lists them flat). Metrics are logged after every epoch at its training step, so "
        "the charts are learning curves over training steps.",
        "",
        "All retrieval values are mAP@100 (trec_eval `map_cut_100`) unless named `r10` (Recall@10). "
        "Families: " + ", ".join(FAMILIES) + ". Every other metric (110 language pairs, per-language values, "
        "Recall@1/5, per-language bias ranks) is in each child run's artifact `metrics_full.csv` "
        "(long format: step, name, value), beside `per_query_ap.npz`.",
        "",
        "| metric | source name | meaning |",
        "| --- | --- | --- |",
    ]
    lines += [f"| `{h.logged}` | `{h.source}` | {h.meaning} |" for h in HEADLINES]
    lines += [f"| `{p}` | param `{p}` | searched parameter as a number |" for p in SEARCHED_PARAMS]
    return "\n".join(lines) + "\n"


__all__ = [
    "TARGET_METRIC", "BIAS_METRIC", "LOSS_METRIC", "FAMILY_METRIC", "SEARCHED_PARAMS", "PARAM_ABBREVIATIONS",
    "Headline", "HEADLINES", "MAX_LOGGED_METRICS", "source_name", "logged_name", "is_headline",
    "headline_metrics", "with_logged_aliases", "to_source_names", "definitions_markdown",
]
