"""The file system through which Tune and Ray Train write a local storage path: whole files only.

Tune copies its experiment state (the trial list, the pickled searcher, each trial's results)
into the storage path, and Ray Train its checkpoints and its run snapshot, by opening each file
in place and writing it (pyarrow's ``copy_files`` and ``open_output_stream``). When the disk
fills in the middle, the file left behind is cut short: a study whose storage filled could no
longer be resumed (measured: a truncated experiment state, empty checkpoints, an empty Ray Train
snapshot). :func:`storage_filesystem` gives both libraries a pyarrow file system whose output
streams write under a private temporary name beside the target and rename it into place only
when the whole file was written (:mod:`trainables.atomic`'s rule); a failed write removes the
temporary file, and the file in place stays the last whole one.

Only local paths need it: an object store (``s3://``, ``gs://``) makes an object visible whole,
so a URI keeps the file system Ray picks for it. Reading goes through unchanged; a worker reads
a checkpoint on such a path in place (:func:`is_whole_files`, ``trainables.session``).
"""

from __future__ import annotations

import json
import logging
import os
import pickletools
import shutil
import uuid
from typing import Any, Optional

import pyarrow
import pyarrow.fs as pafs

log = logging.getLogger(__name__)


def storage_filesystem(storage_path: str) -> Optional[pafs.FileSystem]:
    """The file system Tune and Ray Train should write ``storage_path`` through: whole files only
    (:class:`WholeFiles`) for a local path, None (Ray's own choice) for a URI."""
    if "://" in storage_path and not storage_path.startswith("file://"):
        return None
    return pafs.PyFileSystem(WholeFiles())


def is_whole_files(filesystem: Optional[pafs.FileSystem]) -> bool:
    """Whether ``filesystem`` is :func:`storage_filesystem`'s (a local path, so readable in place)."""
    return isinstance(filesystem, pafs.PyFileSystem) and isinstance(filesystem.handler, WholeFiles)


def _temporary_name(path: str) -> str:
    """A private name beside ``path`` (hidden, unique per writer)."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex[:12]}")


class _WholeFileWriter:
    """A binary file written under a temporary name and renamed to ``path`` on a clean close.

    A write that fails (a full disk) abandons it at once: the temporary file is closed and
    removed, and ``path`` keeps its last whole content (or stays absent). pyarrow does not close
    a stream after a failed write, so this cannot wait for :meth:`close`.
    """

    def __init__(self, path: str):
        self.path, self.tmp = path, _temporary_name(path)
        self._file = open(self.tmp, "xb")  # noqa: SIM115 - closed (and renamed or removed) in close()

    @property
    def closed(self) -> bool:
        return self._file.closed

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return self._or_abandon(self._file.write, data)

    def flush(self) -> None:
        self._or_abandon(self._file.flush)

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        if not self._file.closed:
            self._or_abandon(self._close_and_rename)

    def _close_and_rename(self) -> None:
        self._file.close()  # flushes: a full disk may surface only here
        if not readable_whole(self.path, self.tmp):
            # Tune rewrites its state in its local staging folder (open "w", then write) while a
            # background copy of the previous version may be reading it: that copy can carry an
            # empty or cut file, and on a full disk only an empty one fits. The last whole one stays.
            log.info("not replacing %s with a torn copy of its source (Tune's next save copies it again)", self.path)
            _remove(self.tmp)
            return
        os.replace(self.tmp, self.path)

    def _or_abandon(self, action, *args) -> Any:
        """``action(*args)``; if it fails, the file is abandoned first (:meth:`_abandon`)."""
        try:
            return action(*args)
        except BaseException:
            self._abandon()
            raise

    def _abandon(self) -> None:
        """Close and remove the temporary file; ``path`` is left as it was."""
        try:
            self._file.close()
        except OSError:
            pass
        _remove(self.tmp)

    def __del__(self) -> None:  # dropped without close() (a caller that gave up): never rename
        if getattr(self, "_file", None) is not None and not self._file.closed:
            self._abandon()


def readable_whole(name: str, path: str) -> bool:
    """Whether the file at ``path``, to be stored as ``name``, is whole where its kind can tell: a
    state file read back as JSON (Tune's experiment state, Ray Train's snapshot, the searchers'
    state) or as a pickle (Tune's searcher state, under a ``.json`` or ``.pkl`` name) must parse to
    its end; ``result.json`` (JSON lines, possibly none yet) must hold whole lines. Other files
    (checkpoints, CSV, logs) are taken as written."""
    if not name.endswith((".json", ".pkl")):
        return True
    with open(path, "rb") as f:
        data = f.read()
    try:
        if name.endswith("result.json"):
            for line in data.splitlines():
                if line.strip():
                    json.loads(line)
        elif data[:1] == b"\x80":
            for _ in pickletools.genops(data):  # reads the opcodes to STOP (runs nothing; ~0.1 s a MB)
                pass
        else:
            json.loads(data)
    except Exception:  # noqa: BLE001 - any parse failure (JSONDecodeError, pickletools' ValueError) is a torn file
        return False
    return True


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class WholeFiles(pafs.FileSystemHandler):
    """pyarrow's local file system, except that every file it writes appears whole or not at all
    (see the module docstring); wrapped as ``pyarrow.fs.PyFileSystem(WholeFiles())``."""

    def __init__(self) -> None:
        self._local = pafs.LocalFileSystem()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WholeFiles)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __reduce__(self):  # pickled to Ray's workers by reference to this class, with no state
        return (WholeFiles, ())

    def get_type_name(self) -> str:
        return "mlclip-whole-files"

    def normalize_path(self, path: str) -> str:
        return self._local.normalize_path(path)

    def get_file_info(self, paths):
        return self._local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self._local.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self._local.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self._local.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool) -> None:
        self._local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise PermissionError("refusing to delete the contents of the root folder")

    def delete_file(self, path: str) -> None:
        self._local.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self._local.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        tmp = _temporary_name(dest)
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        finally:
            _remove(tmp)

    def open_input_stream(self, path: str):
        return self._local.open_input_stream(path)

    def open_input_file(self, path: str):
        return self._local.open_input_file(path)

    def open_output_stream(self, path: str, metadata):
        return pyarrow.PythonFile(_WholeFileWriter(path), mode="w")

    def open_append_stream(self, path: str, metadata):
        return self._local.open_append_stream(path)
