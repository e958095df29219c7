"""Where a study keeps its state: a local folder or a URI pyarrow understands (``s3://``, ``gs://``).

The helpers both :mod:`study.state` (the study's ``study.json``) and :mod:`study.lock` (one
driver per study) build on: telling a URI from a local path, joining, the file system of a
URI, the names of the lock and lease files, and the one writability probe of the project
(:func:`check_folder_writable`: it makes and removes a folder, as ``os.access`` answers yes
to root where ``mkdir`` fails).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

from trainables.errors import one_line

LOCK_FILE = ".study.lock"  # a local study's flock file (study.lock)
LEASE_FILE = ".study.lease"  # the lease object on storage without flock (study.lock)


class StorageError(RuntimeError):
    """The storage path cannot be used. One-line message."""


def is_uri(path: str) -> bool:
    """True for ``scheme://...`` storage (s3, gs, ...), False for local paths."""
    return "://" in path and not path.startswith("file://")


def resolve_storage_path(path: str) -> str:
    """An absolute local path, or the URI unchanged (Tune requires absolute storage paths)."""
    if is_uri(path):
        return path.rstrip("/")
    if path.startswith("file://"):
        path = path[len("file://"):]
    return str(Path(path).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    """Join storage path parts with ``/`` (works for local paths and URIs)."""
    return "/".join([base.rstrip("/"), *parts])


def filesystem(uri: str):
    """(pyarrow file system, path inside it) of a storage path or URI."""
    import pyarrow.fs  # start-up cost a study on a local folder never needs (docs/performance.md)

    return pyarrow.fs.FileSystem.from_uri(uri)


def check_writable(storage_path: str) -> None:
    """StorageError unless ``storage_path`` can be written; creates nothing that stays.

    A local path that does not exist yet is not created here (a refused study leaves no
    folder behind): the deepest part of it that exists must be a folder that takes a new
    entry. A URI is probed with a small object, deleted at once.
    """
    try:
        if not is_uri(storage_path):
            check_folder_writable(Path(storage_path))
            return
        probe = join(storage_path, f".write_probe_{uuid.uuid4().hex[:8]}")
        fs, fs_path = filesystem(storage_path)
        fs.create_dir(fs_path, recursive=True)
        fs_probe = filesystem(probe)[1]
        with fs.open_output_stream(fs_probe) as out:
            out.write(b"ok")
        fs.delete_file(fs_probe)
    except Exception as err:  # noqa: BLE001 - any failure: not writable, say why
        raise StorageError(f"storage path {storage_path} is not writable: {one_line(err)}") from None


def check_folder_writable(path: Path) -> None:
    """OSError unless folder ``path`` exists and takes a new entry, or could be created; nothing stays.

    Every existing part of ``path`` must be a folder. The deepest existing one is probed by
    making and removing a temporary folder in it: ``os.access`` answers yes to root even
    where ``mkdir`` fails (under ``/proc``, on a read-only bind mount).
    """
    probe_in = Path(path)
    while not _exists(probe_in):
        if probe_in.is_symlink():
            raise NotADirectoryError(f"{probe_in} is a broken symbolic link")
        if probe_in.parent == probe_in:
            break
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise NotADirectoryError(f"{probe_in} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write_probe_", dir=probe_in))
    except OSError as err:
        raise OSError(f"cannot create a folder in {probe_in} ({err.strerror or type(err).__name__})") from None


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. no permission to look: treat as there, and let the probe say why
        return True


def experiment_exists(storage_path: str, name: str) -> bool:
    """Whether a Tune experiment (or study state) already lives at ``<storage>/<name>``.

    A study's lock or lease file alone (:mod:`study.lock`: left by a driver killed before it saved
    anything, or held by the driver asking) is not a study.
    """
    folder = join(storage_path, name)
    if not is_uri(folder):
        return Path(folder).is_dir() and any(p.name not in (LOCK_FILE, LEASE_FILE) for p in Path(folder).iterdir())
    import pyarrow.fs  # see filesystem()

    fs, fs_path = filesystem(folder)
    if fs.get_file_info(fs_path).type == pyarrow.fs.FileType.NotFound:
        return False
    entries = fs.get_file_info(pyarrow.fs.FileSelector(fs_path, allow_not_found=True))
    return any(e.base_name not in (LOCK_FILE, LEASE_FILE) for e in entries)
