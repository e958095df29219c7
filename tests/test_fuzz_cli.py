"""A bounded fuzz pass over the study CLI and the space parser (issue 12, item 5), with hypothesis.

Random ``--set`` values, random other flags and random space files (structured YAML, raw
text, and mutations of the shipped spaces) go through ``python -m study.run ... --dry-run``
in-process. Every case must give exit 0, or exit 2 with exactly one ``error:`` line; never
an exception escaping ``main`` (a traceback for the user), never a hang (each case runs
under a SIGALRM timeout), and never anything created in its folder (no storage folder, no
MLflow database, no output folder) whatever the outcome. ``--dry-run`` starts no Ray.

The cases are random (new ones on every run; hypothesis prints how to reproduce a failure).
The pass is bounded twice: at most ``FUZZ_EXAMPLES`` cases per test (env
``MLCLIP_FUZZ_EXAMPLES``; 2,000 in all by default), and at most ``BUDGET_S`` seconds of cases
per test (50 s in all, after a warm-up run that pays the imports), after which the remaining examples are drawn but not run; so a loaded
machine runs fewer cases, never a longer pass. The last test prints the count.

What the first runs (about 30,000 cases) found, each now fixed and refused with one line:

1. ``--set model=3`` (or a list, or null): AttributeError deep in the model check; no str
   field of TrialConfig had its type checked.
2. ``--set lock_image=1.5``: accepted; no bool field had its type checked.
3. ``--set data_cache=714``: TypeError in the data-cache check.
4. ``--train-data`` of 300 characters: OSError (file name too long) from ``Path.is_dir``.
5. ``--train-data '{'``: braceexpand's UnbalancedBracesError.
6. ``--storage-path 'a<NUL>b'``: ValueError (embedded null byte) from ``Path.resolve``.
7. A NUL through YAML's ``"\0"`` escape in a space file's path or a ``--set`` string: the same.
8. A newline inside a user's value (``--eval-data 'a<LF>b'``): a two-line error.
9. A malformed flag (``--epochs two``): argparse's usage block plus its message, not one line.

A later pass found one more: ``--set train_languages={0}`` (a YAML mapping whose key is a
number) reached the language table as an int (AttributeError); TrialConfig now refuses any
train_languages that is not language codes.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
import traceback
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search_spaces import available_spaces, space_file
from study import run as study_run
from study.spaces import PARAM_TYPES
from trainables.config import TrialConfig

CASE_TIMEOUT_S = 20.0  # far above a case's ~0.1 s: only a hang reaches it
BUDGET_S = {"set": 6.0, "flags": 6.0, "space": 9.0, "space-text": 4.0, "sizes": 4.0}  # seconds of cases per test
FUZZ_EXAMPLES = int(os.environ.get("MLCLIP_FUZZ_EXAMPLES", "500"))
FIELDS = sorted(TrialConfig.__dataclass_fields__)
COUNTS: dict[str, int] = {}
_STARTED: dict[str, float] = {}


class Hang(Exception):
    """A case ran past CASE_TIMEOUT_S."""


def _on_alarm(signum, frame):  # noqa: ARG001
    raise Hang()


def check_case(capsys, kind: str, argv: list[str], files: dict[str, str | bytes] | None = None) -> None:
    """Run ``study.run ARGV --dry-run`` in a fresh folder holding ``files``; assert the CLI contract."""
    if kind in _STARTED and time.monotonic() - _STARTED[kind] > BUDGET_S[kind]:
        return  # this test's time is spent: the example is drawn, not run
    COUNTS[kind] = COUNTS.get(kind, 0) + 1
    with tempfile.TemporaryDirectory(prefix="fuzz-") as folder:
        work = Path(folder)
        for name, data in (files or {}).items():
            (work / name).write_bytes(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
        before = sorted(p.name for p in work.rglob("*"))
        # the case's own flags come last: they override these defaults
        full = ["--dry-run", "--storage-path", str(work / "st"), "--tracking-uri", f"sqlite:///{work}/m.db",
                "--output-dir", str(work / "out"), *argv]
        cwd = os.getcwd()
        os.chdir(work)
        previous = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, CASE_TIMEOUT_S)
        try:
            code = study_run.main(full)
        except Hang:
            pytest.fail(f"hang: {full!r}")
        except BaseException:  # noqa: BLE001 - anything escaping main is a traceback for the user
            pytest.fail(f"escaped main: {full!r}\n{traceback.format_exc()}")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            os.chdir(cwd)
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err, (full, out, err)
        assert code in (0, 2), (full, code, out, err)
        if code == 2:
            assert err.startswith("error: ") and err.count("\n") == 1, (full, err)
        after = sorted(p.name for p in work.rglob("*"))
        assert after == before, (full, "created", set(after) - set(before))
    _STARTED.setdefault(kind, time.monotonic())  # the clock starts after the first case


@pytest.fixture(scope="module", autouse=True)
def warm(tmp_path_factory):
    """One accepted dry run first: it pays the imports (torch, open_clip, Ray's process scan) outside the budgets."""
    folder = tmp_path_factory.mktemp("warm")
    assert study_run.main(["--space", "smoke", "--dry-run", "--storage-path", str(folder / "st"),
                           "--tracking-uri", f"sqlite:///{folder}/m.db", "--output-dir", str(folder / "out")]) == 0


# ---------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------
TRICKY = [
    "", " ", "\t", "~", "null", "true", "no", "yes", ".nan", ".inf", "-.inf", "1e309", "-0", "0x10", "0o17", "1_000",
    "2**32", "4294967296", "99999999999999999999", "-1", "0", "1", "1.5", "'1'", '"x"', "[1, 2]", "{a: 1}", "[]", "{}",
    "&a [*a]", "!!binary aGVsbG8=", "!!timestamp 2001-12-14", "!!set {a, b}", "!!float nan", "!!int 3",
    "!!python/object/apply:os.getcwd []", "synthetic", "tiny", "ViT-B-32", "RN50", "/", "/proc/x", "../x", "a\x00b",
    "x" * 300, "map100/multilingual", "per_batch", "stream", "en,de", "en,xx", "jp", "ü", "\u2028", "%s", "{0}",
    '"a\\0b"', '"\\n"', "{", "a{1..3}", "{0000..0003}.tar", "*.tar", "x::y", "hf-hub:x", "local-dir:/x",
]
scalar_text = st.one_of(
    st.sampled_from(TRICKY),
    st.text(max_size=12),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
set_items = st.lists(
    st.tuples(st.sampled_from([*FIELDS, "num_workers", "use_gpu", "bogus", "", " ratio"]), scalar_text),
    min_size=1, max_size=3,
)
number_text = st.one_of(st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1e400", "2.5", "x", ""]),
                        st.floats(allow_nan=True).map(repr), st.integers(-(2**70), 2**70).map(str))
flags = st.lists(st.one_of(
    st.tuples(st.sampled_from(["--cpus-per-worker", "--gpus-per-worker"]), number_text),
    st.tuples(st.sampled_from(["--seed", "--epochs", "--num-samples", "--max-concurrent", "--max-failures",
                               "--workers-per-trial", "--num-cpus"]), number_text),
    st.tuples(st.sampled_from(["--name", "--metric", "--space", "--train-data", "--eval-data", "--images-dir",
                               "--storage-path", "--output-dir", "--tracking-uri"]),
              st.one_of(st.sampled_from([*TRICKY, "sqlite:///x/" + "y" * 300, "sqlite:///m.db?mode=ro", "s3://",
                                         "file:///", "http://127.0.0.1:1", "x" * 5000]),
                        st.text(max_size=20))),
    st.tuples(st.sampled_from(["--mode", "--scheduler"]), st.sampled_from(["max", "min", "fifo", "asha", "x"])),
), max_size=4)

yaml_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10), st.sampled_from(["tiny", "per_batch", "map100/multilingual", "max", "min", "synthetic",
                                           "optuna", "grid", "../x", "/abs", "~/x", "en", "xx", "a\x00b", "{"]),
)
def mostly(strategy):
    """``strategy`` about three times in four, else any YAML scalar."""
    return st.integers(0, 3).flatmap(lambda i: strategy if i else yaml_scalar)


