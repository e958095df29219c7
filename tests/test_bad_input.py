"""The bad-input catalogue (issues 2, 3, 4 and the safety part of 5): one test per row.

The full table (input, message, exit code) is in ``docs/reliability.md``. Rows that another
test already asserts are not repeated here; that test is named instead:

  issue 2 (trial)
    ratio outside [0, 1] (Python API) .......... test_config.py::test_ratio_outside_unit_interval
    unknown language code (Python API) ......... test_config.py::test_unknown_language_code_named
    batch size vs workers (Python API) ......... test_config.py::test_batch_must_split_evenly_over_workers
    batch sizes a space samples ................ test_study_cli.py::test_batch_sizes_that_do_not_split_over_the_workers
    XTD folder with missing files .............. test_xtd.py::test_missing_names_file, ::test_missing_language_file
    caption files of unequal length ............ test_xtd.py::test_caption_files_of_unequal_length
    unreadable image (skip and count / error) .. test_xtd.py::test_unreadable_image_skipped, ::test_unreadable_image_error
    non-finite loss ............................ test_train_local.py::test_non_finite_loss_stops_and_keeps_last_good_checkpoint,
                                                 test_fault_injection.py::TestTrialFaults::test_a_non_finite_loss_fails_the_trial_with_its_reason
  issue 3 (study command line)
    unknown space / malformed space file ....... test_study_cli.py::test_unknown_space_lists_available_spaces, ::test_malformed_space_file
    space sampling invalid values .............. test_study_cli.py::test_space_sampling_invalid_values
    more workers than the cluster holds ........ test_study_cli.py::test_more_workers_than_the_cluster_can_hold
    unreachable tracking URI ................... test_study_cli.py::test_unreachable_tracking_uri
    storage path not writable .................. test_study_cli.py::test_storage_path_not_writable
    --resume with no study ..................... test_study_cli.py::test_resume_with_nothing_to_resume
  issue 4 (real scale)
    image list not matching the images folder .. test_xtd.py::test_missing_images_are_an_error
    manifest line without captions / unknown language ... test_corpora.py::test_bad_line_is_one_clear_error
    corrupt shard .............................. test_shards.py::test_corrupt_shard_is_one_clear_error
    unknown model / pretrained tag (Python API)  test_model.py::test_unknown_model_name_is_one_clear_error,
                                                 ::test_unknown_pretrained_tag_lists_available_tags
  issue 5 (safety)
    MLflow UI command binds 127.0.0.1 .......... test_study_cli.py::test_mlflow_ui_binds_to_localhost
    cluster.yaml carries no credentials ........ test_cluster.py::test_cluster_yaml_holds_no_credentials

Here: the trial-level rows as they reach ``python -m study.run`` (one ``error:`` line, exit 2,
nothing started), the safety rows, and the rule for paths named by a space file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from study import run as study_run
from study import prepare
from study.preflight import paths as preflight

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("trainables", "study", "search_spaces", "benchmarks") for p in (ROOT / d).rglob("*.py")]
ONE_FIELD = "params: {temperature: {type: loguniform, low: 0.03, high: 0.2}}\n"


def refused(capsys, argv: list[str]) -> str:
    """The one ``error:`` line of ``study.run ARGV --dry-run``, after checking exit code 2."""
    code = study_run.main([*argv, "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert code == study_run.EXIT_BAD_INPUT, err
    assert err.startswith("error: ") and "\n" not in err, err
    return err


# ---------------------------------------------------------------------------
# Trial-level bad input, caught by study.run before anything starts
# ---------------------------------------------------------------------------
CLI_ROWS = [
    pytest.param({"s.yaml": "fixed: {ratio: 1.5}\n" + ONE_FIELD}, ["--space", "s.yaml"],
                 "trial settings (space 'fixed' + command line): ratio=1.5: the monolingual ratio must lie in [0, 1]",
                 id="ratio-outside-0-1"),
    pytest.param({}, ["--set", "train_languages=en,xx"], "train_languages: unknown language code 'xx'; known codes: en,",
                 id="unknown-language"),
    pytest.param({}, ["--set", "batch_size=1", "--workers-per-trial", "2", "--num-cpus", "2"],
                 "batch_size=1 must be at least num_workers=2 and divisible by it", id="batch-smaller-than-workers"),
    pytest.param({}, ["--set", "batch_size=15", "--workers-per-trial", "2", "--num-cpus", "2"],
                 "batch_size=15 must be at least num_workers=2 and divisible by it", id="batch-not-divisible"),
    pytest.param({}, ["--set", "model=ViT-Nope"], "model='ViT-Nope': open_clip does not know this model",
                 id="unknown-model"),
    pytest.param({}, ["--set", "model=ViT-B-32", "--set", "pretrained=no_such_tag"],
                 "pretrained='no_such_tag': no such tag for model 'ViT-B-32'; available: openai,", id="unknown-pretrained-tag"),
    pytest.param({"s.yaml": "params: {model: {type: choice, values: [tiny, ViT-Nope]}}\n"}, ["--space", "s.yaml"],
                 "space 's' samples an invalid trial config (model='ViT-Nope'): model='ViT-Nope': open_clip does not know",
                 id="space-samples-unknown-model"),
    # No cluster at the address: refused at once (Ray itself retries it for minutes).
    pytest.param({}, ["--address", "127.0.0.1:1"], "--address 127.0.0.1:1: no Ray cluster answers at 127.0.0.1:1",
                 id="address-nobody-answers"),
    pytest.param({}, ["--address", "ray://127.0.0.1:1"], "--address ray://127.0.0.1:1: no Ray cluster answers at 127.0.0.1:1",
                 id="ray-client-address-nobody-answers"),
    pytest.param({"not-a-db": "hello, I am text\n"}, ["--tracking-uri", "sqlite:///not-a-db"],
                 "not-a-db is not an SQLite database", id="tracking-file-not-a-database"),
    # Sizes no trial can meet (trainables/memory.py estimates the memory; a lower bound).
    pytest.param({}, ["--set", "batch_size=100000"],
                 "batch_size=100000 is more than the 4000 synthetic training images (synthetic_train_size)",
                 id="batch-larger-than-the-data"),
    pytest.param({}, ["--set", "synthetic_train_size=10", "--set", "batch_size=16"],
                 "batch_size=16 is more than the 10 synthetic training images", id="data-smaller-than-the-batch"),
    pytest.param({}, ["--set", "image_size=100000"], "a trial needs at least 43.4 EiB of memory (1 worker(s), each 43.4 EiB (data 122.8 TiB", id="image-size-beyond-memory"),
    pytest.param({}, ["--set", "synthetic_test_size=100000000"], "a trial needs at least 858.4 GiB of memory (1 worker(s), "
                 "each 858.4 GiB (data 286.1 GiB, evaluation 572.3 GiB", id="test-split-beyond-memory"),
    pytest.param({}, ["--set", "train_languages=[en]"], "train_languages=['en']: with one training language every batch "
                 "is monolingual (a cross-lingual draw can only pick that language), so the ratio that space "
                 "'ratio_only' searches changes nothing", id="one-language-ratio-search"),
]


@pytest.mark.parametrize("files, argv, message", CLI_ROWS)
def test_trial_settings_are_refused_before_the_study_starts(here, capsys, files, argv, message):
    for name, text in files.items():
        (here / name).write_text(text)
    assert message in refused(capsys, argv)
    assert not (here / "ray_results").exists() and not (here / "mlflow.db").exists()  # nothing started


# ---------------------------------------------------------------------------
# Safety: user files are data, never code
# ---------------------------------------------------------------------------
def test_a_python_tag_in_a_space_file_is_rejected_and_not_run(here, capsys):
    marker = here / "pwned"
    (here / "evil.yaml").write_text(f"params: !!python/object/apply:os.system ['touch {marker}']\n")
    err = refused(capsys, ["--space", "evil.yaml"])
    assert "malformed space file" in err and "could not determine a constructor for the tag" in err
    assert "python/object/apply:os.system" in err
    assert not marker.exists()


def test_a_python_tag_in_a_set_value_is_rejected(here, capsys):
    err = refused(capsys, ["--set", "lr=!!python/object/apply:os.getcwd []"])
    assert "--set 'lr=!!python/object/apply:os.getcwd []': unreadable value" in err


class _Payload:
    """Unpickling this runs code: it touches a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_holding_a_pickled_object_is_refused(tmp_path, data_cache):
    from trainables.config import TrialConfig
    from trainables.session import save_checkpoint
    from trainables.train import UnsafeCheckpointError, run_local

    marker = tmp_path / "pwned"
    save_checkpoint({"epoch": 0, "model": {}, "extra": _Payload(marker)}, tmp_path / "ckpt")
    config = TrialConfig(batch_size=16, epochs=1, steps_per_epoch=1, synthetic_train_size=64,
                         synthetic_test_size=20, data_cache=data_cache, eval_k=10)
    with pytest.raises(UnsafeCheckpointError) as err:
        run_local(config, checkpoint_dir=tmp_path / "ckpt")
    message = str(err.value)
    assert "\n" not in message and message.startswith("refusing the checkpoint to resume from: it holds a pickled object")
    assert not marker.exists()


