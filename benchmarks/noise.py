"""Seed noise of candidate recipes: what a seed buys, and what the ends' difference costs to resolve.

The noise benchmark of issue 16, built on :mod:`benchmarks.time_to_quality`'s way of training: each
run is the per-worker function (``train_worker`` with a local session: no Ray) in its own process on
one torch thread, as a 1-CPU Ray worker. Every recipe is trained at ratios 0, 0.5 and 1 with seeds
``0..n-1`` (the same seeds at every ratio, as a study shares them), evaluated once, at the end, on the
full synthetic test split. Each run saves its per-query AP arrays (``per_query_ap.npz``, what a
study's trial logs), so the recipe's ends' difference is judged with the study's own analysis
(:func:`study.answer_stats.difference`): image bootstrap plus seed spread.

Per recipe and ratio the table gives the mean and seed sd of the objective (multilingual mAP@100)
and CPU-seconds per trial; per recipe, the seed-to-seed correlation between ratios (what pairing
saves), the sd of the per-seed difference ratio 1 - ratio 0 against its unpaired counterpart, the
test-set standard error of that difference, and the **projection**: the expected 95% half-width of
ratio 1 - ratio 0 in a study of ``--minutes`` on 2 cores (2 trials at a time) that spends its trials
equally on 3 ratios, where a trial costs ``--fixed-s`` + its training and evaluation CPU-seconds:

    n = floor(2 * (60 * minutes - startup_s) / trial_s / 3)
    half-width(n) = t(0.975, n - 1) * sqrt(sd_diff**2 / n + se_test**2)

The recipe to choose is the one with the smallest projected half-width, not the highest mean.

    python -m benchmarks.noise --jobs 2 --out noise-runs          # ~30 min on 2 cores
    python -m benchmarks.noise --report noise-runs                 # the table again, from the saved runs
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from benchmarks._common import add_run_args, load_line, print_table, save_json
from trainables import per_query

# name -> TrialConfig fields. "default" is TrialConfig's defaults as they are now; every other recipe is
# written over the defaults of 2026-12-05 (``_WAS``: 5 x 100 steps of batch 64, lr 1e-3, 100 warm-up steps,
# temperature 0.07 learned), so that it reproduces its row in benchmarks/README.md §9 whatever the defaults
# become. Every recipe is evaluated once, after its last step. The one key that is not a TrialConfig field,
# ``width``, resizes the tiny model (both towers and the embedding; heads of 32 channels) for this
# benchmark only (:func:`use_tiny_width`).
_WAS = {"warmup_steps": 100}  # the default warm-up until §9's warm-up runs chose 250 (2026-12-06)
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    "wu100": {**_WAS},  # the default recipe until 2026-12-06 (its rows were named "default" before)
    "t0.02": {**_WAS, "temperature": 0.02},
    "t0.01-b128": {**_WAS, "temperature": 0.01, "batch_size": 128},
    "t0.02-s300": {"temperature": 0.02, "steps_per_epoch": 60, "warmup_steps": 60},
    "t0.02-s800": {"temperature": 0.02, "steps_per_epoch": 160, "warmup_steps": 160},
    "t0.01": {**_WAS, "temperature": 0.01},
    "t0.01-s300": {"temperature": 0.01, "steps_per_epoch": 60, "warmup_steps": 60},
    "t0.01-b128-s200": {"temperature": 0.01, "batch_size": 128, "steps_per_epoch": 40, "warmup_steps": 40},
    # the old default's cost, less optimiser noise: half the learning rate; the temperature held at 0.07
    "lr5e-4": {**_WAS, "lr": 5e-4},
    "fixed-t": {**_WAS, "learn_temperature": False},
    # half the tiny model's width: a step ~2x cheaper, so more steps or a larger batch at the old default's cost
    "w64": {**_WAS, "width": 64},
    "w64-s1000": {"width": 64, "steps_per_epoch": 200, "warmup_steps": 200},
    "w64-t0.01-b128": {**_WAS, "width": 64, "temperature": 0.01, "batch_size": 128},
    # the warm-up: a quarter and 2.5x the old default's 100 steps (wu250 is the default since)
    "wu25": {"warmup_steps": 25},
    "wu250": {"warmup_steps": 250},
}
RATIOS = (0.0, 0.5, 1.0)
OBJECTIVE = "map100/multilingual"
BIAS = "bias/multilingual"
TINY = {"steps_per_epoch": 2, "epochs": 2, "warmup_steps": 1, "synthetic_train_size": 128, "synthetic_test_size": 40}


def run_config(recipe: str, ratio: float, seed: int, cache: str, tiny: bool = False) -> dict[str, Any]:
    """TrialConfig fields of one run: the recipe at ``ratio`` and ``seed``, evaluated only at its end."""
    values = {**RECIPES[recipe], **(TINY if tiny else {}), "ratio": ratio, "seed": seed, "data_cache": cache}
    values.pop("width", None)
    values["eval_every"] = values.get("epochs", 5)  # the last epoch only: the noise of the final value
    return values


def use_tiny_width(width: Optional[int]) -> None:
    """Register, in this process only, the tiny model at ``width`` (embedding and both towers; heads of 32
    channels) under its own open_clip name, so that every later build of ``model=tiny`` gets it; None: the
    shipped config again (a pool process runs recipes of either kind, one after another)."""
    import open_clip
    from trainables import model

    if width is None:
        open_clip.add_model_config(model._CONFIG_DIR)
        return
    config = json.loads((model._CONFIG_DIR / f"{model.TINY_NAME}.json").read_text())
    config["embed_dim"] = config["vision_cfg"]["width"] = config["text_cfg"]["width"] = width
    config["text_cfg"]["heads"] = max(1, width // 32)
    folder = Path(tempfile.mkdtemp(prefix="mlclip-width-"))
    (folder / f"{model.TINY_NAME}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)  # found first: trainables.model then registers nothing of its own


def run_one(job: tuple) -> dict[str, Any]:
    """Train one (recipe, ratio, seed) on one thread; save its per-query arrays; return its row."""
    recipe, ratio, seed, cache, out, tiny = job
    import torch

    torch.set_num_threads(1)
    use_tiny_width(RECIPES[recipe].get("width"))
    import trainables.train as train
    from trainables.config import TrialConfig
    from trainables.session import LocalSession

    config = TrialConfig(**run_config(recipe, ratio, seed, cache, tiny))
    captured: dict[str, Any] = {}
    evaluate = train.evaluate

    def keep_queries(*args, **kwargs):  # the study keeps the final evaluation's per-query arrays; so do we
        metrics = evaluate(*args, **kwargs)
        arrays = args[5] if len(args) > 5 else kwargs.get("per_query")
        if arrays:
            captured.update(arrays)
        return metrics

    train.evaluate = keep_queries
    cpu = [0.0]
    final: dict[str, float] = {}

    class Recorder(LocalSession):
        def report(self, metrics, state=None):  # noqa: D102 - records instead of checkpointing
            cpu[0] += metrics["train/epoch_cpu_s"]
            final.clear()
            final.update(metrics)

    train.train_worker(config, Recorder())
    name = f"{recipe}_r{ratio:g}_s{seed}"
    per_query.write(Path(out) / f"{name}.npz", captured)
    row = {"recipe": recipe, "ratio": ratio, "seed": seed, "objective": final[OBJECTIVE], "bias": final[BIAS],
           "train_cpu_s": cpu[0], "eval_s": final["eval/time_s"], "steps": config.epochs * config.steps_per_epoch}
    with open(Path(out) / "runs.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
    return row


def read_runs(out: str) -> list[dict[str, Any]]:
    """The rows saved in ``out/runs.jsonl`` (the last row per run wins)."""
    rows: dict[tuple, dict] = {}
    for line in (Path(out) / "runs.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[row["recipe"], row["ratio"], row["seed"]] = row
    return list(rows.values())


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if len(a) >= 3 and np.std(a) > 0 and np.std(b) > 0 else float("nan")


def expected_halfwidth(n: int, sd_diff: float, se_test: float) -> float:
    """Expected 95% half-width of one paired difference over ``n`` >= 2 seeds:
    ``t(0.975, n - 1) * sqrt(sd_diff**2 / n + se_test**2)``."""
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1) * math.sqrt(sd_diff ** 2 / n + se_test ** 2))


def projected_halfwidth(sd_diff: float, se_test: float, trial_s: float, minutes: float, startup_s: float,
                        slots: int = 2, ratios: int = 3) -> tuple[int, float]:
    """(seeds per ratio, expected 95% half-width of one paired difference) for a study of ``minutes``
    with ``slots`` trials at a time spread equally over ``ratios`` ratios (module docstring)."""
    n = int(slots * (60 * minutes - startup_s) / trial_s // ratios)
    return n, (expected_halfwidth(n, sd_diff, se_test) if n >= 2 else float("inf"))


def seeds_for(target: float, sd_diff: float, se_test: float, most: int = 200) -> Optional[int]:
    """The fewest paired seeds ``n`` (>= 2) whose :func:`expected_halfwidth` is within ``target``;
    None when even ``most`` would not do."""
    return next((n for n in range(2, most + 1) if expected_halfwidth(n, sd_diff, se_test) <= target), None)


def summarize(out: str, minutes: float, fixed_s: float, startup_s: float, evals_per_trial: float,
              n_resamples: int = 500, target: float = 0.02) -> dict[str, Any]:
    """Per recipe: per-ratio mean/sd/CPU, seed correlations, paired vs unpaired sd, test se, projection."""
    from study.answer_metrics import OBJECTIVE as ANSWER_OBJECTIVE
    from study.answer import load_trial_queries
    from study.answer_stats import difference

    rows = read_runs(out)
    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    per_ratio, per_recipe = [], []
    for recipe in recipes:
        mine = [r for r in rows if r["recipe"] == recipe]
        by_ratio = {ratio: {r["seed"]: r for r in mine if r["ratio"] == ratio} for ratio in RATIOS}
        seeds = sorted(set.intersection(*(set(v) for v in by_ratio.values())))
        if len(seeds) < 2:
            continue
        values = {ratio: np.array([by_ratio[ratio][s]["objective"] for s in seeds]) for ratio in RATIOS}
        trial_cpu = []
        for ratio in RATIOS:
            runs = [by_ratio[ratio][s] for s in seeds]
            cpu = float(np.mean([r["train_cpu_s"] + evals_per_trial * r["eval_s"] for r in runs]))
            trial_cpu.append(cpu)
            per_ratio.append({"recipe": recipe, "ratio": ratio, "seeds": len(seeds), "mean": float(values[ratio].mean()),
                              "sd": float(values[ratio].std(ddof=1)),
                              "bias": float(np.mean([r["bias"] for r in runs])), "cpu_s": cpu})
        diff = values[1.0] - values[0.0]
        sd_paired = float(diff.std(ddof=1))
        sd_unpaired = float(math.sqrt(values[1.0].var(ddof=1) + values[0.0].var(ddof=1)))
        trials = [load_trial_queries(Path(out) / f"{recipe}_r{ratio:g}_s{s}.npz", f"{ratio}-{s}", ratio, s)
                  for ratio in (0.0, 1.0) for s in seeds]
        # test-set noise of the difference alone: the paired image bootstrap with the seed spread removed
        centred = _seed_free(trials)
        se_test = difference(centred, 1.0, 0.0, *ANSWER_OBJECTIVE, n_resamples=n_resamples).se_test
        cpu_per_trial = float(np.mean(trial_cpu))
        trial_s = fixed_s + cpu_per_trial
        n, half = projected_halfwidth(sd_paired, se_test, trial_s, minutes, startup_s)
        _, half_unpaired = projected_halfwidth(sd_unpaired, se_test, trial_s, minutes, startup_s)
        # the target as a compute bound: n paired seeds at each end plus an interior ratio's 2, trained and
        # evaluated with no fixed cost at all, against every CPU-second of the study's 2 cores
        n_target = seeds_for(target, sd_paired, se_test)
        cpu_target = None if n_target is None else (2 * n_target + 2) * cpu_per_trial
        per_recipe.append({
            "recipe": recipe, "seeds": len(seeds), "steps": mine[0]["steps"],
            "corr_0_1": _corr(values[0.0], values[1.0]), "corr_0_05": _corr(values[0.0], values[0.5]),
            "corr_05_1": _corr(values[0.5], values[1.0]), "diff_1_0": float(diff.mean()),
            "sd_paired": sd_paired, "sd_unpaired": sd_unpaired, "se_test": se_test, "trial_s": trial_s,
            "seeds_per_ratio": n, "halfwidth": half, "halfwidth_unpaired": half_unpaired,
            "seeds_for_target": n_target, "cpu_per_trial": cpu_per_trial, "cpu_for_target": cpu_target,
        })
    return {"per_ratio": per_ratio, "per_recipe": per_recipe, "minutes": minutes, "fixed_s": fixed_s,
            "startup_s": startup_s, "evals_per_trial": evals_per_trial, "target": target,
            "cpu_budget": 2 * 60.0 * minutes}


def _seed_free(trials: list) -> list:
    """The trials with one seed each per ratio, so that :func:`study.answer_stats.difference` sees test-set noise only.

    Every trial keeps its own arrays but is given seed 0 and a ratio-unique id, and the seeds' arrays
    are concatenated per ratio as if one trial had answered every query of every seed: the bootstrap
    of that pooled trial's mean is the test-set noise of the seed-mean (the same images resampled for
    every seed, as the study does).
    """
    from study.answer import TrialQueries

    pooled = []
    for ratio in sorted({t.ratio for t in trials}):
        mine = [t for t in trials if t.ratio == ratio]
        arrays = {}
        for key in mine[0].arrays:
            if key == "bias.languages":
                arrays[key] = mine[0].arrays[key]
            else:
                arrays[key] = np.concatenate([t.arrays[key] for t in mine])
        pooled.append(TrialQueries(f"pooled-{ratio}", ratio, 0, arrays))
    return pooled


def print_summary(summary: dict[str, Any]) -> None:
    """The two tables: per recipe and ratio, and per recipe with its projection."""
    print_table(["recipe", "ratio", "seeds", "mean", "seed sd", "bias", "CPU s/trial"],
                [[r["recipe"], r["ratio"], r["seeds"], r["mean"], r["sd"], r["bias"], r["cpu_s"]]
                 for r in summary["per_ratio"]], title="\nobjective (multilingual mAP@100) per recipe and ratio")
    print_table(["recipe", "steps", "corr(0,1)", "corr(0,.5)", "corr(.5,1)", "1-0", "sd paired", "sd unpaired",
                 "se test", "trial s", "seeds/ratio", "half-width", "unpaired"],
                [[r["recipe"], r["steps"], r["corr_0_1"], r["corr_0_05"], r["corr_05_1"], r["diff_1_0"],
                  r["sd_paired"], r["sd_unpaired"], r["se_test"], r["trial_s"], r["seeds_per_ratio"],
                  r["halfwidth"], r["halfwidth_unpaired"]] for r in summary["per_recipe"]],
                title=(f"\nratio 1 - ratio 0, projected for a {summary['minutes']:g}-minute study on 2 cores "
                       f"(fixed {summary['fixed_s']:g} s a trial, {summary['evals_per_trial']:g} evaluations, "
                       f"{summary['startup_s']:g} s start-up)"))
    print_table(["recipe", "sd paired", "se test", "seeds per end", "CPU s per trial", "CPU s needed", "of budget"],
                [[r["recipe"], r["sd_paired"], r["se_test"], r["seeds_for_target"] or "> 200", r["cpu_per_trial"],
                  r["cpu_for_target"] or "-",
                  f"{r['cpu_for_target'] / summary['cpu_budget']:.2f}x" if r["cpu_for_target"] else "-"]
                 for r in summary["per_recipe"]],
                title=(f"\nhalf-width {summary['target']:g} on ratio 1 - ratio 0 as a compute bound: the paired seeds "
                       f"each end needs, and the CPU of training and evaluating them plus 2 seeds of one interior "
                       f"ratio with no fixed cost at all, against the {summary['cpu_budget']:.0f} CPU s of a "
                       f"{summary['minutes']:g}-minute study on 2 cores"))


def main(argv=None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", help=f"recipes (default all): {', '.join(RECIPES)}")
    p.add_argument("--seeds", type=int, default=4, help="seeds per recipe and ratio (0..n-1)")
    p.add_argument("--out", help="folder of the runs (rows and per-query arrays); default a temp folder")
    p.add_argument("--report", help="only summarize the runs saved in this folder")
    p.add_argument("--minutes", type=float, default=10.0, help="study length of the projection")
    p.add_argument("--fixed-s", type=float, default=22.0, help="fixed seconds per trial beyond training and evaluation")
    p.add_argument("--startup-s", type=float, default=30.0, help="seconds of a study before its first trial trains")
    p.add_argument("--evals", type=float, default=1.0, help="full evaluations' worth per trial in the study")
    p.add_argument("--target", type=float, default=0.02, help="half-width of the compute bound (the issue's goal)")
    add_run_args(p, "smoke run: 1 recipe, 2 seeds, 4 steps, tiny data")
    args = p.parse_args(argv)
    out = args.report or args.out or tempfile.mkdtemp(prefix="mlclip-noise-")
    if not args.report:
        names = args.only or (["default"] if args.tiny else list(RECIPES))
        unknown = [n for n in names if n not in RECIPES]
        if unknown:
            p.error(f"unknown recipe(s) {', '.join(unknown)}; known: {', '.join(RECIPES)}")
        if args.tiny:
            args.seeds, args.jobs = 2, 1
            args.data_cache = args.data_cache or tempfile.mkdtemp(prefix="mlclip-noise-cache-")
        Path(out).mkdir(parents=True, exist_ok=True)
        from trainables.config import TrialConfig
        from trainables.data.synthetic import load_synthetic

        print(load_line(), flush=True)
        load_synthetic(TrialConfig(**run_config(names[0], 0.0, 0, args.data_cache, args.tiny)))  # the cache, once
        done = {(r["recipe"], r["ratio"], r["seed"]) for r in read_runs(out)} if (Path(out) / "runs.jsonl").exists() else set()
        # seed-major: after every seed round the summary already covers every recipe
        jobs = [(n, ratio, s, args.data_cache, out, args.tiny) for s in range(args.seeds) for n in names
                for ratio in RATIOS if (n, ratio, s) not in done]
        t0 = time.perf_counter()
        with mp.get_context("spawn").Pool(max(1, args.jobs)) as pool:
            list(pool.imap_unordered(run_one, jobs, chunksize=1))
        print(f"wall-clock {time.perf_counter() - t0:.0f} s ({load_line()})")
    summary = summarize(out, args.minutes, args.fixed_s, args.startup_s, args.evals,
                        n_resamples=100 if args.tiny else 500, target=args.target)
    print_summary(summary)
    summary["load"] = load_line()
    save_json(args.json, summary)
    return summary


if __name__ == "__main__":
    main()
