"""Hostile input (issue 12): every input the CLI can check is refused before Ray starts.

Each row runs ``python -m study.run`` in-process WITHOUT ``--dry-run``, with Ray's start
replaced by a failure: the exit code must be 2, stderr exactly one ``error:`` line (asserted
whole, or its fixed start where it names many things), and nothing created: no storage
folder, no MLflow database, no output folder. The XTD rows assert the very line the trial's
loader would raise. Rows of the bad-input table (docs/reliability.md) that other tests already hold are
not repeated (test_bad_input.py, test_study_cli.py); the two concurrency rows are in
test_study_lock.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from study import run as study_run
from study import prepare
from trainables.data import DataError
from trainables.languages import LANGUAGES

N_IMAGES = 3


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    """Starting Ray fails the test: every row must be refused before."""
    import study.cluster

    def start_ray(*args, **kwargs):
        raise AssertionError("Ray was started for an input that should have been refused")

    monkeypatch.setattr(study.cluster, "start_ray", start_ray)


def run_cli(capsys, here: Path, argv: list[str]) -> str:
    """The one ``error:`` line of ``study.run ARGV`` (exit 2 asserted) after checking nothing was created."""
    before = set(here.iterdir())
    code = study_run.main(argv)
    out, err = capsys.readouterr()
    assert code == study_run.EXIT_BAD_INPUT, out + err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in out + err, err
    assert set(here.iterdir()) == before, "a refused input created something"
    return err.rstrip("\n")


def write_xtd_folder(folder: Path) -> Path:
    """A valid 3-image XTD folder (11 caption files, PNG images)."""
    from PIL import Image

    from trainables.data.xtd import NAMES_FILE, caption_file_name

    (folder / "images").mkdir(parents=True)
    names = [f"img{i}.png" for i in range(N_IMAGES)]
    for name in names:
        Image.new("RGB", (8, 8)).save(folder / "images" / name)
    (folder / NAMES_FILE).write_text("".join(f"{n}\n" for n in names))
    for lang in LANGUAGES:
        (folder / caption_file_name(lang)).write_text("".join(f"caption {i} in {lang}\n" for i in range(N_IMAGES)))
    return folder


def _one_line_fewer(folder: Path) -> None:
    path = folder / "test_1kcaptions_fr.txt"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))


def _latin1(folder: Path) -> None:
    (folder / "test_1kcaptions_de.txt").write_bytes("".join(f"Größe {i}\n" for i in range(N_IMAGES)).encode("latin-1"))


def _dotdot_name(folder: Path) -> None:
    (folder / "test_image_names.txt").write_text("../img0.png\nimg1.png\nimg2.png\n")


def _loader_error(folder: Path) -> str:
    """What the trial's own XTD loader says about ``folder`` (the line the CLI must repeat)."""
    from trainables.data.xtd import load_xtd

    with pytest.raises(DataError) as err:
        load_xtd(folder)
    return f"error: {err.value}"


