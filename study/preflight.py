"""Every check a study makes before Ray starts: the one place to add or change one.

The rule (docs/reliability.md, "Bad input, row by row"): what the command line can check is
checked before Ray starts, as one ``error:`` line with exit code 2, and nothing is created
(no storage folder, no MLflow run); what only a trial can see fails that trial with its
reason. :mod:`study.prepare` runs these checks, in order, on a new study and on a resume.

Each check reuses the code that would otherwise fail later, so its message is the one a
trial would have given: the XTD loader's structure check (:func:`trainables.data.xtd.check_xtd`),
the shard expansion, open_clip's registry and model configs for the model, image size and
text context, and for the metric names the registry (:mod:`trainables.metric_names`) plus
the evaluator itself (:func:`known_metrics` runs it on a few random embeddings, so no name
list is kept here). Storage and the tracking URI are probed by writing (and removing) a
folder or object: ``os.access`` answers yes to root where a write fails.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import re
from dataclasses import replace
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Collection, Iterator, Optional

from study.spaces import SearchSpace, SpaceError, read_space, validation_points
from study.storage import check_folder_writable
from trainables.config import ConfigError, TrialConfig, is_seed
from trainables.errors import one_line
from trainables.languages import LANGUAGES
from trainables.metric_names import HEADLINES, source_name
from trainables.mlflow_store import TrackingError, sqlite_path

MAX_NAME_LENGTH = 100  # a folder name (255 bytes at most) with room for Tune's and Ray Train's suffixes
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PROBE_K = 100  # the evaluator's names for k=100; map100/... stands for map{k}/... of any eval_k
_MAP_K = re.compile(r"^map(\d+)/(.+)$")
_EXAMPLE = "map100/multilingual/family/sinitic"  # named in the message
# Flags whose empty value would silently mean the default (``--space ''`` ran the default space).
_NOT_EMPTY = {
    "space": "space name", "name": "study name", "storage_path": "storage path", "tracking_uri": "tracking URI",
    "output_dir": "output folder", "metric": "metric name", "train_data": "data path", "eval_data": "data path",
    "images_dir": "folder",
}
# TrialConfig fields that name files or folders: always paths (but "synthetic"), or paths only
# when they look like one (else an open_clip tag / an HF hub name).
PATH_FIELDS = ("train_data", "eval_data", "images_dir", "data_cache")
MAYBE_PATH_FIELDS = ("pretrained", "hf_text_model")
_FLAG_FOR = {"train_data": "--train-data", "eval_data": "--eval-data", "images_dir": "--images-dir"}


class PreflightError(RuntimeError):
    """Bad input found before the study starts. One-line message."""


def is_local_path(value: Any) -> bool:
    """Whether a data field's value names a local file or folder: a non-empty string, neither
    ``synthetic`` nor a URI (``s3://...``, read where the trials run)."""
    return isinstance(value, str) and bool(value) and value != "synthetic" and "://" not in value


# ---------------------------------------------------------------------------
# Command-line flags
# ---------------------------------------------------------------------------
def check_flag_text(args: argparse.Namespace) -> None:
    """No flag value holds a NUL (no path or name can); an empty value is refused, not read as 'not given'."""
    for flag, value in vars(args).items():
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and "\x00" in text:
                raise PreflightError(f"--{flag.replace('_', '-')} {text!r}: holds a NUL character")
    for flag, what in _NOT_EMPTY.items():
        value = getattr(args, flag, None)
        if isinstance(value, str) and not value.strip():
            raise PreflightError(f"--{flag.replace('_', '-')} {value!r}: empty {what}; give one, or leave the flag out")


def check_search_flags(space: SearchSpace, args: argparse.Namespace) -> SearchSpace:
    """The search flags (counts, scheduler, seeds budget) against ``space``; returns ``space``."""
    for flag in ("num_samples", "max_concurrent", "max_failures", "num_cpus"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "max_failures" else 1):
            raise PreflightError(f"--{flag.replace('_', '-')}={value}: must be {'>= 0' if flag == 'max_failures' else 'positive'}")
    if args.scheduler == "asha" and space.multi_objective:
        raise PreflightError(f"--scheduler asha needs a single objective; space {space.name!r} has {len(space.objectives)}")
    if args.scheduler == "asha" and space.seed_min:
        raise PreflightError(f"--scheduler asha with raced seeds (space {space.name!r}): early stopping would race "
                         "the seeds on cut-short trials; use the default fifo scheduler")
    if space.algorithm == "grid" and space.seeds and args.num_samples not in (None, 1):
        raise PreflightError(f"--num-samples {args.num_samples}: a grid with search.seeds (space {space.name!r}) runs each "
                         "point once per seed; leave --num-samples out")
    try:
        space.check_seed_budget(args.num_samples)
    except SpaceError as err:
        raise PreflightError(f"{err} (--num-samples {args.num_samples})") from None
    return space


def check_resource(flag: str, value: Optional[float], default: float) -> float:
    """A per-worker resource (``--cpus-per-worker``, ``--gpus-per-worker``): finite and >= 0."""
    if value is None:
        return default
    if not math.isfinite(value) or value < 0:
        # NaN passed every comparison before and hung the study: Ray never places a NaN CPU ask.
        raise PreflightError(f"--{flag} {value}: resources per worker must be a finite number >= 0")
    return float(value)


def check_seed(value: Optional[int]) -> None:
    """``--seed`` seeds Optuna's sampler (32-bit) as well as the trials."""
    if value is not None and not is_seed(value):
        raise PreflightError(f"--seed {value}: must lie in [0, 2**32 - 1] (it seeds Optuna's sampler and the trials)")


def check_name_length(name: str) -> None:
    """A study name becomes a folder and an MLflow experiment: keep it well under 255 bytes."""
    if len(name.encode()) > MAX_NAME_LENGTH:
        raise PreflightError(f"study name of {len(name)} characters ({name[:24]}...): at most {MAX_NAME_LENGTH} "
                             "(it names the state folder and the MLflow experiment)")


def study_name(name: str) -> str:
    """A study name usable as a folder and an MLflow experiment name."""
    if not _NAME.match(name):
        raise PreflightError(f"study name {name!r}: use letters, digits, '_', '-', '.' (starting with a letter or digit)")
    check_name_length(name)
    return name


# ---------------------------------------------------------------------------
# Local paths: the data the trials read, the folders the study writes
# ---------------------------------------------------------------------------
def check_data_paths_exist(base: dict) -> None:
    """Fail before Ray starts when a local data path does not exist (else every trial fails on it)."""
    # trainables.data imports torch: only a study with local data pays it before its first line (docs/performance.md)
    from trainables.data import DataError
    from trainables.data.shards import expand_shards
    from trainables.data.sources import train_data_kind

    for key in ("eval_data", "images_dir"):
        value = base.get(key)
        if is_local_path(value) and not os.path.exists(value):
            raise PreflightError(f"--{key.replace('_', '-')} {value}: no such file or folder")
    train = base.get("train_data")
    if not is_local_path(train):
        return
    try:
        if train_data_kind(train) == "shards":
            expand_shards(train)  # the same expansion the trial will do: patterns, folders, lists
        elif not os.path.exists(train):
            raise PreflightError(f"--train-data {train}: no such file, folder or shard pattern")
    except (ConfigError, DataError) as err:
        raise PreflightError(f"--train-data {train}: {err}") from None
    except OSError as err:  # e.g. a name too long for the file system
        raise PreflightError(f"--train-data {train}: {err.strerror or err}") from None
    except ValueError as err:  # braceexpand's unbalanced braces, which the trial would meet too
        raise PreflightError(f"--train-data {train}: {err}") from None


def check_local_data(base: dict) -> None:
    """Local data the trials will read or write: the XTD folder's structure, the data cache."""
    check_eval_folder(base)
    check_data_cache(base)


def check_output_dir(path: str) -> None:
    """The folder for the table, figure and best config: a folder (or creatable), writable; nothing created."""

    try:
        if Path(path).exists() and not Path(path).is_dir():
            raise PreflightError(f"--output-dir {path} is a file, not a folder (the study writes its table and figure there)")
        check_folder_writable(Path(path))
    except OSError as err:
        raise PreflightError(f"output folder {path} is not writable: {one_line(err)}") from None


def check_data_cache(base: dict) -> None:
    """The trials' data cache (synthetic data, tokenizers) must be writable; nothing created."""
    from trainables.data.synthetic import cache_root  # imports torch: see check_data_paths_exist


    if "data_cache" not in base:  # searched: each value is the trial's own business
        return
    folder = cache_root(SimpleNamespace(data_cache=base.get("data_cache")))  # the one field it reads
    try:
        check_folder_writable(folder)
    except OSError as err:
        raise PreflightError(f"data_cache {folder} is not writable: {one_line(err)}") from None


def check_eval_folder(base: dict) -> None:
    """A local XTD evaluation folder: its whole structure, read now with the loader's own check."""
    from trainables.data import DataError  # imports torch: see check_data_paths_exist
    from trainables.data.xtd import check_xtd

    folder = base.get("eval_data")
    if not is_local_path(folder):
        return
    if "images_dir" not in base or "allow_missing_images" not in base:
        return  # searched: each trial checks its own combination
    try:
        check_xtd(folder, base.get("images_dir"), allow_missing_images=bool(base.get("allow_missing_images")))
    except DataError as err:
        raise PreflightError(str(err)) from None
    except OSError as err:  # what the loader does not expect either (a name too long, no permission)
        raise PreflightError(f"XTD folder {folder}: {one_line(err)}") from None


# ---------------------------------------------------------------------------
# The MLflow tracking URI
# ---------------------------------------------------------------------------
SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


@contextmanager
def _quick_http(timeout_s: float) -> Iterator[None]:
    """Temporarily make MLflow's HTTP client fail fast (no retries, short timeout)."""
    keys = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(max(1, timeout_s)))}
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """TrackingError unless ``uri`` can be used: a sqlite database whose folder exists and takes a
    new file, and which, when it exists, is an SQLite file this process can write; any other
    store answers a query within ``timeout_s``. Nothing is created."""
    db = sqlite_path(uri)
    if db is not None:
        folder = db.parent
        if not folder.is_dir():
            raise TrackingError(f"MLflow tracking URI {uri}: folder {folder} does not exist")
        try:
            check_folder_writable(folder)
            if db.exists():
                with open(db, "r+b") as f:  # opening for writing is the test: os.access answers yes to root
                    header = f.read(len(SQLITE_HEADER))
                if header and header != SQLITE_HEADER:
                    raise TrackingError(f"MLflow tracking URI {uri}: {db} is not an SQLite database")
        except OSError as err:
            raise TrackingError(f"MLflow tracking URI {uri}: {db} is not writable ({one_line(err)})") from None
        return
    from mlflow import MlflowClient  # only a study tracked on a server pays its import here

    try:
        with _quick_http(timeout_s):
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as err:  # noqa: BLE001 - any failure means unusable; say why in one line
        raise TrackingError(f"MLflow tracking URI {uri} is unusable: {one_line(err)}") from None


