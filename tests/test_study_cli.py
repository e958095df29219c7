"""``study.run`` input checks and the study's building blocks, without starting Ray.

Every bad input gives exactly one ``error:`` line on stderr and exit code 2, before anything
starts; the summary pieces (table, best config, Pareto front, CSV, figure) are checked on
hand-made records.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from types import SimpleNamespace

import pytest

from trainables.config import TrialConfig

from study import run as study_run
from study import prepare
from study.preflight import PreflightError
from study.preflight.paths import load_space
from study.cluster import (
    DRIVER_RESOURCE,
    Capacity,
    ClusterError,
    check_trial_fits,
    driver_resources,
    max_concurrent_trials,
)
from study.console import format_table, mlflow_ui_command, resume_command, summarize
from study.report import objectives_of
from study.results import COMPLETED, FAILED, TrialRecord, best_record, pareto_front, table
from study.state import StudyState, load_state, save_state
from study.trial import order_metrics
from trainables.errors import TrialFailed, failure_reason
from trainables.languages import FAMILIES




def _fails(capsys, argv: list[str], match: str) -> str:
    code = study_run.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == study_run.EXIT_BAD_INPUT, err
    assert err.startswith("error: ") and "\n" not in err, err
    assert match in err, err
    return err


# --- bad input: one line, exit 2 ----------------------------------------------------------
def test_unknown_space_lists_available_spaces(here, capsys):
    err = _fails(capsys, ["--space", "nope", "--dry-run"], "unknown space 'nope'")
    assert "ratio_only" in err and "smoke" in err


def test_malformed_space_file(here, capsys):
    (here / "bad.yaml").write_text("params: {ratio: [unclosed\n")
    _fails(capsys, ["--space", "bad.yaml", "--dry-run"], "malformed space file")


def test_space_sampling_invalid_values(here, capsys):
    (here / "wide.yaml").write_text("params: {ratio: {type: uniform, low: 0.0, high: 2.0}}\n")
    _fails(capsys, ["--space", "wide.yaml", "--dry-run"], "samples an invalid trial config")


def test_batch_sizes_that_do_not_split_over_the_workers(here, capsys):
    _fails(capsys, ["--space", "ratio_temperature_batch", "--workers-per-trial", "3", "--num-cpus", "4", "--dry-run"], "batch_size")


def test_more_workers_than_the_cluster_can_hold(here, capsys):
    _fails(capsys, ["--workers-per-trial", "8", "--num-cpus", "2", "--dry-run"], "cluster has 2 CPU")


def test_unreachable_tracking_uri(here, capsys):
    _fails(capsys, ["--tracking-uri", "http://127.0.0.1:9", "--dry-run"], "MLflow tracking URI http://127.0.0.1:9")


def test_tracking_folder_missing(here, capsys):
    _fails(capsys, ["--tracking-uri", "sqlite:///missing/mlflow.db", "--dry-run"], "does not exist")


def test_storage_path_not_writable(here, capsys):
    (here / "afile").write_text("x")
    _fails(capsys, ["--storage-path", str(here / "afile" / "sub"), "--dry-run"], "not writable")


def test_resume_with_nothing_to_resume(here, capsys):
    _fails(capsys, ["--resume", "--name", "ghost"], "nothing to resume")


def test_an_existing_study_is_never_overwritten(here, capsys):
    (here / "ray_results" / "ratio_only").mkdir(parents=True)
    (here / "ray_results" / "ratio_only" / "study.json").write_text("{}")
    _fails(capsys, ["--dry-run"], "--resume")


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--space", "pareto", "--metric", "map100/multilingual"], "multi-objective"),
        (["--space", "pareto", "--scheduler", "asha"], "single objective"),
        (["--metric", "map@100"], "not a valid name"),
        (["--set", "ratio=0.3"], "searched by space"),
        (["--set", "bogus=1"], "not a trial config field"),
        (["--set", "num_workers=2"], "--workers-per-trial"),
        (["--set", "noequals"], "KEY=VALUE"),
        (["--set", "lr=-1"], "lr"),
        (["--num-samples", "0"], "positive"),
        (["--name", "../escape"], "study name"),
        (["--trial-fn", "no_such_module:fit"], "unrecognized arguments: --trial-fn"),  # no hidden test flag
        (["--cpus-per-worker", "-1"], ">= 0"),
    ],
)
def test_other_bad_flags(here, capsys, argv, match):
    _fails(capsys, [*argv, "--dry-run"], match)


# --- good input ------------------------------------------------------------------------------
def test_dry_run_prints_the_plan(here, capsys):
    assert study_run.main(["--dry-run", "--num-cpus", "2"]) == 0
    out = capsys.readouterr().out
    assert "Study ratio_only" in out and "map100/multilingual (max)" in out and "dry run" in out
    assert f"sqlite:///{here / 'mlflow.db'}" in out  # the relative default, made absolute


def test_list_spaces(capsys):
    assert study_run.main(["--list-spaces"]) == 0
    assert {"ratio_only", "pareto", "smoke"} <= set(capsys.readouterr().out.split())


def test_help_explains_every_flag():
    out = subprocess.run([sys.executable, "-m", "study.run", "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--space", "--num-samples", "--max-concurrent", "--workers-per-trial", "--gpus-per-worker", "--epochs",
                 "--metric", "--mode", "--name", "--storage-path", "--tracking-uri", "--resume", "--seed",
                 "--train-data", "--eval-data", "--address", "--scheduler"):
        assert flag in out


def test_base_config_layers_defaults_space_and_flags(here):
    args = study_run.build_parser().parse_args(
        ["--epochs", "2", "--seed", "7", "--set", "lr=1e-3", "--eval-data", "xtd", "--workers-per-trial", "2"]
    )
    space = load_space("ratio_only")
    (here / "xtd").mkdir()
    base = prepare.base_config(space, args)
    assert "ratio" not in base  # searched: Tune supplies it
    assert base["epochs"] == 2 and base["seed"] == 7 and base["lr"] == pytest.approx(1e-3) and base["num_workers"] == 2
    assert base["eval_data"] == str(here / "xtd")  # relative data paths become absolute
    assert base["mode"] == space.fixed["mode"] and base["synthetic_train_size"] == TrialConfig().synthetic_train_size


def test_seed_flag_does_not_override_a_searched_seed(here):
    args = study_run.build_parser().parse_args(["--seed", "5"])
    base = prepare.base_config(load_space("ratio_grid"), args)
    assert "seed" not in base


# --- cluster accounting ----------------------------------------------------------------------
def test_concurrency_comes_from_the_cluster():
    two_cpus = Capacity(2, 0, 2, 0, driver_slots=1000)
    assert max_concurrent_trials(two_cpus, 1, 1.0, 0.0) == 2
    assert max_concurrent_trials(two_cpus, 2, 1.0, 0.0) == 1
    assert max_concurrent_trials(two_cpus, 1, 1.0, 0.0, requested=1) == 1
    assert max_concurrent_trials(Capacity(16, 4, 16, 4, 1000), 2, 1.0, 1.0) == 2
    # without the driver resource the driver's token CPU is counted: 2 x (1 + 0.01) > 2
    assert max_concurrent_trials(Capacity(2, 0, 2, 0, driver_slots=0), 1, 1.0, 0.0) == 1


def test_the_driver_never_holds_a_worker_cpu():
    assert driver_resources(Capacity(2, 0, 2, 0, 1000)) == {"cpu": 0, DRIVER_RESOURCE: 1}
    assert driver_resources(Capacity(2, 0, 2, 0, 0))["cpu"] < 0.1


def test_a_trial_that_can_never_be_placed():
    with pytest.raises(ClusterError, match="GPU"):
        check_trial_fits(Capacity(8, 0, 8, 0), 1, 1.0, 1.0)
    with pytest.raises(ClusterError, match="largest node"):
        check_trial_fits(Capacity(8, 0, 4, 0), 1, 6.0, 0.0)


# --- the answer ----------------------------------------------------------------------------------
def _record(trial_id, ratio, value, bias, seed=0, status=COMPLETED, reason=None):
    metrics = {f"map100/multilingual/family/{f}": value + i * 0.01 for i, f in enumerate(FAMILIES)}
    metrics.update({"map100/multilingual": value, "bias/multilingual": bias})
    params = {"ratio": ratio, "temperature": 0.07, "batch_size": 64, "seed": seed, "epochs": 2}
    return TrialRecord(trial_id, status, params, metrics if status != FAILED else {}, 2, reason)


def test_best_and_pareto_front():
    records = [_record("a", 0.0, 0.30, 5.0), _record("b", 0.5, 0.40, 9.0), _record("c", 1.0, 0.20, 2.0),
               _record("d", 0.7, 0.10, 8.0), _record("e", 0.2, 0.0, 0.0, status=FAILED, reason="boom")]
    assert best_record(records, "map100/multilingual", "max").trial_id == "b"
    assert best_record(records, "bias/multilingual", "min").trial_id == "c"
    objectives = [{"metric": "map100/multilingual", "mode": "max"}, {"metric": "bias/multilingual", "mode": "min"}]
    assert [r.trial_id for r in pareto_front(records, objectives)] == ["b", "a", "c"]


def test_table_has_settings_families_target_and_bias():
    headers, rows = table([_record("a", 0.0, 0.3, 5.0), _record("f", 0.5, 0, 0, status=FAILED, reason="nan loss")])
    assert headers[:4] == ["trial", "ratio", "temperature", "batch_size"]
    assert headers[4:4 + len(FAMILIES)] == list(FAMILIES)
    assert headers[-3:] == ["multilingual", "bias", "status"]
    assert rows[1][-1] == "failed: nan loss" and rows[1][-2] == "-"
    text = format_table(headers, rows)
    assert len(text.splitlines()) == 4


def test_seed_column_appears_when_seeds_vary():
    headers, _ = table([_record("a", 0.0, 0.3, 5.0, seed=0), _record("b", 0.0, 0.32, 5.0, seed=1)])
    assert "seed" in headers


def test_summary_writes_csv_figure_and_best_config(tmp_path):
    records = [_record("a", 0.0, 0.3, 5.0, seed=0), _record("b", 0.0, 0.34, 4.0, seed=1),
               _record("c", 0.5, 0.4, 3.0), _record("d", 1.0, 0.1, 1.0, status=FAILED, reason="OOM")]
    summary = summarize(records, [{"metric": "map100/multilingual", "mode": "max"}], tmp_path, "t")
    names = {p.name for p in summary.files}
    assert {"trials.csv", "map100_by_family_vs_ratio.png", "best_config.json"} <= names
    assert summary.best.trial_id == "c"
    assert "Failed trials:" in summary.text and "d: OOM" in summary.text
    with open(tmp_path / "trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["trial_id"] for r in rows] == ["a", "b", "c", "d"] and rows[3]["reason"] == "OOM"
    assert (tmp_path / "map100_by_family_vs_ratio.png").stat().st_size > 1000


def test_mlflow_ui_binds_to_localhost():
    assert "--host 127.0.0.1" in mlflow_ui_command("sqlite:////x/mlflow.db")


def test_objectives_are_read_back_from_the_parent_run():
    parent = SimpleNamespace(data=SimpleNamespace(params={"objectives": "map100/multilingual:max;bias/multilingual:min"}))
    assert objectives_of(parent) == [
        {"metric": "map100/multilingual", "mode": "max"}, {"metric": "bias/multilingual", "mode": "min"},
    ]


# --- small pieces ---------------------------------------------------------------------------------
def test_failure_reason_is_one_line():
    assert failure_reason(TrialFailed("FloatingPointError: non-finite loss")) == "FloatingPointError: non-finite loss"
    nested = RuntimeError("Traceback (most recent call last):\n  File x\nValueError: bad image 7\n")
    assert failure_reason(nested) == "ValueError: bad image 7"
    assert "\n" not in failure_reason(RuntimeError("a\nb"))


def test_a_stopped_study_names_tunes_cause_and_keeps_the_traceback(tmp_path):
    from ray.tune.error import TuneError

    from study.execute import save_traceback

    try:  # how Tune wraps a failure in its own failure handling: the cause is the text's last line
        try:
            open(tmp_path / "missing" / "error.pkl", "wb")
        except OSError:
            import traceback
            raise TuneError(traceback.format_exc()) from None
    except TuneError as err:
        caught = err
    assert failure_reason(caught).startswith("FileNotFoundError: [Errno 2]")
    saved = save_traceback(caught, tmp_path / "out")
    assert saved == tmp_path / "out" / "study_error.txt"
    assert "FileNotFoundError" in saved.read_text() and "TuneError" in saved.read_text()
    (tmp_path / "file").write_text("")
    assert save_traceback(caught, tmp_path / "file") is None  # no folder to write into: the line alone


def test_epochs_without_the_objective_are_not_forwarded_to_tune(monkeypatch):
    from ray.tune.integration.ray_train import TuneReportCallback

    from study.trial import OrderedTuneReportCallback

    forwarded = []
    monkeypatch.setattr(TuneReportCallback, "after_report", lambda self, ctx, metrics, ckpt: forwarded.append(metrics[0]))
    callback = object.__new__(OrderedTuneReportCallback)  # no Tune session here
    callback._first, callback._required = ("m",), ("m",)
    callback.after_report(None, [{"epoch": 1.0, "train/loss": 2.0}], None)  # no evaluation this epoch
    callback.after_report(None, [{"epoch": 2.0, "train/loss": 1.0, "m": 0.5}], None)
    assert forwarded == [{"m": 0.5, "epoch": 2.0, "train/loss": 1.0}]
    assert list(forwarded[0])[0] == "m"


def test_metrics_are_ordered_for_the_progress_table():
    assert list(order_metrics({"a": 1, "b": 2, "c": 3}, ("c", "x", "a"))) == ["c", "a", "b"]


def test_study_state_round_trips(tmp_path):
    state = StudyState(
        name="s", storage_path=str(tmp_path), space={"name": "smoke", "source": "x", "raw": {}}, base_config={"epochs": 1},
        objectives=[{"metric": "map100/multilingual", "mode": "max"}], num_samples=2, num_trials=2, max_concurrent=2,
        workers_per_trial=1, cpus_per_worker=1.0, gpus_per_worker=0.0, scheduler="fifo", seed=0, max_failures=1,
        tracking_uri="sqlite:////x.db", output_dir=str(tmp_path / "o"),
        experiment_id="1", parent_run_id="abc",
    )
    save_state(state)
    again = load_state(str(tmp_path), "s")
    assert again == state and again.experiment_path == f"{tmp_path}/s" and not again.multi_objective
    assert load_state(str(tmp_path), "other") is None
    assert "--resume --name s" in resume_command(state) and "--address" not in resume_command(state)
    assert resume_command(state, "auto").endswith(" --address auto")


def test_missing_local_eval_data_fails_before_anything_starts(tmp_path):
    """A local --eval-data that does not exist is one error line (exit 2), not N failed trials."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "study.run", "--space", "smoke", "--eval-data", str(tmp_path / "nope"),
         "--storage-path", str(tmp_path / "st"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--dry-run"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"--eval-data {tmp_path / 'nope'}: no such file or folder" in proc.stderr
    assert not (tmp_path / "st").exists()


def test_missing_local_shards_fail_before_anything_starts(tmp_path):
    """--train-data shards are expanded as the trial would expand them; no match is one error line."""
    import subprocess
    import sys

    pattern = str(tmp_path / "shards" / "train-{0000..0003}.tar")
    proc = subprocess.run(
        [sys.executable, "-m", "study.run", "--space", "smoke", "--train-data", pattern,
         "--eval-data", str(tmp_path), "--storage-path", str(tmp_path / "st"),
         "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--dry-run"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"--train-data {pattern}: shard not found: {tmp_path / 'shards' / 'train-0000.tar'}" in proc.stderr
    assert not (tmp_path / "st").exists()


def test_asha_runs_to_the_most_epochs_a_searched_epochs_allows(here):
    """A searched ``epochs`` is not in the base config; ASHA's horizon is its largest value (was 1)."""
    from study.spaces import parse_space
    from study.tuning import build_scheduler

    space = parse_space({"search": {"algorithm": "optuna", "num_samples": 2},
                         "params": {"ratio": {"type": "uniform", "low": 0.0, "high": 1.0},
                                    "epochs": {"type": "int", "low": 2, "high": 9}}}, name="e", source="e.yaml")
    args = study_run.build_parser().parse_args(["--scheduler", "asha"])
    base = prepare.base_config(space, args)
    assert "epochs" not in base
    state = StudyState(
        name="e", storage_path=str(here), space={"name": "e", "source": "e.yaml", "raw": {}}, base_config=base,
        objectives=[{"metric": "map100/multilingual", "mode": "max"}], num_samples=2, num_trials=2, max_concurrent=1,
        workers_per_trial=1, cpus_per_worker=1.0, gpus_per_worker=0.0, scheduler="asha", seed=0, max_failures=1,
        tracking_uri="sqlite:////x.db", output_dir=str(here / "o"),
    )
    assert build_scheduler(state, space)._max_t == 9
    fixed = parse_space({"search": {"algorithm": "optuna", "num_samples": 2}, "fixed": {"epochs": 4},
                         "params": {"ratio": {"type": "uniform", "low": 0.0, "high": 1.0}}}, name="f", source="f.yaml")
    state.base_config = prepare.base_config(fixed, args)
    assert build_scheduler(state, fixed)._max_t == 4
    # the first rung at 40% of the epochs, where the default recipe's ranks hold (5 epochs: after epoch 2)
    state.base_config = {**state.base_config, "epochs": 5}
    assert sorted(m for m, _ in build_scheduler(state, fixed)._brackets[0]._rungs) == [2, 4]


def test_a_resumed_space_resolves_its_paths_beside_its_file_again(here):
    """The saved space is re-parsed on --resume; its relative paths resolve beside the space file, as at
    the start (they were left relative, and a trial would have read them from its own folder)."""
    (here / "spaces").mkdir()
    for name in ("xtd_a", "xtd_b"):
        (here / "spaces" / name).mkdir()
    (here / "spaces" / "two.yaml").write_text(
        "search: {algorithm: grid}\nparams:\n  eval_data: {type: grid, values: [xtd_a, xtd_b]}\n")
    first = study_run.build_parser().parse_args(["--space", "spaces/two.yaml", "--name", "two"])
    state, space = prepare.prepare_new(first)
    expected = [str((here / "spaces" / n).resolve()) for n in ("xtd_a", "xtd_b")]
    assert list(space.params[0].values) == expected
    save_state(state)
    again = study_run.build_parser().parse_args(["--resume", "--name", "two"])
    _, resumed = prepare.prepare_resume(again)
    assert list(resumed.params[0].values) == expected


def test_a_study_resumes_only_with_the_trial_function_it_started_with(here):
    """``study.run.main(fit=...)`` records the fit (``module:name``); a resume with another is refused
    (a plain ``python -m study.run --resume`` of a stand-in study would otherwise train for real)."""
    from tests.standins import DirectStandIn

    assert prepare.fit_name(study_run.fit_trial) == "trainables.driver:fit_trial"
    assert prepare.fit_name(DirectStandIn()) == "tests.standins:DirectStandIn"
    state, _ = prepare.prepare_new(study_run.build_parser().parse_args(["--name", "f"]), "tests.standins:DirectStandIn")
    save_state(state)
    resume = study_run.build_parser().parse_args(["--resume", "--name", "f"])
    with pytest.raises(PreflightError, match="runs the trial function tests.standins:DirectStandIn, not "
                                                   "trainables.driver:fit_trial; resume it with the same one"):
        prepare.prepare_resume(resume)
    assert prepare.prepare_resume(resume, "tests.standins:DirectStandIn")[0].fit == "tests.standins:DirectStandIn"