# ---------------------------------------------------------------------------
# the table, plus the preflight list (resources, name, seed, folders, metric, model limits)
# ---------------------------------------------------------------------------
ROWS = [
    # (id, argv, the whole error line, or its start when it ends with "...")
    ("cpus-per-worker-nan", ["--cpus-per-worker", "nan"],
     "error: --cpus-per-worker nan: resources per worker must be a finite number >= 0"),
    ("cpus-per-worker-inf", ["--cpus-per-worker", "inf"],
     "error: --cpus-per-worker inf: resources per worker must be a finite number >= 0"),
    ("gpus-per-worker-negative", ["--gpus-per-worker", "-0.5"],
     "error: --gpus-per-worker -0.5: resources per worker must be a finite number >= 0"),
    ("gpus-per-worker-nan", ["--gpus-per-worker", "NaN"],
     "error: --gpus-per-worker nan: resources per worker must be a finite number >= 0"),
    ("name-300-characters", ["--name", "a" * 300],
     f"error: study name of 300 characters ({'a' * 24}...): at most 100 (it names the state folder and the MLflow experiment)"),
    ("name-with-a-slash", ["--name", "a/b"],
     "error: study name 'a/b': use letters, digits, '_', '-', '.' (starting with a letter or digit)"),
    ("name-with-a-space", ["--name", "a b"],
     "error: study name 'a b': use letters, digits, '_', '-', '.' (starting with a letter or digit)"),
    ("name-empty", ["--name", ""], "error: --name '': empty study name; give one, or leave the flag out"),
    ("seed-too-large", ["--seed", "99999999999999999999"],
     "error: --seed 99999999999999999999: must lie in [0, 2**32 - 1] (it seeds Optuna's sampler and the trials)"),
    ("seed-negative", ["--seed", "-1"],
     "error: --seed -1: must lie in [0, 2**32 - 1] (it seeds Optuna's sampler and the trials)"),
    ("set-seed-too-large", ["--set", "seed=4294967296"],
     "error: trial settings (space 'fixed' + command line): seed=4294967296: must be an integer in [0, 2**32 - 1]"),
    ("metric-unknown", ["--metric", "map100/nope"],
     "error: --metric: metric 'map100/nope' is not reported by the trials with eval_k=100; known: map100/multilingual, "
     "map100/monolingual, map100/crosslingual, recall10/multilingual, ..."),
    ("metric-short-name-of-another-eval-k", ["--metric", "multi", "--set", "eval_k=10"],
     "error: --metric: metric 'multi' is not reported by the trials with eval_k=10; known: map10/multilingual, ..."),
    ("metric-of-another-eval-k", ["--metric", "map100/multilingual", "--set", "eval_k=10"],
     "error: --metric: metric 'map100/multilingual' is not reported by the trials with eval_k=10; known: ..."),
    ("image-size-below-one-patch", ["--set", "image_size=4"],
     "error: trial settings (space 'fixed' + command line): image_size=4: model 'tiny' takes images of at least 8 px "
     "(one 8 px patch of its vision tower)"),
    ("image-size-below-a-vit-b-32-patch", ["--set", "model=ViT-B-32", "--set", "image_size=16"],
     "error: trial settings (space 'fixed' + command line): image_size=16: model 'ViT-B-32' takes images of at least "
     "32 px (one 32 px patch of its vision tower)"),
    ("context-length-of-a-model-with-its-own-tokenizer",
     ["--set", "model=ViT-B-32", "--set", "image_size=224", "--set", "context_length=100"],
     "error: trial settings (space 'fixed' + command line): context_length=100: model 'ViT-B-32' reads 77 text tokens "
     "with its own tokenizer; leave context_length unset"),
    ("data-cache-not-writable", ["--set", "data_cache=/proc/x"],
     "error: data_cache /proc/x is not writable: cannot create a folder in /proc ..."),
    ("batch-size-a-bool", ["--set", "batch_size=true"],
     "error: trial settings (space 'fixed' + command line): batch_size=True: must be a positive integer"),
    ("model-a-number", ["--set", "model=3"],
     "error: trial settings (space 'fixed' + command line): model=3: must be a string"),
    ("bool-field-a-number", ["--set", "lock_image=1.5"],
     "error: trial settings (space 'fixed' + command line): lock_image=1.5: must be true or false"),
    ("nul-in-a-set-string", ["--set", 'hf_text_model="a\\0b"'],
     "error: trial settings (space 'fixed' + command line): hf_text_model='a\\x00b': holds a NUL character"),
    ("hf-hub-model-not-cached-offline", ["--set", "model=hf-hub:nobody/no-model"],
     "error: trial settings (space 'fixed' + command line): model='hf-hub:nobody/no-model': open_clip_config.json "
     "of nobody/no-model is not in the Hugging Face cache and HF_HUB_OFFLINE is set; download the model first "
     "(hf download nobody/no-model)"),
    ("hf-hub-model-not-a-repo-id", ["--set", "model=hf-hub:a b"],
     "error: trial settings (space 'fixed' + command line): model='hf-hub:a b': not a Hugging Face repository id ..."),
    ("local-dir-model-without-config", ["--set", "model=local-dir:nowhere"],
     "error: trial settings (space 'fixed' + command line): model='local-dir:nowhere': no open_clip_config.json in nowhere"),
    ("nul-in-a-flag", ["--storage-path", "a\x00b"], "error: --storage-path 'a\\x00b': holds a NUL character"),
    ("newline-in-a-path", ["--eval-data", "a\nb"], "error: --eval-data {here}/a\\nb: no such file or folder"),
    ("space-empty", ["--space", ""], "error: --space '': empty space name; give one, or leave the flag out"),
    ("a-bad-flag-value", ["--epochs", "two"], "error: argument --epochs: invalid int value: 'two' (see --help)"),
]