# ---------------------------------------------------------------------------
# Paths named by a space file
# ---------------------------------------------------------------------------
def load_space(name_or_path: str) -> SearchSpace:
    """The space ``name_or_path`` (registry name or YAML file), read and structurally checked,
    with the paths it names resolved inside its folder (:func:`contain_paths`)."""
    space = read_space(name_or_path)
    return contain_paths(space, Path(space.source).parent)


def contain_paths(space: SearchSpace, folder: Path) -> SearchSpace:
    """The space with its data/model paths resolved inside ``folder`` (the space file's folder).

    The rule: a path in a space file is relative and resolves, after ``..`` and symlinks,
    inside the folder that holds the file. Anything else (absolute, ``~``, escaping by ``..``
    or through a symlink) is a SpaceError: a space file is shareable data and never sends a
    study to read or write elsewhere unseen; such locations go on the command line
    (``--eval-data``, ``--set data_cache=...``), where the user names them.
    """
    where = f"space {space.name!r} ({space.source})"
    fixed = {k: _contained(k, v, folder, f"{where}: fixed.{k}") for k, v in space.fixed.items()}
    params = tuple(
        replace(p, values=tuple(_contained(p.name, v, folder, f"{where}: params.{p.name}") for v in p.values))
        if p.values else p
        for p in space.params
    )
    return replace(space, fixed=fixed, params=params)


