"""Search spaces as data: parse, validate and convert the YAML files of ``search_spaces/``.

A space file (parsed with ``yaml.safe_load``; nothing in it is evaluated) has four sections::

    description: one line
    search:
      algorithm: optuna | grid
      num_samples: 8            # trials (optuna) or repeats of the whole grid (grid)
      n_startup_trials: 4       # optuna only: random trials before TPE kicks in
      multivariate: false       # optuna only
      initial_points:           # optuna only: tried first, in order (e.g. the ends of a range)
        - {ratio: 0.0}
      seeds: [0, 1, 2]          # every candidate (proposal or grid point) is trained once per seed;
                                # Optuna learns from the seeds' mean. Or raced (study.race):
                                # {min: 2, max: 10, target_halfwidth: 0.01, max_trials: 40, max_minutes: 9}
      objectives:               # one (single objective) or several (multi-objective)
        - {metric: map100/multilingual, mode: max}
    fixed:                      # TrialConfig fields shared by every trial
      epochs: 6
    params:                     # TrialConfig fields that are searched
      ratio: {type: uniform, low: 0.0, high: 1.0}

Parameter types: ``uniform`` and ``loguniform`` (``low``, ``high``), ``int`` (``low``,
``high``, both inclusive), ``choice`` (``values``) for Optuna spaces; ``grid`` (``values``)
for grid spaces.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from search_spaces import available_spaces, space_file
from study.race import SeedPlan
from trainables.config import TrialConfig, is_seed
from trainables.metric_names import TARGET_METRIC

ALGORITHMS = ("optuna", "grid")
PARAM_TYPES = ("uniform", "loguniform", "int", "choice", "grid")
MODES = ("max", "min")
DEFAULT_OBJECTIVE = {"metric": TARGET_METRIC, "mode": "max"}
# Fields that describe the trial's resources; the CLI owns them, a space may not search them.
RESOURCE_FIELDS = ("num_workers", "use_gpu")
_METRIC_NAME = re.compile(r"^[/\w.\- :]+$")
_FIELD_TYPES = {f.name: str(f.type) for f in fields(TrialConfig)}


class SpaceError(ValueError):
    """A space name, file or content is unusable. The message is one line."""


@dataclass(frozen=True)
class Param:
    """One searched TrialConfig field."""

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    values: tuple = ()

    def tune_domain(self) -> Any:
        """The Ray Tune domain (or grid) of this parameter."""
        from ray import tune

        if self.type == "uniform":
            return tune.uniform(self.low, self.high)
        if self.type == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.type == "int":
            return tune.randint(self.low, self.high + 1)  # Tune's upper bound is exclusive
        if self.type == "choice":
            return tune.choice(list(self.values))
        return tune.grid_search(list(self.values))

    def corner_values(self) -> list:
        """Values that must all be valid: the bounds of a range, every listed value."""
        if self.type in ("choice", "grid"):
            return list(self.values)
        return [self.low, self.high]

    def sample(self, rng: random.Random) -> Any:
        """One random value (as Optuna/Tune would draw it)."""
        if self.type == "uniform":
            return rng.uniform(self.low, self.high)
        if self.type == "loguniform":
            return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        if self.type == "int":
            return rng.randint(self.low, self.high)
        return rng.choice(list(self.values))

    def allows(self, value: Any) -> bool:
        """Whether ``value`` lies in this parameter's range or list."""
        if self.type in ("choice", "grid"):
            return value in self.values
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.type == "int" and not float(value).is_integer():
            return False
        return self.low <= value <= self.high

    def describe(self) -> str:
        """Short human form, e.g. ``uniform(0.0, 1.0)``."""
        if self.type in ("choice", "grid"):
            return f"{self.type}{list(self.values)}"
        return f"{self.type}({self.low}, {self.high})"


@dataclass(frozen=True)
class Objective:
    """A metric the study optimises and its direction."""

    metric: str
    mode: str