@pytest.mark.parametrize("argv, expected", [pytest.param(a, e, id=i) for i, a, e in ROWS])
def test_refused_before_ray_starts(here, capsys, argv, expected):
    line = run_cli(capsys, here, ["--space", "smoke", *argv] if "--space" not in argv else argv)
    expected = expected.replace("{here}", str(here))
    if expected.endswith("..."):
        assert line.startswith(expected[:-3]), line
    else:
        assert line == expected


def test_a_cached_hf_hub_model_config_is_checked_offline(here, capsys, monkeypatch):
    """An hf-hub: model's config is read from the local Hugging Face cache (never downloaded), so its
    limits are checked before Ray starts, as a registry model's are."""
    import json

    from huggingface_hub import constants

    snapshot = here / "hub" / "models--org--clip" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (here / "hub" / "models--org--clip" / "refs").mkdir()
    (here / "hub" / "models--org--clip" / "refs" / "main").write_text("abc")
    vit = {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32}
    (snapshot / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"embed_dim": 512, "vision_cfg": vit}}))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(here / "hub"))
    line = run_cli(capsys, here, ["--space", "smoke", "--set", "model=hf-hub:org/clip", "--set", "image_size=16"])
    assert line == ("error: trial settings (space 'fixed' + command line): image_size=16: model 'hf-hub:org/clip' "
                    "takes images of at least 32 px (one 32 px patch of its vision tower)")


def test_an_output_dir_that_is_a_file(here, capsys):
    (here / "results.csv").write_text("x")
    line = run_cli(capsys, here, ["--space", "smoke", "--output-dir", "results.csv"])
    assert line == f"error: --output-dir {here / 'results.csv'} is a file, not a folder (the study writes its table and figure there)"


def test_an_output_dir_below_a_file(here, capsys):
    (here / "afile").write_text("x")
    line = run_cli(capsys, here, ["--space", "smoke", "--output-dir", "afile/out"])
    assert line == f"error: output folder {here / 'afile' / 'out'} is not writable: {here / 'afile'} is a file, not a folder"


def test_a_short_name_from_the_registry_is_a_known_metric(here, capsys):
    assert study_run.main(["--space", "smoke", "--metric", "multi/sinitic", "--dry-run"]) == 0
    assert "target multi/sinitic (max)" in capsys.readouterr().out


def test_a_space_file_objective_is_checked_too(here, capsys):
    (here / "s.yaml").write_text("search: {objectives: [{metric: map100/multilingal}]}\n"
                                 "params: {ratio: {type: uniform, low: 0, high: 1}}\n")
    line = run_cli(capsys, here, ["--space", "s.yaml"])
    assert line.startswith("error: space 's': metric 'map100/multilingal' is not reported by the trials")
    assert line.endswith("did you mean map100/multilingual?")


def test_space_seeds_beyond_32_bits(here, capsys):
    (here / "s.yaml").write_text("search: {seeds: [0, 4294967296]}\nparams: {ratio: {type: uniform, low: 0, high: 1}}\n")
    line = run_cli(capsys, here, ["--space", "s.yaml"])
    assert line == (f"error: space 's' ({here / 's.yaml'}): search.seeds=[0, 4294967296]: "
                    "must be a list of integers in [0, 2**32 - 1], or a mapping with min, max, target_halfwidth, "
                    "max_trials, max_minutes")