def _contained(key: str, value: Any, folder: Path, where: str) -> Any:
    """``value`` as an absolute path inside ``folder`` when ``key`` names a path; else unchanged."""
    if not _is_path_value(key, value):
        return value
    flag = _FLAG_FOR.get(key, f"--set {key}=...")
    if "\x00" in value:  # YAML's "\0": no path holds one (and resolve() would raise on it)
        raise SpaceError(f"{where}={value!r}: a path cannot hold a NUL character")
    if value.startswith("~") or Path(value).is_absolute():
        raise SpaceError(f"{where}={value!r}: a space file may only name paths inside its own folder "
                         f"{folder}; give this one on the command line ({flag})")
    base = folder.resolve()
    resolved = (base / value).resolve()
    if not resolved.is_relative_to(base):
        how = "by '..'" if ".." in Path(value).parts else "through a symlink"
        raise SpaceError(f"{where}={value!r} leads {how} to {resolved}, outside the space file's folder {base}; "
                         f"give it on the command line ({flag}) if that is intended")
    return str(resolved)


def _is_path_value(key: str, value: Any) -> bool:
    if key in PATH_FIELDS:
        return is_local_path(value)
    if key in MAYBE_PATH_FIELDS and isinstance(value, str) and value and "://" not in value:
        return value.startswith(("/", "~", "./", "../")) or value.endswith((".pt", ".pth", ".bin", ".safetensors"))
    return False