@dataclass(frozen=True)
class SearchSpace:
    """A parsed, structurally checked search space."""

    name: str
    source: str
    description: str
    algorithm: str
    num_samples: int
    objectives: tuple[Objective, ...]
    fixed: dict = field(default_factory=dict)
    params: tuple[Param, ...] = ()
    n_startup_trials: int = 10
    multivariate: bool = False
    initial_points: tuple = ()
    seeds: tuple = ()  # every candidate takes these seeds in order (study.race)
    seed_min: int = 0  # seeds every candidate gets first (0: all of them, equal allocation)
    target_halfwidth: float | None = None  # raced seeds: the precision the allocation aims at (a goal, not a stop)
    max_trials: int | None = None  # raced seeds: the trial budget
    max_minutes: float | None = None  # raced seeds: the wall-clock budget
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def multi_objective(self) -> bool:
        """True when the space has more than one objective (a Pareto study)."""
        return len(self.objectives) > 1

    @property
    def param_names(self) -> tuple[str, ...]:
        """Names of the searched fields, in file order."""
        return tuple(p.name for p in self.params)

    def tune_param_space(self) -> dict:
        """The ``param_space`` for ``tune.Tuner`` (only the searched fields)."""
        return {p.name: p.tune_domain() for p in self.params}

    def grid_points(self) -> list[dict]:
        """Every point of a grid space (one repeat), in Tune's order (last param fastest)."""
        points: list[dict] = [{}]
        for param in reversed(self.params):
            points = [{param.name: v, **pt} for v in param.values for pt in points]
        return points

    def num_candidates(self, num_samples: int | None = None) -> int:
        """Proposals (Optuna) or grid points x repeats (grid)."""
        repeats = num_samples or self.num_samples
        return len(self.grid_points()) * repeats if self.algorithm == "grid" else repeats

    def num_trials(self, num_samples: int | None = None) -> int:
        """The most trials the study runs (``num_samples`` overrides the space's: proposals or grid
        repeats); a race of seeds may stop before (study.race)."""
        trials = self.num_candidates(num_samples) * max(1, len(self.seeds))
        return min(trials, self.max_trials) if self.max_trials else trials

    def check_seed_budget(self, num_samples: int | None = None) -> None:
        """Raced seeds: the trial budget must give every candidate its first ``min`` seeds (SpaceError)."""
        if self.max_trials is None or not self.seed_min:
            return
        need = self.seed_min * self.num_candidates(num_samples)
        if self.max_trials < need:
            raise SpaceError(f"space {self.name!r} ({self.source}): search.seeds.max_trials={self.max_trials} is below "
                             f"min={self.seed_min} seeds x {self.num_candidates(num_samples)} candidates = {need}")

    def seed_plan(self, confidence: float = 0.95) -> SeedPlan:
        """How the study spends its seeds (:class:`study.race.SeedPlan`)."""
        return SeedPlan(seeds=self.seeds, min_seeds=self.seed_min or len(self.seeds),
                        target_halfwidth=self.target_halfwidth, max_trials=self.max_trials,
                        max_minutes=self.max_minutes, confidence=confidence)


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------
def resolve_space_path(name_or_path: str) -> Path:
    """Map a registry name or a file path to the space file, or raise SpaceError."""
    looks_like_path = name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path or "\\" in name_or_path
    if not looks_like_path:
        path = space_file(name_or_path)
        if path is None:
            raise SpaceError(
                f"unknown space {name_or_path!r}; available spaces: {', '.join(available_spaces())} "
                "(or pass a path to a .yaml file)"
            )
        return path
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise SpaceError(f"space file {name_or_path} does not exist (or is not a file)")
    return path.resolve()


def read_space(name_or_path: str) -> SearchSpace:
    """Read and structurally check the space ``name_or_path`` (registry name or YAML file).

    The paths it names are taken as written; :func:`study.preflight.paths.load_space` (what a study
    uses) also resolves them inside the file's folder."""
    path = resolve_space_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise SpaceError(f"cannot read space file {path}: {err}") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpaceError(f"malformed space file {path}{at}: {problem}") from None
    return parse_space(data, name=path.stem, source=str(path))