def test_user_files_are_parsed_with_safe_loaders_only():
    """No unsafe YAML loader, pickle, eval or exec in the project; every torch.load is weights_only=True."""
    unsafe = re.compile(r"yaml\.(load|unsafe_load|full_load)\(|yaml\.(Unsafe|Full)?Loader\b|pickle\.loads?\(|"
                        r"(?<![.\w])(eval|exec)\(")
    problems = []
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        problems += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in unsafe.finditer(text)]
        for call in re.finditer(r"torch\.load\(([^()]|\([^()]*\))*\)", text):
            if "weights_only=True" not in call.group(0):
                problems.append(f"{path.relative_to(ROOT)}: {call.group(0)}")
    assert SOURCES and not problems, problems


def test_the_ray_dashboard_binds_to_localhost(monkeypatch):
    import ray

    from study.cluster import start_ray

    seen = {}
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.update(kwargs))
    start_ray(None, 2, {})
    assert seen["dashboard_host"] == "127.0.0.1"


# ---------------------------------------------------------------------------
# Paths named by a space file stay inside its folder (the rule: study.preflight.paths.contain_paths)
# ---------------------------------------------------------------------------
@pytest.fixture
def outside(here) -> Path:
    """A folder next to the space files' folder ``here/spaces``."""
    (here / "spaces").mkdir()
    (here / "elsewhere").mkdir()
    return here / "elsewhere"


