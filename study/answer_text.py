"""The answer in words and pictures: the sentence on the ends, the resolution lines, the tested
hypotheses, the markdown summary and the figure, made of the numbers of :mod:`study.answer_stats`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

from study.answer import TrialQueries
from study.answer_metrics import OBJECTIVE
from study.answer_stats import (
    Difference,
    _analyse,
    _Analysis,
    _ratio_key,
    ends_numbers,
    hypotheses_numbers,
    resolution_numbers,
)
from trainables.mlflow_layout import ratio_label


def _not_tried(missing: Sequence[float]) -> str:
    names = " and ".join(f"ratio {r:g}" for r in missing)
    return f"{names} {'were' if len(missing) > 1 else 'was'} not tried"


UNKNOWN_NOISE = "training noise unknown: one seed at each ratio"


def _ruled_out(d: Difference) -> str:
    return f"it rules out a difference below {d.low:+.3f} or above {d.high:+.3f}"


def _bracket(d: Difference, digits: int = 3) -> str:
    """``[low, high]``, or why there is no interval."""
    return f"[{d.low:+.{digits}f}, {d.high:+.{digits}f}]" if d.noise_known else f"[{UNKNOWN_NOISE}]"


def _ends(analysis: _Analysis, confidence: float) -> str:
    ends = ends_numbers(analysis, confidence)
    if ends.missing:
        return f"The ends of the ratio range cannot be compared: {_not_tried(ends.missing)}."
    d = ends.difference
    if not d.noise_known:
        return (f"Ratio 1 and ratio 0 cannot be judged against noise: ratio 1 minus ratio 0 is {d.diff:+.3f} on the "
                f"objective, but each was trained with one seed, so the seed spread that decides such differences is "
                f"unknown; give each ratio 2 or more seeds (search.seeds in the space).")
    families = [f"{fam} ({diff:+.3f})" for fam, diff in ends.families]
    pct = f"{100 * confidence:g}%"
    verdict = "differ beyond noise" if d.excludes_zero else "do not differ beyond noise"
    how = f"paired over {d.n} seeds" if d.paired else "unpaired"
    tail = (f"the multilingual t2t difference excludes 0 for {', '.join(families)}" if families
            else "the multilingual t2t difference excludes 0 for no family")
    ruled = "" if d.excludes_zero else f"; {_ruled_out(d)}"
    return (f"Ratio 1 and ratio 0 {verdict} on the objective (multilingual i2t+t2t mAP@100): "
            f"ratio 1 minus ratio 0 is {d.diff:+.3f} ({pct} CI {d.low:+.3f} to {d.high:+.3f}, half-width "
            f"{d.halfwidth:.3f}, {how}){ruled}, and {tail}.")


def ends_sentence(
    trials: Sequence[TrialQueries], confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0,
) -> str:
    """One sentence: do ratio 0 and ratio 1 differ beyond noise on the objective?

    Gives the difference (ratio 1 minus ratio 0) with its interval, half-width and how it was
    judged (paired over shared seeds, or unpaired); when it does not exclude 0, the differences
    it rules out; and names the families whose multilingual t2t difference has an interval
    excluding 0. Says so when ratio 0 or 1 was not tried.
    """
    return _ends(_analyse(trials, n_resamples, seed), confidence)


def _resolution(analysis: _Analysis, confidence: float, target: float) -> list[str]:
    """Per comparison on the objective (the ends; each ratio against the best): its half-width,
    i.e. the smallest difference it could resolve, and for an unresolved one the seeds a
    half-width of ``target`` would need (:func:`study.answer_stats.resolution_numbers`)."""
    comparisons = resolution_numbers(analysis, confidence, target)
    if not comparisons:
        return []
    lines = []
    for c in comparisons:
        d = c.difference
        if not d.noise_known:
            lines.append(f"  ratio {c.a:.3g} - ratio {c.b:.3g}: {d.diff:+.3f} (unresolved; {UNKNOWN_NOISE})")
            continue
        what = "resolved" if d.excludes_zero else "unresolved"
        line = (f"  ratio {c.a:.3g} - ratio {c.b:.3g}: {d.diff:+.3f} ± {d.halfwidth:.3f} ({what}; "
                f"{'paired over ' + str(d.n) + ' seeds' if d.paired else 'unpaired'})")
        if c.short:
            line += (f"; ± {target:g} would take ~{c.seeds} paired seeds" if c.seeds is not None else
                     f"; ± {target:g} is out of reach of seeds (test-set noise alone is "
                     f"± {c.test_halfwidth:.3f})")
        lines.append(line)
    pct = f"{100 * confidence:g}%"
    return [f"Resolution on the objective ({pct} half-widths: the smallest difference each comparison could resolve):",
            *lines]


def _hypotheses(analysis: _Analysis, confidence: float) -> list[str]:
    """The seed paper's two claims, each a line with its verdict and intervals
    (:func:`study.answer_stats.hypotheses_numbers`); not testable lines say why."""
    lines = ["Hypotheses of the hybrid-batch paper (Elmahdy et al. 2024), tested:"]
    found = hypotheses_numbers(analysis, confidence)
    if not found.interior or found.missing:
        why = _not_tried(found.missing) if found.missing else "no ratio strictly between 0 and 1 was tried"
        return [*lines, f"  (a) hybrid beats both ends on the objective: not testable ({why}).",
                f"  (b) hybrid has less language bias than ratio 1: not testable ({why})."]
    level, h, vs0, vs1 = found.level, found.hybrid, found.vs0, found.vs1
    lines.append(f"  (a) hybrid beats both ends on the objective: {found.hybrid_verdict}: best hybrid ratio {h:.3g} "
                 f"minus ratio 0 {vs0.diff:+.3f} {_bracket(vs0)}, minus ratio 1 {vs1.diff:+.3f} "
                 f"{_bracket(vs1)} ({100 * level:.3g}% intervals).")
    if found.bias is not None:
        b, d = found.least_biased, found.bias
        lines.append(f"  (b) hybrid has less language bias than ratio 1: {found.bias_verdict}: least-biased hybrid ratio "
                     f"{b:.3g} minus ratio 1 {d.diff:+.1f} {_bracket(d, 1)} mean-rank gap "
                     f"({100 * level:.3g}% interval; lower is less bias).")
    return lines


RATIO_MEANING = ("The ratio is the share of monolingual batches in training: each step's batch is monolingual (every "
                 "caption in one language) with probability `ratio`, else cross-lingual (each caption's language "
                 "drawn on its own); 0 = all cross-lingual, 1 = all monolingual.")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain aligned text table (numbers right-aligned, the last column free-form)."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        body = [c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells[:-1], widths))]
        return "  ".join(body + [cells[-1]])

    rule = "  ".join("-" * w for w in widths[:-1]) + "  " + "-" * max(6, widths[-1])
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def best_ratio_sentence(best: dict) -> str:
    """The study's one "best" in words: the answer's best mean on the objective, with its interval
    (``best``: :attr:`study.outputs.Answer.best_ratio`)."""
    others = [ratio_label(r) for r in best["plausible"] if r != best["ratio"]]
    tied = f"; not distinguishable from it: ratio {', '.join(others)}" if others else "; better than every other ratio tried"
    interval = (f"[{best['ci_low']:.3f}, {best['ci_high']:.3f}]" if best["n_seeds"] >= 2 else
                f"[{best['ci_low']:.3f}, {best['ci_high']:.3f}] (test images only: one seed, its training noise unknown)")
    return (f"Best ratio (the answer: best mean over {best['n_seeds']} seeds of multilingual mAP@100): "
            f"{ratio_label(best['ratio'])}, {best['mean']:.3f} {interval}{tied}")


def conditional_sentence(effect: Any, others: Sequence[str], metric: str, n_trials: int,
                         tried: tuple[float, float]) -> str:
    """The ratio's effect with ``others`` held fixed, in one sentence (``effect``:
    :func:`study.answer_conditional.conditional_ratio_effect`, or None when it cannot be separated;
    ``tried``: the lowest and highest ratio tried)."""
    held = " and ".join(others)
    if effect is None:
        return (f"The ratio's effect on {metric} cannot be separated from {held}: {n_trials} completed trials leave too few "
                f"degrees of freedom for a model of the ratio with {held} held fixed, or the ratio moved only with "
                "them; no ratio effect is claimed.")
    if effect.high < 0 or effect.low > 0:
        verdict = f"ratio 1 gives a {'lower' if effect.high < 0 else 'higher'} value than ratio 0 beyond noise"
    else:
        verdict = "not beyond noise: it rules out differences outside that interval"
    return (f"Ratio effect on {metric} with {held} held fixed (additive model over {effect.n} trials: linear in the ratio, "
            f"{', '.join(effect.terms)}; conservative 95% CI, t with {effect.df} df): ratio 1 minus ratio 0 is "
            f"{effect.estimate:+.3f} [{effect.low:+.3f}, {effect.high:+.3f}], {verdict}. It averages over the "
            f"settings tried (ratios {ratio_label(tried[0])} to {ratio_label(tried[1])}); method: docs/answer.md.")


def conditional_headline(effect: Any, others: Sequence[str]) -> str:
    """:func:`conditional_sentence` in a heading's few words."""
    held = " and ".join(others)
    if effect is None:
        return f"the ratio's effect cannot be separated from {held}; no best ratio is named"
    within = "beyond noise" if effect.beyond_noise else "not beyond noise"
    return (f"with {held} held fixed, ratio 1 minus ratio 0 is {effect.estimate:+.3f} "
            f"[{effect.low:+.3f}, {effect.high:+.3f}] ({within}); no best ratio is named")