range_spec = st.fixed_dictionaries(
    {"type": st.sampled_from(["uniform", "loguniform", "int"])},
    optional={"low": st.one_of(st.integers(-3, 300), st.floats(-1, 2), yaml_scalar),
              "high": st.one_of(st.integers(-3, 300), st.floats(-1, 2), yaml_scalar)},
)
list_spec = st.fixed_dictionaries(
    {"type": st.sampled_from(["choice", "grid"])},
    optional={"values": st.one_of(st.lists(yaml_scalar, max_size=4), st.lists(st.integers(-3, 300), max_size=4))},
)
param_spec = st.one_of(range_spec, list_spec, yaml_scalar, st.fixed_dictionaries({}, optional={
    "type": st.one_of(st.sampled_from([*PARAM_TYPES, "bogus"]), yaml_scalar),
    "low": yaml_scalar, "high": yaml_scalar,
    "values": st.one_of(st.lists(yaml_scalar, max_size=4), yaml_scalar),
}))
objective = mostly(st.fixed_dictionaries({}, optional={
    "metric": st.one_of(st.sampled_from(["map100/multilingual", "bias/multilingual", "map10/x", "train/loss",
                                         "recall5/monolingual/family/slavic", "map100/crosslingual/pair/en-xx"]),
                        yaml_scalar),
    "mode": st.one_of(st.sampled_from(["max", "min"]), yaml_scalar),
}))
search = mostly(st.fixed_dictionaries({}, optional={
    "algorithm": st.one_of(st.sampled_from(["optuna", "grid"]), yaml_scalar),
    "num_samples": st.one_of(st.integers(-1, 5), yaml_scalar),
    "n_startup_trials": st.one_of(st.integers(-1, 5), yaml_scalar),
    "multivariate": yaml_scalar,
    "initial_points": st.one_of(st.lists(st.dictionaries(st.sampled_from(["ratio", "lr", "x"]), yaml_scalar,
                                                          max_size=2), max_size=2), yaml_scalar),
    "objectives": st.one_of(st.lists(objective, max_size=3), yaml_scalar),
    "seeds": st.one_of(st.lists(st.one_of(st.integers(-1, 2**33), yaml_scalar), max_size=3), yaml_scalar),
}))
field_names = st.sampled_from([*FIELDS, "bogus", "num_workers"])
space_doc = mostly(st.fixed_dictionaries(
    {"params": mostly(st.dictionaries(field_names, param_spec, min_size=1, max_size=3))},
    optional={
        "description": yaml_scalar,
        "search": search,
        "fixed": mostly(st.dictionaries(field_names, yaml_scalar, max_size=4)),
    },
))
# Near-valid spaces reach the deeper checks (sampled configs, model limits, metric names, seeds).
plausible = st.one_of(st.integers(-2, 300), st.floats(-1, 2), st.sampled_from([
    True, False, None, "tiny", "ViT-B-32", "per_batch", "within_batch", "uniform", "size", "redraw", "error", "auto",
    "fp32", "bf16", "skip", "memory", "stream", "corpus", "openclip_bpe", "synthetic", "en,de", ["en", "jp"], "0.5",
    "1e-3", 4294967296, "data/x", "../x",
]))
near_valid_space = st.fixed_dictionaries({
    "search": st.fixed_dictionaries({"algorithm": st.sampled_from(["optuna", "grid"])}, optional={
        "num_samples": st.integers(1, 3),
        "objectives": st.lists(objective, min_size=1, max_size=2),
        "seeds": st.lists(st.integers(0, 5), min_size=1, max_size=2, unique=True),
    }),
    "fixed": st.dictionaries(st.sampled_from(FIELDS), plausible, max_size=2),
    "params": st.dictionaries(
        st.sampled_from([f for f in FIELDS if f not in ("num_workers", "use_gpu")]),
        st.one_of(st.fixed_dictionaries({"type": st.sampled_from(["uniform", "loguniform", "int"]),
                                         "low": plausible, "high": plausible}),
                  st.fixed_dictionaries({"type": st.sampled_from(["choice", "grid"]),
                                         "values": st.lists(plausible, min_size=1, max_size=3)})),
        min_size=1, max_size=2),
})
shipped = [space_file(name).read_text() for name in available_spaces()]