@pytest.mark.parametrize("fixed, message", [
    ("eval_data: {outside}", "fixed.eval_data='{outside}': a space file may only name paths inside its own folder"),
    ("data_cache: ~/cache", "fixed.data_cache='~/cache': a space file may only name paths inside its own folder"),
    ("data_cache: ../elsewhere", "fixed.data_cache='../elsewhere' leads by '..' to {outside}, outside the space file's folder"),
    ("eval_data: link", "fixed.eval_data='link' leads through a symlink to {outside}, outside the space file's folder"),
], ids=["absolute", "home", "dotdot", "symlink"])
def test_a_space_file_cannot_point_outside_its_folder(here, capsys, outside, fixed, message):
    (here / "spaces" / "link").symlink_to(outside, target_is_directory=True)
    (here / "spaces" / "s.yaml").write_text(f"fixed: {{{fixed.format(outside=outside)}}}\n" + ONE_FIELD)
    err = refused(capsys, ["--space", "spaces/s.yaml"])
    assert message.format(outside=outside) in err
    assert "give " in err and "on the command line" in err


def test_paths_inside_the_space_folder_resolve_against_it(here, outside):
    (here / "spaces" / "data").mkdir()
    (here / "spaces" / "s.yaml").write_text("fixed: {data_cache: data/cache, eval_data: ./data}\n" + ONE_FIELD)
    space = preflight.load_space("spaces/s.yaml")
    base = prepare.base_config(space, study_run.build_parser().parse_args(["--space", "spaces/s.yaml"]))
    assert base["data_cache"] == str(here / "spaces" / "data" / "cache")
    assert base["eval_data"] == str(here / "spaces" / "data")
    # the same place named on the command line is the user's choice: followed
    args = study_run.build_parser().parse_args(["--space", "spaces/s.yaml", "--eval-data", str(outside)])
    assert prepare.base_config(space, args)["eval_data"] == str(outside)
