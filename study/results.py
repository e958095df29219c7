"""The study's answer: one record per trial, from Tune's results or from MLflow alone.

Both sources give the same :class:`TrialRecord` rows, so ``study.run`` (at the end of a study)
and ``study.report`` (later, from MLflow) print the same table and draw the same figure.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from study.mlflow_runs import trial_runs
from trainables.languages import FAMILIES
from trainables.metric_names import (
    BIAS_METRIC,
    FAMILY_METRIC,
    HEADLINES,
    SEARCHED_PARAMS,
    TARGET_METRIC,
    source_name,
    to_source_names,
)
from trainables.errors import failure_reason
from trainables.mlflow_layout import COMPLETED, EARLY_STOPPED, FAILED, UNFINISHED
from trainables.trial_run import clean_metrics


@dataclass
class TrialRecord:
    """One trial: its settings, final metrics (under source names) and outcome."""

    trial_id: str
    status: str
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    epochs_done: int = 0
    reason: Optional[str] = None

    def value(self, metric: str) -> float:
        """The final value of ``metric``, by source or by short logged name (NaN when missing)."""
        return float(self.metrics.get(metric, self.metrics.get(source_name(metric), math.nan)))


# ---------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------
def records_from_results(results: Any, base_config: dict) -> list[TrialRecord]:
    """Records from a Tune ``ResultGrid`` (its config holds only the sampled params)."""
    epochs = int(base_config.get("epochs", 0))
    terminated = _terminated_trials(results)
    records = []
    for result in results:
        metrics = dict(result.metrics or {})
        trial_id = metrics.get("trial_id") or _trial_id_from_path(result.path)
        params = {**base_config, **(result.config or {})}
        done = int(metrics.get("epoch", metrics.get("training_iteration", 0)) or 0)
        reason = None
        if result.error is not None:
            status, reason = FAILED, failure_reason(result.error)
        elif not (metrics.get("done") or trial_id in terminated):
            status = UNFINISHED
        else:
            status = COMPLETED if done >= epochs else EARLY_STOPPED
        records.append(TrialRecord(trial_id, status, params, clean_metrics(to_source_names(metrics)), done, reason))
    return sort_records(records)


def _terminated_trials(results: Any) -> set[str]:
    """Ids of the trials Tune holds as TERMINATED (finished or stopped early, not errored).

    Tune sets ``done`` on a trial's last result in memory, but the experiment state it saves
    keeps the result without it: after ``--resume``, a trial finished before the interruption
    has ``done`` unset, and only its status says it ended. (``ResultGrid`` keeps the trials,
    in the order of its results, in its ExperimentAnalysis; absent there, nothing is known.)
    """
    analysis = getattr(results, "_experiment_analysis", None)
    return {t.trial_id for t in getattr(analysis, "trials", None) or [] if getattr(t, "status", None) == "TERMINATED"}


def _trial_id_from_path(path: Optional[str]) -> str:
    name = Path(path or "").name
    return name[len("trial_"):] if name.startswith("trial_") else name


def records_from_mlflow(client: Any, experiment_id: str, parent_run_id: str) -> list[TrialRecord]:
    """Records from the child runs of a study's parent run (nothing but MLflow needed; read by
    :func:`study.mlflow_runs.trial_runs`)."""
    return sort_records(TrialRecord(r.trial_id, r.status, r.params, r.metrics, r.epochs_done, r.reason)
                        for r in trial_runs(client, experiment_id, parent_run_id))


def sort_records(records: Iterable[TrialRecord]) -> list[TrialRecord]:
    """By ratio, then seed, then trial id: the order of the research question's curve."""
    def key(r: TrialRecord):
        ratio = r.params.get("ratio")
        return (ratio if isinstance(ratio, (int, float)) else math.inf, r.params.get("seed") or 0, r.trial_id)

    return sorted(records, key=key)


# ---------------------------------------------------------------------------
# Answers
# ---------------------------------------------------------------------------
def scored(records: Sequence[TrialRecord], metrics: Sequence[str]) -> list[TrialRecord]:
    """Records with finite values of all ``metrics`` (completed or early-stopped)."""
    return [
        r for r in records
        if r.status in (COMPLETED, EARLY_STOPPED) and all(math.isfinite(r.value(m)) for m in metrics)
    ]


def best_record(records: Sequence[TrialRecord], metric: str, mode: str) -> Optional[TrialRecord]:
    """The best completed trial by ``metric``/``mode`` (early-stopped trials are not candidates)."""
    done = [r for r in scored(records, [metric]) if r.status == COMPLETED] or scored(records, [metric])
    if not done:
        return None
    sign = 1.0 if mode == "max" else -1.0
    return max(done, key=lambda r: sign * r.value(metric))