def answer_headline(best: Optional[dict]) -> str:
    """The answer in one short line, for a heading (the MLflow experiment page shows it first, on
    one line of a laptop screen): the best ratio with its interval, and the ratios within noise of it."""
    if best is None:
        return "no answer (no completed trial with per-query results)"
    others = [ratio_label(r) for r in best["plausible"] if r != best["ratio"]]
    tied = f"{', '.join(others)} within noise of it" if others else "beyond noise of every other ratio tried"
    seeds = f"{best['n_seeds']} seed{'s' if best['n_seeds'] != 1 else ''}"
    return (f"best ratio {ratio_label(best['ratio'])} (mAP@100 {best['mean']:.3f} "
            f"[{best['ci_low']:.3f}, {best['ci_high']:.3f}], {seeds}); {tied}")


def _best_cells(rows: Sequence[dict], best: Sequence[dict]) -> list[tuple]:
    """Per cell of ``best`` (:func:`study.answer_stats.best_ratios`), the texts of its table row:
    (the cell, best ratio, range of the plausible set, mean at the best with its 95% CI, seeds)."""
    by_cell = {(r["setting"], r["family"], _ratio_key(r["ratio"])): r for r in rows}
    cells = []
    for b in best:
        row = by_cell.get((b["setting"], b["family"], _ratio_key(b["best_ratio"])))
        ci = f"{row['mean']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]" if row else f"{b['best_mean']:.3f}"
        cells.append((b, ratio_label(b["best_ratio"]), f"{ratio_label(b['set_low'])} – {ratio_label(b['set_high'])}",
                      ci, str(row["n_seeds"] if row else "")))
    return cells