def parse_space(data: Any, *, name: str, source: str) -> SearchSpace:
    """Build a :class:`SearchSpace` from parsed YAML, raising SpaceError on any problem."""
    where = f"space {name!r} ({source})"
    if not isinstance(data, dict):
        raise SpaceError(f"malformed {where}: the file must hold a mapping with search/fixed/params sections")
    _only_keys(data, ("description", "search", "fixed", "params"), where)
    search = _mapping(data.get("search", {}), f"{where}: search")
    _only_keys(
        search,
        ("algorithm", "num_samples", "n_startup_trials", "multivariate", "initial_points", "objectives", "seeds"),
        f"{where}: search",
    )
    algorithm = search.get("algorithm", "optuna")
    if algorithm not in ALGORITHMS:
        raise SpaceError(f"{where}: search.algorithm={algorithm!r}; must be one of {', '.join(ALGORITHMS)}")
    fixed = _parse_fixed(_mapping(data.get("fixed", {}), f"{where}: fixed"), where)
    params = tuple(
        _parse_param(key, spec, algorithm, where) for key, spec in _mapping(data.get("params", {}), f"{where}: params").items()
    )
    if not params:
        raise SpaceError(f"{where}: params is empty; a space must search at least one field")
    overlap = sorted(set(fixed) & {p.name for p in params})
    if overlap:
        raise SpaceError(f"{where}: {', '.join(overlap)} both fixed and searched")
    objectives = _parse_objectives(search.get("objectives", [DEFAULT_OBJECTIVE]), where)
    seeds = _parse_seeds(search.get("seeds"), algorithm, len(objectives), fixed, params, where)
    num_samples = _positive_int(search.get("num_samples", 1), f"{where}: search.num_samples")
    if algorithm == "grid" and seeds and num_samples != 1:
        raise SpaceError(f"{where}: search.num_samples={num_samples}: a grid with search.seeds runs each point "
                         "once per seed; leave num_samples at 1")
    space = SearchSpace(
        name=name,
        source=source,
        description=str(data.get("description", "")).strip(),
        algorithm=algorithm,
        num_samples=num_samples,
        objectives=objectives,
        fixed=fixed,
        params=params,
        n_startup_trials=_positive_int(search.get("n_startup_trials", 10), f"{where}: search.n_startup_trials"),
        multivariate=bool(search.get("multivariate", False)),
        initial_points=_parse_initial_points(search.get("initial_points"), params, algorithm, where),
        **seeds,
        raw=data,
    )
    space.check_seed_budget()
    return space


SEED_RACE_KEYS = ("min", "max", "target_halfwidth", "max_trials", "max_minutes")


def _parse_seeds(value: Any, algorithm: str, n_objectives: int, fixed: dict, params: tuple, where: str) -> dict:
    """``search.seeds``, as :class:`SearchSpace` fields (single-objective spaces only).

    A list: distinct integers in [0, 2**32 - 1], every candidate trains with each (equal
    allocation). A mapping ``{min, max, target_halfwidth, max_trials, max_minutes}``: seeds
    0..max-1, every candidate first gets ``min``, the rest are raced (:mod:`study.race`).
    """
    if value is None:
        return {}
    at = f"{where}: search.seeds"
    if n_objectives > 1:
        raise SpaceError(f"{at}: repeats average one objective; a multi-objective space takes no seeds")
    if "seed" in fixed or any(p.name == "seed" for p in params):
        raise SpaceError(f"{at}: seed is also fixed or searched; give it in one place")
    if isinstance(value, dict):
        return _parse_seed_race(value, at)
    if (not isinstance(value, list) or not value
            or not all(map(is_seed, value))):
        raise SpaceError(f"{at}={value!r}: must be a list of integers in [0, 2**32 - 1], or a mapping "
                         f"with {', '.join(SEED_RACE_KEYS)}")
    if len(set(value)) != len(value):
        raise SpaceError(f"{at}={value!r}: seeds must be distinct")
    return {"seeds": tuple(value)}


