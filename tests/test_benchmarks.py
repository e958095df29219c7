"""The benchmark scripts keep working: each runs at a tiny size (no figure is checked).

``study_overhead`` and ``scaling`` start a local Ray cluster and a real study per setting
(about a minute each on a 2-core machine), so their smoke runs are skipped unless
``MLCLIP_BENCH_STUDY=1``; their wall-clock split is tested here on made-up MLflow
timelines instead, which needs no Ray.
"""

from __future__ import annotations

import json
import os

import pytest

study_smoke = pytest.mark.skipif(
    os.environ.get("MLCLIP_BENCH_STUDY") != "1",
    reason="starts Ray and a real study (about a minute); set MLCLIP_BENCH_STUDY=1 to run",
)


def test_step_tiny(tmp_path):
    from benchmarks import step

    out = step.main(["--tiny", "--json", str(tmp_path / "step.json")])
    assert {r["variant"] for r in out["variants"]} == set(step.VARIANTS)
    assert out["ratios"]["project / bare (goal <= 1.05)"]["cpu"] > 0
    assert out["pieces_ms"]["AdamW step (fused=True)"] > 0
    assert json.loads((tmp_path / "step.json").read_text())["benchmark"] == "step"


def test_data_tiny(tmp_path):
    from benchmarks import data

    out = data.main(["--tiny", "--json", str(tmp_path / "data.json")])
    assert len(out["sources"]) == 8 and all(r["samples_per_s"] > 0 for r in out["sources"])
    assert 0 <= out["training"]["data_wait_share"] < 1
    assert (tmp_path / "data.json").exists()


def test_evaluation_tiny(tmp_path):
    from benchmarks import evaluation

    out = evaluation.main(["--tiny", "--json", str(tmp_path / "evaluation.json")])
    xtd, pool = out["cases"]
    assert xtd["project_s"] > 0 and xtd["matmul_s"] > 0
    assert pool["naive_s"] > 0 and "same metrics" in pool["naive_note"]


def test_naive_and_project_metrics_agree():
    from benchmarks.evaluation import naive_metrics, pool_data, project_pool_metrics

    query, pool, qid, pid = pool_data(500, 100, 16)
    naive = naive_metrics(query, pool, qid, pid, k=10)
    project = project_pool_metrics(query, pool, qid, pid, k=10)
    assert naive == pytest.approx(project, abs=1e-12)


def test_wall_clock_split_adds_up():
    """Made-up timelines of a sequential 2-trial study: the phases add up to the wall-clock."""
    from benchmarks._study import split_wall_clock

    run = {"started": 100.0, "ended": 200.0, "wall_s": 100.0}
    epochs = lambda t0: [  # noqa: E731 - two epochs: reported at t0 + 10 and t0 + 22
        {"reported": t0 + 10, "train_s": 6.0, "eval_s": 2.0, "samples_per_s": 100.0},
        {"reported": t0 + 22, "train_s": 8.0, "eval_s": 3.0, "samples_per_s": 120.0},
    ]
    timelines = [{"start": 115.0, "end": 145.0, "epochs": epochs(120.0)},
                 {"start": 150.0, "end": 185.0, "epochs": epochs(160.0)}]
    split = split_wall_clock(run, parent_start=110.0, timelines=timelines)
    total, first = split["total"], split["trials"][0]
    assert total["inside"] == pytest.approx(38.0)
    assert first["gap"] == pytest.approx(5.0) and first["setup"] == pytest.approx(7.0)  # epoch 1 began at 130 - 8
    assert first["report"] == pytest.approx(1.0 + 3.0)  # between the epochs, and after the last one
    assert split["trials"][1]["gap"] == pytest.approx(5.0)
    assert total["fixed_per_trial"] == pytest.approx(5.0 + 12.0 + 4.0)  # the second trial's
    phases = ("study_start", "gap", "setup", "report", "study_end")
    assert sum(total[p] for p in phases) == pytest.approx(total["outside"])
    assert total["outside"] + total["inside"] == pytest.approx(100.0)


@pytest.mark.slow
@study_smoke
def test_study_overhead_tiny(tmp_path):
    from benchmarks import study_overhead

    out = study_overhead.main(["--tiny", "--json", str(tmp_path / "overhead.json")])
    assert out["settings"][0]["wall"] > out["settings"][0]["inside"] > 0


@pytest.mark.slow
@study_smoke
def test_scaling_tiny(tmp_path):
    from benchmarks import scaling

    out = scaling.main(["--tiny", "--json", str(tmp_path / "scaling.json")])
    assert out["settings"][0]["throughput"] > 0


def test_stream_tiny(tmp_path):
    from benchmarks import stream

    out = stream.main(["--tiny", "--json", str(tmp_path / "stream.json")])
    assert [r["variant"] for r in out["variants"]][0] == "memory, synthetic" and len(out["variants"]) == 4
    assert all(r["steps"] == 4 and r["samples_per_s"] > 0 for r in out["variants"])  # 128 images, batch 32


def test_time_to_quality_tiny():
    from benchmarks import time_to_quality

    rows = time_to_quality.main(["--tiny"])
    assert [(r["candidate"], r["step"]) for r in rows] == [("default", 2), ("default", 4), ("w64", 2), ("w64", 4)]
    assert all(r["train_cpu_s"] > 0 and 0 <= r["map100/multilingual"] <= 1 for r in rows)


def test_tokenizers_tiny():
    from benchmarks import tokenizers

    rows = tokenizers.main(["--tiny"])
    assert [r[1].split()[0] for r in rows] == ["corpus", "openclip_bpe"]


def test_noise_tiny(tmp_path):
    from benchmarks import noise

    out = noise.main(["--tiny", "--out", str(tmp_path / "runs"), "--json", str(tmp_path / "noise.json")])
    assert [(r["ratio"], r["seeds"]) for r in out["per_ratio"]] == [(0.0, 2), (0.5, 2), (1.0, 2)]
    recipe = out["per_recipe"][0]
    assert recipe["steps"] == 4 and recipe["sd_paired"] >= 0 and recipe["se_test"] > 0
    assert recipe["seeds_per_ratio"] >= 2 and recipe["halfwidth"] > 0
    assert out["cpu_budget"] == 1200.0 and out["target"] == 0.02
    n, per_trial = recipe["seeds_for_target"], sum(r["cpu_s"] for r in out["per_ratio"]) / 3
    assert n is None or recipe["cpu_for_target"] == pytest.approx((2 * n + 2) * per_trial)  # ends + 2 interior
    assert len(list((tmp_path / "runs").glob("*.npz"))) == 6  # every run's per-query arrays


def test_the_seeds_a_target_half_width_needs():
    """The fewest paired seeds whose expected t-interval is within the target; none while the test set's
    own noise alone is wider."""
    from scipy import stats

    from benchmarks.noise import seeds_for

    n = seeds_for(0.02, 0.027, 0.0023)
    for m, ok in ((n, True), (n - 1, False)):
        width = stats.t.ppf(0.975, m - 1) * (0.027 ** 2 / m + 0.0023 ** 2) ** 0.5
        assert bool(width <= 0.02) is ok
    assert seeds_for(0.02, 0.0, 0.0) == 2 and seeds_for(0.02, 0.0, 0.011) is None