@pytest.mark.parametrize("break_it", [_one_line_fewer, _latin1, _dotdot_name],
                         ids=["caption-file-one-line-short", "caption-file-latin-1", "image-name-with-dotdot"])
def test_a_broken_xtd_folder_gives_the_loaders_own_line(here, capsys, break_it):
    folder = write_xtd_folder(here / "xtd")
    break_it(folder)
    expected = _loader_error(folder)
    assert run_cli(capsys, here, ["--space", "smoke", "--eval-data", "xtd"]) == expected


def test_a_sound_xtd_folder_passes(here, capsys):
    write_xtd_folder(here / "xtd")
    assert study_run.main(["--space", "smoke", "--eval-data", "xtd", "--dry-run"]) == 0
    assert "eval=" + str(here / "xtd") in capsys.readouterr().out


def test_a_resume_checks_its_data_again(here, capsys):
    """A study whose XTD folder broke after it started is refused on --resume, not failed trial by trial."""
    from study.state import save_state

    folder = write_xtd_folder(here / "xtd")
    args = study_run.build_parser().parse_args(["--space", "smoke", "--eval-data", "xtd"])
    state, _ = prepare.prepare_new(args)
    state.parent_run_id = "p"
    save_state(state)
    _one_line_fewer(folder)
    assert run_cli(capsys, here, ["--resume", "--name", "smoke"]) == _loader_error(folder)


# ---------------------------------------------------------------------------
# the metric registry is what a trial reports
# ---------------------------------------------------------------------------
def test_the_known_metrics_are_what_a_real_trial_reports(tiny_config):
    """Every name a real (tiny, local) trial reports at its evaluated epoch is known; every known one is reported."""
    from study.preflight.metrics import known_metrics
    from trainables.train import run_local

    config = tiny_config.replace(epochs=1, steps_per_epoch=1, eval_k=10)
    reported = set(run_local(config)[-1])
    evaluation = {n for n in reported if n.startswith(("map", "recall", "bias/"))}
    assert evaluation <= set(known_metrics(10)) <= reported


RACED = ("search: {seeds: {min: 2, max: 6, target_halfwidth: 0.02, max_trials: 8}, num_samples: 3}\n"
         "params: {ratio: {type: uniform, low: 0, high: 1}}\n")


@pytest.mark.parametrize("space_text, flags, expected", [
    (RACED, ["--scheduler", "asha"], "--scheduler asha with raced seeds (space 's'): early stopping would race the "
     "seeds on cut-short trials; use the default fifo scheduler"),
    (RACED.replace("{min: 2, max: 6, target_halfwidth: 0.02, max_trials: 8}", "[0, 1]"), ["--scheduler", "asha"],
     "--scheduler asha with seeds (space 's'): early stopping keeps the seeds that look good early, so each ratio's "
     "mean would be of survivors; use the default fifo scheduler"),
    (RACED, ["--num-samples", "5"], "search.seeds.max_trials=8 is below min=2 seeds x 5 candidates = 10 (--num-samples 5)"),
    (RACED.replace("min: 2, max: 6", "min: 7, max: 6"), [], "search.seeds: min=7 > max=6"),
    (RACED.replace("target_halfwidth: 0.02", "target_halfwidth: 0"), [], "search.seeds.target_halfwidth=0: must be a positive number"),
    (RACED.replace("max_trials: 8", "max_trials: 5"), [], "search.seeds.max_trials=5 is below min=2 seeds x 3 candidates = 6"),
], ids=["asha", "asha-with-listed-seeds", "budget-below-min-with-num-samples", "min-above-max", "target-zero", "budget-below-min"])
def test_raced_seeds_that_cannot_work_are_one_line(here, capsys, space_text, flags, expected):
    (here / "s.yaml").write_text(space_text)
    line = run_cli(capsys, here, ["--space", "s.yaml", *flags])
    assert line.startswith("error: ") and line.endswith(expected), line