def answer_overview(rows: Sequence[dict], best: Sequence[dict], sentence: str) -> str:
    """The answer in brief, for the MLflow experiment page (which cannot scroll a long description):
    the verdict on the ends, what the ratio means, and the best ratio per family for multilingual
    retrieval (the objective's setting) and the language bias, with intervals, as a fixed-width table."""
    names = {"all": "all (caption->caption)", "i2t+t2t": "objective (i2t+t2t)"}
    table = [["bias (lower is better)" if b["setting"] == "bias" else names.get(b["family"], b["family"]), best_ratio,
              within, ci] for b, best_ratio, within, ci, _ in _best_cells(rows, best)
             if b["setting"] in ("multilingual", "bias")]
    headers = ["multilingual mAP@100", "best ratio", "within noise", "mean at best (95% CI)"]
    return "\n".join([f"**Verdict.** {sentence}", "", RATIO_MEANING, "", "```", format_table(headers, table), "```", ""])


def answer_markdown(rows: Sequence[dict], best: Sequence[dict], sentence: str, notes: Sequence[str] = (),
                    best_ratio: Optional[dict] = None) -> str:
    """The answer as the MLflow parent run's description (and ``answer.md``): the verdict first (the
    ends ``sentence``, what the ratio means, the best ratio), then the best ratio per (setting,
    family) with its interval as a fixed-width table (MLflow's markdown tables have no cell
    padding), then ``notes`` (the resolution and hypotheses of :func:`study.outputs.study_answer`).

    rows: :func:`study.answer_stats.answer_rows`; best: :func:`study.answer_stats.best_ratios`; sentence:
    :func:`ends_sentence`; best_ratio: :attr:`study.outputs.Answer.best_ratio`.
    """
    table = [[b["setting"], b["family"], best_ratio, within, ci, seeds]
             for b, best_ratio, within, ci, seeds in _best_cells(rows, best)]
    headers = ["setting", "family", "best ratio", "plausible optimum", "mean at best (95% CI)", "seeds"]
    verdict = [f"**Verdict.** {sentence}", "", RATIO_MEANING]
    if best_ratio is not None:
        verdict += ["", f"**{best_ratio_sentence(best_ratio)}.**"]
    note = ("Setting: how retrieval is evaluated (monolingual, cross-lingual, multilingual pool), not the batch "
            "composition. Bias: lower is better. The plausible optimum is every tried ratio not distinguishable "
            "from the best.")
    extra = ["", *(line.strip() if line.startswith("  ") else line for line in notes)] if notes else []
    extra = [f"- {line}" if i and not line.endswith(":") and line else line for i, line in enumerate(extra)]
    # a heading line ("Hypotheses ...:") after a list needs a blank line, else markdown folds it into the list
    extra = [part for i, line in enumerate(extra) for part in (["", line] if i > 1 and line.endswith(":") else [line])]
    return "\n".join(["## Answer", "", *verdict, "", "### Best ratio per setting and family", "", "```",
                      format_table(headers, table), "```", "", note, *extra, ""])