# ---------------------------------------------------------------------------
# Trial configs: every config a space can produce must be a valid TrialConfig
# ---------------------------------------------------------------------------
def build_trial_config(base: dict, params: dict) -> TrialConfig:
    """The trial config: ``base`` (defaults + fixed + CLI) updated by the sampled ``params``.

    The model name and ``pretrained`` tag are checked against open_clip's registry too (no
    download), and the image size and context length against the model's config, so a study
    refuses them before it starts, instead of failing every trial on them.
    """
    config = TrialConfig.from_dict({**base, **params})
    _check_model(config)
    return config


_MODELS_CHECKED: dict = {}  # (model, pretrained) -> open_clip model name


def _check_model(config: TrialConfig) -> None:
    """ConfigError when open_clip does not know ``config.model`` or its ``pretrained`` tag (cached),
    or when the model cannot take ``config``'s image size or context length."""
    from trainables.model import resolve_model_name  # torch and open_clip: only for specs that parse

    key = (config.model, config.pretrained)
    if key not in _MODELS_CHECKED:
        _MODELS_CHECKED[key] = resolve_model_name(config)
    check_model_limits(config, _MODELS_CHECKED[key])


def validate_space(space: SearchSpace, base: dict, n_samples: int = 64, seed: int = 0) -> int:
    """Build a TrialConfig for every validation point; raise SpaceError on the first bad one.

    Returns the number of configs checked.
    """
    points = validation_points(space, n_samples, seed)
    for point in points:
        try:
            build_trial_config(base, point)
        except ConfigError as err:
            shown = ", ".join(f"{k}={_short(v)}" for k, v in point.items())
            raise SpaceError(f"space {space.name!r} samples an invalid trial config ({shown}): {err}") from None
    return len(points)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else repr(value)


def check_fixed_settings(space: SearchSpace, base: dict) -> None:
    """Blame a bad fixed setting (space ``fixed`` or a flag) on itself, not on the space's samples."""
    point = validation_points(space, n_samples=0)[0]
    try:
        build_trial_config(base, point)
    except ConfigError as err:
        if not any(name in str(err) for name in space.param_names):
            raise PreflightError(f"trial settings (space 'fixed' + command line): {err}") from None


