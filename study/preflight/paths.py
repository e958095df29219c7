"""Checks of paths: the local data the trials will read, the folders a study writes, the MLflow
tracking URI, and the paths a space file names (kept inside its folder)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

from study.preflight import PreflightError, is_local_path
from study.spaces import SearchSpace, SpaceError, read_space
from study.storage import check_folder_writable
from trainables.config import ConfigError
from trainables.errors import free_bytes, one_line, size_text
from trainables.mlflow_store import TrackingError, sqlite_path

# TrialConfig fields that name files or folders: always paths (but "synthetic"), or paths only
# when they look like one (else an open_clip tag / an HF hub name).
PATH_FIELDS = ("train_data", "eval_data", "images_dir", "data_cache")
MAYBE_PATH_FIELDS = ("pretrained", "hf_text_model")
_FLAG_FOR = {"train_data": "--train-data", "eval_data": "--eval-data", "images_dir": "--images-dir"}


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
    """The trials' data cache (synthetic data, tokenizers) must be writable, and hold the synthetic
    data set the trials will generate into it (:func:`check_cache_room`); nothing created."""
    from trainables.data.synthetic import cache_root  # imports torch: see check_data_paths_exist

    if "data_cache" not in base:  # searched: each value is the trial's own business
        return
    folder = cache_root(SimpleNamespace(data_cache=base.get("data_cache")))  # the one field it reads
    try:
        check_folder_writable(folder)
    except OSError as err:
        raise PreflightError(f"data_cache {folder} is not writable: {one_line(err)}") from None
    check_cache_room(base, folder)


_SYNTHETIC_FIELDS = ("synthetic_train_size", "synthetic_test_size", "image_size", "data_seed")


def check_cache_room(base: dict, folder: Path) -> None:
    """A data cache whose disk cannot hold the synthetic data set still to be generated is refused:
    every trial would fail writing it. The size is a lower bound
    (:func:`trainables.data.synthetic.cache_bytes_floor`), so a refusal is certain; a cache that
    passes can still fill later, which stops the study with one line (:mod:`study.stop`)."""
    from trainables.data.synthetic import cache_bytes_floor  # imports torch: see check_data_paths_exist

    if base.get("train_data") != "synthetic" or any(f not in base for f in _SYNTHETIC_FIELDS):
        return  # real data, or sizes searched: each trial generates its own
    need = cache_bytes_floor(SimpleNamespace(data_cache=str(folder), **{f: base[f] for f in _SYNTHETIC_FIELDS}))
    free = free_bytes(str(folder))
    if need and free is not None and free < need:
        raise PreflightError(f"data_cache {folder} has too little room ({size_text(free)} free): the synthetic data "
                             f"set of this study needs at least {size_text(need)} there; free space there (a new study "
                             "can also take another folder: --set data_cache=DIR; a resume keeps its own)")


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