_SETTING_STYLE = {"multilingual": ("tab:blue", "-"), "crosslingual": ("tab:orange", "--"), "monolingual": ("tab:green", ":")}


def plot_conditional(effects: Sequence[tuple], held: Sequence[str], path: Union[str, Path],
                     title: str = "") -> Optional[Path]:
    """PNG of the ratio's effect with the other searched parameters held fixed, one panel per
    objective (``effects``: (metric, :class:`study.answer_conditional.ConditionalEffect`) pairs;
    ``held``: those parameters' names; ``title``: the study's figure title, whose "NAME:" prefix is kept). Each trial is a point at its ratio, its value with the
    others' fitted effect taken out; the line is the fitted effect, and the shaded fan spans the
    slopes of its 95% interval, through the mean. Returns None without an effect."""
    if not effects:
        return None
    import matplotlib  # here, not at the top: only the figure needs it (start-up: docs/performance.md)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(effects), figsize=(5.5 * len(effects), 4.2), squeeze=False)
    for ax, (metric, effect) in zip(axes[0], effects):
        mean_ratio = sum(effect.ratios) / len(effect.ratios)
        xs = [0.0, 1.0]
        line = [effect.center + effect.estimate * (x - mean_ratio) for x in xs]
        low = [effect.center + effect.low * (x - mean_ratio) for x in xs]
        high = [effect.center + effect.high * (x - mean_ratio) for x in xs]
        ax.fill_between(xs, [min(a, b) for a, b in zip(low, high)], [max(a, b) for a, b in zip(low, high)],
                        color="tab:blue", alpha=0.15, linewidth=0, label="95% interval of the effect")
        ax.plot(xs, line, color="tab:blue", label=f"ratio 1 - ratio 0: {effect.estimate:+.3f} "
                                                  f"[{effect.low:+.3f}, {effect.high:+.3f}]")
        ax.plot(effect.ratios, effect.adjusted, "o", color="black", markersize=4, label="trials (others held fixed)")
        ax.set_xlabel("monolingual ratio")
        ax.set_ylabel(f"{metric}\n({' and '.join(held)} held fixed)")
        ax.set_xlim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    study = title.split(":")[0] + ": " if ":" in title else ""  # the caller's title names the study first
    fig.suptitle(f"{study}the ratio's effect with {' and '.join(held)} held fixed (additive model)", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_answer(rows: Sequence[dict], path: Union[str, Path], title: str = "") -> Optional[Path]:
    """PNG of the answer against the ratio, as small multiples that read at a glance (3 x 3 panels).

    First the objective (multilingual i2t+t2t) and the language bias, each a mean over seeds with
    its 95% interval shaded; then one panel per language family, with the three settings in
    the same colours in every panel (multilingual caption -> caption with its interval shaded,
    cross-lingual and monolingual as lines). A star marks each panel's best mean. Returns None
    without rows.
    """
    if not rows:
        return None
    import matplotlib  # here, not at the top: only the figure needs it (start-up: docs/performance.md)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(setting: str, family: str) -> Optional[tuple]:
        pts = sorted((r["ratio"], r["mean"], r["ci_low"], r["ci_high"]) for r in rows
                     if r["setting"] == setting and r["family"] == family)
        return tuple(list(c) for c in zip(*pts)) if pts else None

    def draw(ax, setting: str, family: str, color: str, style: str, band: bool, label: str, lower_better=False):
        got = series(setting, family)
        if got is None:
            return
        xs, means, lows, highs = got
        ax.plot(xs, means, style, color=color, marker="o", markersize=3, label=label)
        if band:
            ax.fill_between(xs, lows, highs, color=color, alpha=0.2, linewidth=0)
        best = min(range(len(xs)), key=lambda i: means[i]) if lower_better else max(range(len(xs)), key=lambda i: means[i])
        ax.plot([xs[best]], [means[best]], "*", color=color, markersize=11)

    families = [f for f in dict.fromkeys(r["family"] for r in rows if r["setting"] == "multilingual")
                if f not in ("all", OBJECTIVE[1])]
    fig, axes = plt.subplots(3, 3, figsize=(12, 10))
    panels = axes.ravel()
    draw(panels[0], *OBJECTIVE, "black", "-", True, "objective")
    panels[0].set_title("objective: multilingual mAP@100 (i2t+t2t)", fontsize=10, fontweight="bold")
    draw(panels[1], "bias", "all", "tab:red", "-", True, "bias", lower_better=True)
    panels[1].set_title("language bias (mean-rank gap; lower is better)", fontsize=10)
    for ax, family in zip(panels[2:], families):
        for setting, (color, style) in _SETTING_STYLE.items():
            draw(ax, setting, family, color, style, setting == "multilingual", setting)
        ax.set_title(f"{family}: mAP@100", fontsize=10)
    for ax in panels[2 + len(families):]:
        ax.axis("off")
    for ax in panels:
        if ax.axison:
            ax.grid(alpha=0.3)
            ax.set_xlim(-0.03, 1.03)
            ax.set_xlabel("ratio (share of monolingual batches)", fontsize=8)
    handles, labels = panels[2].get_legend_handles_labels()
    if handles:
        fig.legend(handles, [f"{label} (shaded: 95% CI)" if label == "multilingual" else label for label in labels],
                   loc="upper center", bbox_to_anchor=(0.5, 0.955), ncol=3, fontsize=9, frameon=False)
    fig.suptitle(title or "The answer against the ratio: mean over seeds; shaded: 95% interval; star: best mean")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