@st.composite
def mutated_space(draw) -> str:
    """A shipped space file with a few characters deleted, replaced or inserted."""
    text = draw(st.sampled_from(shipped))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 3))
        text = text[:at] + draw(st.sampled_from(["", ":", "-", " ", "\n", "{", "[", "'", "1e9", "nan", "x"])) + text[at + cut:]
    return text


FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ---------------------------------------------------------------------------
# the pass
# ---------------------------------------------------------------------------
@FUZZ
@given(items=set_items)
def test_random_set_values(here, capsys, items):
    argv = ["--space", "smoke"]
    for key, value in items:
        argv += ["--set", f"{key}={value}"]
    check_case(capsys, "set", argv)


@FUZZ
@given(extra=flags, items=st.lists(st.tuples(st.sampled_from(FIELDS), scalar_text), max_size=1))
def test_random_flags(here, capsys, extra, items):
    argv = [part for pair in extra for part in pair]
    argv = argv if "--space" in argv else ["--space", "smoke", *argv]
    for key, value in items:
        argv += ["--set", f"{key}={value}"]
    check_case(capsys, "flags", argv)


@settings(FUZZ, max_examples=FUZZ_EXAMPLES * 3 // 2)
@given(doc=st.one_of(space_doc, near_valid_space))
def test_random_space_yaml(here, capsys, doc):
    text = yaml.safe_dump(doc, allow_unicode=True)
    check_case(capsys, "space", ["--space", "fuzz.yaml"], {"fuzz.yaml": text})


@settings(FUZZ, max_examples=FUZZ_EXAMPLES // 2)
@given(text=st.one_of(mutated_space(), st.text(max_size=200)))
def test_mutated_and_raw_space_text(here, capsys, text):
    check_case(capsys, "space-text", ["--space", "fuzz.yaml"], {"fuzz.yaml": text})


# Sizes across magnitudes reach the size checks and the memory estimate (trainables/memory.py).
SIZE_FIELDS = ("image_size", "synthetic_train_size", "synthetic_test_size", "batch_size", "eval_k",
               "intermediate_eval_images", "steps_per_epoch")
size_value = st.one_of(st.integers(-3, 2**64), st.integers(1, 4096), st.sampled_from([8, 16, 31, 32, 33, 10**9, 2**31]))


@FUZZ
@given(items=st.lists(st.tuples(st.sampled_from(SIZE_FIELDS), size_value), min_size=1, max_size=4),
       workers=st.sampled_from([None, "1", "2"]))
def test_random_sizes(here, capsys, items, workers):
    argv = ["--space", "smoke", *(["--workers-per-trial", workers, "--num-cpus", "2"] if workers else [])]
    for key, value in items:
        argv += ["--set", f"{key}={value}"]
    check_case(capsys, "sizes", argv)


def test_zz_report_fuzz_counts(capsys):
    """Prints how many cases ran (pytest -s shows it); runs last in this module."""
    with capsys.disabled():
        print(f"\nfuzz cases run: {COUNTS} = {sum(COUNTS.values())}")
    assert sum(COUNTS.values()) >= min(100, 4 * FUZZ_EXAMPLES), COUNTS  # the pass did run