def check_model_limits(config: TrialConfig, model_name: str) -> None:
    """ConfigError when ``config`` asks for something model ``model_name`` cannot take.

    * ``image_size`` below one patch of a ViT vision tower (32 px for a ResNet's stride):
      the trial would train on images with less detail than a single patch.
    * ``context_length`` with a model that uses its own tokenizer: the model's text context
      is fixed, so another value would be silently ignored.
    """
    import open_clip  # see _check_model

    model_cfg = open_clip.get_model_config(model_name) or {}
    smallest, unit = _smallest_image(model_cfg.get("vision_cfg") or {})
    if smallest and config.image_size < smallest:
        raise ConfigError(f"image_size={config.image_size}: model {config.model!r} takes images of at least "
                          f"{smallest} px ({unit} of its vision tower)")
    context = (model_cfg.get("text_cfg") or {}).get("context_length")
    if config.context_length is not None and config.text_tokenizer == "model" and context:
        if config.context_length != context:
            raise ConfigError(f"context_length={config.context_length}: model {config.model!r} reads {context} "
                              "text tokens with its own tokenizer; leave context_length unset")


def _smallest_image(vision: dict) -> tuple[int, str]:
    patch = vision.get("patch_size")
    if isinstance(patch, (list, tuple)):
        patch = max(patch)
    if isinstance(patch, int) and patch > 0:
        return patch, f"one {patch} px patch"
    if isinstance(vision.get("layers"), (list, tuple)):  # open_clip's ModifiedResNet: output stride 32
        return 32, "the output stride"
    return 0, ""  # timm / HF vision towers: their own limits, checked when built


# ---------------------------------------------------------------------------
# Metric names: the registry (trainables.metric_names) and what the evaluator reports
# ---------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _evaluation_names() -> frozenset:
    """Every name :func:`trainables.evaluate.evaluate_embeddings` reports for the XTD languages (k=100)."""
    import torch  # only a study that names its metrics pays it, after the cheap checks

    from trainables.evaluate import evaluate_embeddings  # imports torch: see above

    gen = torch.Generator().manual_seed(0)
    images = torch.randn(3, 4, generator=gen)
    texts = {lang: torch.randn(3, 4, generator=gen) for lang in LANGUAGES}
    return frozenset(evaluate_embeddings(images, texts, k=_PROBE_K))


def known_metrics(eval_k: int = _PROBE_K) -> list[str]:
    """The (source) metric names a trial with ``eval_k`` reports at an evaluated epoch, sorted:
    every evaluation name, and the registry's headlines (training, composition, bookkeeping)."""
    names = {_with_k(name, eval_k) for name in _evaluation_names()}
    return sorted(names | {h.source for h in HEADLINES if not _MAP_K.match(h.source)})


def _with_k(name: str, k: int) -> str:
    match = _MAP_K.match(name)
    return f"map{k}/{match.group(2)}" if match and int(match.group(1)) == _PROBE_K else name


def check_metric(metric: str, eval_ks: Collection[int], where: str) -> None:
    """PreflightError unless some trial of the study reports ``metric`` (``eval_ks``: its possible eval_k).

    ``metric`` is a source name (``map100/multilingual``) or a registry headline's logged name
    (``multi``); the message lists the registry's headlines, which name the rest.
    """
    source = source_name(metric)
    match = _MAP_K.match(source)
    if match and int(match.group(1)) in eval_ks and f"map{_PROBE_K}/{match.group(2)}" in _evaluation_names():
        return
    first = next(iter(eval_ks), _PROBE_K)
    if not match and source in known_metrics(first):
        return
    names = known_metrics(first)
    close = difflib.get_close_matches(metric, names + [h.logged for h in HEADLINES], n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    k_note = f" with eval_k={first}" if len(eval_ks) == 1 else ""
    headline = [_with_k(h.source, first) for h in HEADLINES if h.source.count("/") <= 1]
    raise PreflightError(
        f"{where}: metric {metric!r} is not reported by the trials{k_note}; known: {', '.join(headline)}; "
        f"per family, language and pair too (e.g. {_with_k(_EXAMPLE, first)}), or by the short names of "
        f"trainables/metric_names.py (multi, multi/sinitic, ...): {len(names)} in all{hint}"
    )


def eval_ks(base: dict, space: Any) -> Collection[int]:
    """The eval_k values the study's trials can have: the fixed one, or those the space searches."""
    param = next((p for p in space.params if p.name == "eval_k"), None)
    if param is None:
        return (base.get("eval_k", TrialConfig().eval_k),)
    if param.values:
        return tuple(v for v in param.values if isinstance(v, int) and not isinstance(v, bool)) or (_PROBE_K,)
    return range(int(param.low), int(param.high) + 1)  # a range: membership without listing it