def _parse_seed_race(value: dict, at: str) -> dict:
    """The mapping form of ``search.seeds``: raced seeds (checks that need no other setting)."""
    _only_keys(value, SEED_RACE_KEYS, at)
    for key in ("min", "max", "target_halfwidth"):
        if key not in value:
            raise SpaceError(f"{at}: {key} is missing (raced seeds take {', '.join(SEED_RACE_KEYS[:3])}; "
                             f"optionally {', '.join(SEED_RACE_KEYS[3:])})")
    low = _positive_int(value["min"], f"{at}.min")
    high = _positive_int(value["max"], f"{at}.max")
    if low < 2:
        raise SpaceError(f"{at}.min={low}: at least 2 seeds per candidate (one seed has no spread to race on)")
    if high < low:
        raise SpaceError(f"{at}: min={low} > max={high}")
    if high > 1000:
        raise SpaceError(f"{at}.max={high}: at most 1000 seeds per candidate")
    target = _number(value["target_halfwidth"], f"{at}.target_halfwidth")
    if not math.isfinite(target) or target <= 0:
        raise SpaceError(f"{at}.target_halfwidth={target!r}: must be a positive number")
    budget = value.get("max_trials")
    if budget is not None:
        budget = _positive_int(budget, f"{at}.max_trials")
    minutes = value.get("max_minutes")
    if minutes is not None:
        minutes = _number(minutes, f"{at}.max_minutes")
        if not math.isfinite(minutes) or minutes <= 0:
            raise SpaceError(f"{at}.max_minutes={minutes!r}: must be a positive number")
    return {"seeds": tuple(range(high)), "seed_min": low, "target_halfwidth": float(target),
            "max_trials": budget, "max_minutes": float(minutes) if minutes is not None else None}


