"""Search spaces: every shipped space validates; bad spaces fail with one clear message."""

from __future__ import annotations

import textwrap

import pytest

from search_spaces import available_spaces
from study.preflight.configs import build_trial_config, validate_space
from study.preflight.paths import load_space
from study.spaces import SpaceError, parse_space, validation_points
from trainables.config import TrialConfig

EXPECTED = {"ratio_only", "ratio_temperature_batch", "ratio_grid", "pareto", "smoke"}


def _base(space, **overrides) -> dict:
    base = {**TrialConfig().to_dict(), **space.fixed, **overrides}
    return {k: v for k, v in base.items() if k not in space.param_names}


def _write(tmp_path, text: str, name: str = "mine.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_the_registry_ships_the_issue_spaces():
    assert EXPECTED <= set(available_spaces())


@pytest.mark.parametrize("name", sorted(available_spaces()))
def test_every_space_validates(name):
    space = load_space(name)
    checked = validate_space(space, _base(space))
    assert checked >= (len(space.grid_points()) if space.algorithm == "grid" else 64)
    for objective in space.objectives:
        assert "@" not in objective.metric


@pytest.mark.parametrize("name", sorted(available_spaces()))
def test_every_space_converts_to_a_tune_param_space(name):
    space = load_space(name)
    param_space = space.tune_param_space()
    assert set(param_space) == set(space.param_names)


def test_ratio_grid_is_every_ratio_times_every_seed():
    space = load_space("ratio_grid")
    points = space.grid_points()
    assert space.algorithm == "grid"
    assert {p["ratio"] for p in points} == {0.0, 0.25, 0.5, 0.75, 1.0}
    assert len(points) == 5 * len({p["seed"] for p in points}) and len({p["seed"] for p in points}) >= 2
    assert space.num_trials() == len(points) * space.num_samples


def test_pareto_is_multi_objective_max_map_min_bias():
    space = load_space("pareto")
    assert space.multi_objective
    assert [(o.metric, o.mode) for o in space.objectives] == [
        ("map100/multilingual", "max"),
        ("bias/multilingual", "min"),
    ]


def test_ratio_only_searches_only_the_ratio_starting_at_both_ends():
    space = load_space("ratio_only")
    assert space.param_names == ("ratio",)
    assert space.params[0].low == 0.0 and space.params[0].high == 1.0
    assert {p["ratio"] for p in space.initial_points} == {0.0, 1.0}


def test_smoke_is_tiny():
    space = load_space("smoke")
    config = build_trial_config(_base(space), {"ratio": 0.5})
    assert config.epochs == 1 and config.synthetic_test_size <= 200 and space.num_trials() == 2


def test_unknown_space_lists_the_available_ones():
    with pytest.raises(SpaceError) as err:
        load_space("no_such_space")
    message = str(err.value)
    assert "no_such_space" in message and "ratio_only" in message and "\n" not in message


def test_a_users_file_is_loaded_by_path(tmp_path):
    path = _write(tmp_path, """
        search: {algorithm: optuna, num_samples: 3}
        fixed: {epochs: 2, lr: 1e-3}
        params:
          ratio: {type: uniform, low: 0.2, high: 0.8}
    """)
    space = load_space(str(path))
    assert space.name == "mine" and space.num_samples == 3
    assert space.fixed["lr"] == pytest.approx(1e-3)  # YAML reads 1e-3 as a string; coerced
    validate_space(space, _base(space))


def test_a_missing_file_is_one_clear_error(tmp_path):
    with pytest.raises(SpaceError, match="does not exist"):
        load_space(str(tmp_path / "nope.yaml"))


@pytest.mark.parametrize(
    "text, match",
    [
        ("params: [unclosed", "malformed space file"),
        ("- just\n- a list\n", "must hold a mapping"),
        ("params: {}\n", "params is empty"),
        ("params: {ratio: {type: uniform, low: 0, high: 1}}\nextra: 1\n", "unknown key"),
        ("params: {not_a_field: {type: uniform, low: 0, high: 1}}\n", "not a TrialConfig field"),
        ("params: {num_workers: {type: choice, values: [1, 2]}}\n", "command line"),
        ("params: {ratio: {type: normal, low: 0, high: 1}}\n", "type='normal'"),
        ("params: {ratio: {type: uniform, low: 1, high: 0}}\n", "low <= high"),
        ("params: {temperature: {type: loguniform, low: 0, high: 1}}\n", "low > 0"),
        ("params: {ratio: {type: choice, values: []}}\n", "non-empty list"),
        ("search: {algorithm: grid}\nparams: {ratio: {type: uniform, low: 0, high: 1}}\n", "grid space allows grid"),
        ("search: {algorithm: hyperopt}\nparams: {ratio: {type: uniform, low: 0, high: 1}}\n", "search.algorithm"),
        ("search: {num_samples: 0}\nparams: {ratio: {type: uniform, low: 0, high: 1}}\n", "num_samples"),
        ("search: {objectives: [{metric: map@100, mode: max}]}\nparams: {ratio: {type: uniform, low: 0, high: 1}}\n", "not a valid name"),
        ("search: {objectives: [{metric: x, mode: up}]}\nparams: {ratio: {type: uniform, low: 0, high: 1}}\n", "mode"),
        ("fixed: {ratio: 0.5}\nparams: {ratio: {type: uniform, low: 0, high: 1}}\n", "both fixed and searched"),
        ("fixed: {bogus: 1}\nparams: {ratio: {type: uniform, low: 0, high: 1}}\n", "unknown TrialConfig field"),
        ("search: {initial_points: [{ratio: 2.0}]}\nparams: {ratio: {type: uniform, low: 0, high: 1}}\n", "outside"),
        ("search: {initial_points: [{lr: 0.1}]}\nparams: {ratio: {type: uniform, low: 0, high: 1}}\n", "must set exactly"),
        ("search: {algorithm: grid, initial_points: [{ratio: 0}]}\nparams: {ratio: {type: grid, values: [0]}}\n", "grid space"),
    ],
)
def test_malformed_spaces_fail_with_one_line(tmp_path, text, match):
    path = _write(tmp_path, text)
    with pytest.raises(SpaceError, match=match) as err:
        load_space(str(path))
    assert "\n" not in str(err.value)


def test_a_space_that_samples_invalid_values_is_rejected(tmp_path):
    path = _write(tmp_path, "params: {ratio: {type: uniform, low: 0.5, high: 1.5}}\n")
    space = load_space(str(path))
    with pytest.raises(SpaceError, match="ratio=1.5"):
        validate_space(space, _base(space))


def test_batch_sizes_must_split_over_the_workers():
    space = load_space("ratio_temperature_batch")
    validate_space(space, _base(space, num_workers=2))
    with pytest.raises(SpaceError, match="batch_size"):
        validate_space(space, _base(space, num_workers=3))


def test_validation_points_cover_bounds_and_every_choice():
    space = load_space("ratio_temperature_batch")
    points = validation_points(space, n_samples=5)
    assert {0.0, 1.0} <= {p["ratio"] for p in points}
    assert {32, 64, 128} <= {p["batch_size"] for p in points}
    temps = [p["temperature"] for p in points]
    assert min(temps) == pytest.approx(0.01) and max(temps) == pytest.approx(0.2)


def test_int_params_are_inclusive_and_grid_order_is_stable():
    data = {"search": {"algorithm": "grid"}, "params": {"seed": {"type": "grid", "values": [1, 2]},
                                                      "ratio": {"type": "grid", "values": [0.0, 1.0]}}}
    space = parse_space(data, name="g", source="test")
    assert space.grid_points() == [
        {"seed": 1, "ratio": 0.0}, {"seed": 1, "ratio": 1.0}, {"seed": 2, "ratio": 0.0}, {"seed": 2, "ratio": 1.0},
    ]
    ints = parse_space({"params": {"epochs": {"type": "int", "low": 1, "high": 3}}}, name="i", source="test")
    import random

    rng = random.Random(0)
    assert {ints.params[0].sample(rng) for _ in range(200)} == {1, 2, 3}


def test_space_files_are_data_not_code(tmp_path):
    path = _write(tmp_path, "params: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(SpaceError, match="malformed"):
        load_space(str(path))