def pareto_front(records: Sequence[TrialRecord], objectives: Sequence[dict]) -> list[TrialRecord]:
    """Non-dominated trials for ``objectives`` ([{metric, mode}]), best first by the first objective."""
    metrics = [o["metric"] for o in objectives]
    signs = [1.0 if o["mode"] == "max" else -1.0 for o in objectives]
    candidates = scored(records, metrics)
    vectors = {id(r): [s * r.value(m) for s, m in zip(signs, metrics)] for r in candidates}

    def dominates(a: list, b: list) -> bool:
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))

    front = [r for r in candidates if not any(dominates(vectors[id(o)], vectors[id(r)]) for o in candidates if o is not r)]
    return sorted(front, key=lambda r: -vectors[id(r)][0])


# ---------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------
def table(records: Sequence[TrialRecord], extra_params: Sequence[str] = ()) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: settings, mAP@100 per family, multilingual mAP@100, bias, status."""
    shown = list(dict.fromkeys(list(SEARCHED_PARAMS) + list(extra_params)))
    if len({r.params.get("seed") for r in records}) <= 1:
        shown.remove("seed")
    headers = ["trial", *shown, *FAMILIES, "multilingual", "bias", "status"]
    rows = []
    for r in records:
        settings = [_fmt(r.params.get(p)) for p in shown]
        values = [_fmt(r.value(FAMILY_METRIC.format(f))) for f in FAMILIES]
        status = r.status if r.status != FAILED else f"failed: {r.reason or '?'}"
        rows.append([r.trial_id, *settings, *values, _fmt(r.value(TARGET_METRIC)), _fmt(r.value(BIAS_METRIC)), status])
    return headers, rows


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}" if abs(value) < 1e-3 and value else f"{value:.3f}"
    return str(value)


def write_csv(records: Sequence[TrialRecord], path: Path) -> Path:
    """All trials, every param and final metric, one row each.

    Columns: trial id, the searched parameters, the headline metrics under their short MLflow
    names (in the registry's order), status; then everything else (other params, other metrics
    under source names, sorted), so the columns a reader compares come first.
    """
    all_params = {k for r in records for k in r.params}
    all_metrics = {k for r in records for k in r.metrics}
    searched = [p for p in SEARCHED_PARAMS if p in all_params]
    headlines = [h for h in HEADLINES if h.source in all_metrics]
    params = sorted(all_params - set(searched))
    metrics = sorted(all_metrics - {h.source for h in headlines})
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["trial_id", *searched, *(h.logged for h in headlines), "status", "reason", "epochs_done",
                         *params, *metrics])
        for r in records:
            writer.writerow(
                [r.trial_id, *(_csv_value(r.params.get(p)) for p in searched)]
                + [_csv_value(r.metrics.get(h.source)) for h in headlines]
                + [r.status, r.reason or "", r.epochs_done]
                + [_csv_value(r.params.get(p)) for p in params]
                + [_csv_value(r.metrics.get(m)) for m in metrics]
            )
    return path


def _csv_value(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return "" if value is None else value


def plot_families(records: Sequence[TrialRecord], path: Path, title: str = "") -> Optional[Path]:
    """mAP@100 per family vs ratio (mean and min-max spread over seeds where a ratio repeats)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = scored(records, [TARGET_METRIC])
    if not done:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, metric, style in _curves():
        xs, means, lows, highs = _by_ratio(done, metric)
        if not xs:
            continue
        line = ax.plot(xs, means, style, marker="o", markersize=4, label=name)[0]
        if any(h > lo for lo, h in zip(lows, highs)):
            ax.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.15)
    ax.set_xlabel("monolingual ratio")
    ax.set_ylabel("mAP@100")
    ax.set_xlim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title or "mAP@100 per language family vs batch-composition ratio")
    ax.legend(fontsize=8, ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _curves() -> list[tuple[str, str, str]]:
    curves = [(f, FAMILY_METRIC.format(f), "-") for f in FAMILIES]
    return curves + [("multilingual", TARGET_METRIC, "k--")]


def _by_ratio(records: Sequence[TrialRecord], metric: str) -> tuple[list, list, list, list]:
    groups: dict[float, list[float]] = {}
    for r in records:
        ratio, value = r.params.get("ratio"), r.value(metric)
        if isinstance(ratio, (int, float)) and math.isfinite(value):
            groups.setdefault(round(float(ratio), 6), []).append(value)
    xs = sorted(groups)
    means = [sum(groups[x]) / len(groups[x]) for x in xs]
    return xs, means, [min(groups[x]) for x in xs], [max(groups[x]) for x in xs]


def plot_pareto(records: Sequence[TrialRecord], objectives: Sequence[dict], path: Path) -> Optional[Path]:
    """Scatter of the first two objectives with the Pareto front highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [o["metric"] for o in objectives[:2]]
    points = scored(records, metrics)
    if len(metrics) < 2 or not points:
        return None
    front = pareto_front(records, objectives)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter([r.value(metrics[1]) for r in points], [r.value(metrics[0]) for r in points], c="0.6", label="trials")
    ax.plot([r.value(metrics[1]) for r in front], [r.value(metrics[0]) for r in front], "ro-", label="Pareto front")
    ax.set_xlabel(f"{metrics[1]} ({objectives[1]['mode']})")
    ax.set_ylabel(f"{metrics[0]} ({objectives[0]['mode']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