def _only_keys(mapping: dict, allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(str(k) for k in mapping if k not in allowed)
    if unknown:
        raise SpaceError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpaceError(f"{where} must be a mapping, got {type(value).__name__}")
    return value


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpaceError(f"{where}={value!r}: must be a positive integer")
    return value


def _number(value: Any, where: str) -> float | int:
    """Accept ints/floats and numeric strings (YAML reads ``1e-3`` as a string)."""
    if isinstance(value, bool):
        raise SpaceError(f"{where}={value!r}: must be a number")
    if isinstance(value, (int, float)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SpaceError(f"{where}={value!r}: must be a number") from None


def _parse_fixed(fixed: dict, where: str) -> dict:
    """Check field names and coerce numeric strings of float fields (``lr: 1e-3``)."""
    unknown = sorted(str(k) for k in fixed if k not in _FIELD_TYPES)
    if unknown:
        raise SpaceError(f"{where}: fixed: unknown TrialConfig field(s) {', '.join(unknown)}")
    return coerce_config_values(fixed, f"{where}: fixed")


def coerce_config_values(fixed: dict, where: str) -> dict:
    """Numeric strings of float fields become floats (YAML 1.1 reads ``1e-3`` as a string)."""
    out = {}
    for key, value in fixed.items():
        if _FIELD_TYPES.get(key) == "float" and isinstance(value, str):
            value = _number(value, f"{where}.{key}")
        out[key] = value
    return out


def _parse_param(name: Any, spec: Any, algorithm: str, where: str) -> Param:
    """Parse one ``params`` entry."""
    at = f"{where}: params.{name}"
    if name not in _FIELD_TYPES:
        raise SpaceError(f"{at}: not a TrialConfig field")
    if name in RESOURCE_FIELDS:
        raise SpaceError(f"{at}: resources are set on the command line (--workers-per-trial, --gpus-per-worker)")
    spec = _mapping(spec, at)
    kind = spec.get("type")
    allowed = ("grid",) if algorithm == "grid" else ("uniform", "loguniform", "int", "choice")
    if kind not in allowed:
        raise SpaceError(f"{at}: type={kind!r}; a {algorithm} space allows {', '.join(allowed)}")
    if kind in ("choice", "grid"):
        _only_keys(spec, ("type", "values"), at)
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise SpaceError(f"{at}: values must be a non-empty list")
        if _FIELD_TYPES[name] == "float":
            values = [_number(v, f"{at}.values") for v in values]
        return Param(name, kind, values=tuple(values))
    _only_keys(spec, ("type", "low", "high"), at)
    low, high = _number(spec.get("low"), f"{at}.low"), _number(spec.get("high"), f"{at}.high")
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise SpaceError(f"{at}: needs finite low <= high, got low={low}, high={high}")
    if kind == "loguniform" and low <= 0:
        raise SpaceError(f"{at}: loguniform needs low > 0, got {low}")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise SpaceError(f"{at}: int bounds must be integers, got {low}, {high}")
    if kind == "int":
        low, high = int(low), int(high)
    return Param(name, kind, low=low, high=high)


def _parse_initial_points(value: Any, params: tuple, algorithm: str, where: str) -> tuple:
    """Points Optuna tries first: each sets every searched field to a value its range allows."""
    if value is None:
        return ()
    at = f"{where}: search.initial_points"
    if algorithm == "grid":
        raise SpaceError(f"{at}: a grid space tries every point anyway")
    if not isinstance(value, list):
        raise SpaceError(f"{at} must be a list of {{field: value}} mappings")
    names = {p.name: p for p in params}
    points = []
    for point in value:
        point = coerce_config_values(_mapping(point, at), at)
        if set(point) != set(names):
            raise SpaceError(f"{at}: each point must set exactly {', '.join(names)}; got {', '.join(map(str, point))}")
        for key, val in point.items():
            if not names[key].allows(val):
                raise SpaceError(f"{at}: {key}={val!r} is outside {names[key].describe()}")
        points.append(point)
    return tuple(points)


def _parse_objectives(value: Any, where: str) -> tuple[Objective, ...]:
    if not isinstance(value, list) or not value:
        raise SpaceError(f"{where}: search.objectives must be a non-empty list of {{metric, mode}}")
    out = []
    for item in value:
        item = _mapping(item, f"{where}: search.objectives")
        _only_keys(item, ("metric", "mode"), f"{where}: search.objectives")
        out.append(make_objective(item.get("metric"), item.get("mode", "max"), where))
    if len({o.metric for o in out}) != len(out):
        raise SpaceError(f"{where}: search.objectives lists a metric twice")
    return tuple(out)


def make_objective(metric: Any, mode: Any, where: str = "objective") -> Objective:
    """Validate a metric name (MLflow-safe, no ``@``) and a mode."""
    if not isinstance(metric, str) or not _METRIC_NAME.match(metric):
        raise SpaceError(
            f"{where}: metric {metric!r} is not a valid name (letters, digits, _ - . / : and spaces; "
            "e.g. map100/multilingual, never map@100)"
        )
    if mode not in MODES:
        raise SpaceError(f"{where}: mode {mode!r} must be max or min")
    return Objective(metric, mode)


def validation_points(space: SearchSpace, n_samples: int = 64, seed: int = 0) -> list[dict]:
    """Points to check: the whole grid, or each param's bounds/values plus random samples."""
    if space.algorithm == "grid":
        return space.grid_points()
    rng = random.Random(seed)
    middle = {p.name: p.sample(rng) for p in space.params}
    points = [dict(pt) for pt in space.initial_points]
    points += [{**middle, p.name: v} for p in space.params for v in p.corner_values()]
    points += [{p.name: p.sample(rng) for p in space.params} for _ in range(n_samples)]
    return points


