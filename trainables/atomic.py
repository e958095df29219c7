"""Atomic writes: a reader sees a file or folder whole, or not at all, never half written.

Every file or folder this project writes for another process to read (a checkpoint, the
study's state, a cache, a report) goes through :func:`atomic_file` or :func:`atomic_folder`:
the content is written under a private temporary name beside its target and renamed into
place, which POSIX makes atomic on one file system. A writer that fails leaves no temporary
file behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]


@contextmanager
def atomic_file(path: PathLike) -> Iterator[IO[bytes]]:
    """A binary file to write ``path``'s new content into; on leaving the ``with`` block without an
    error it replaces ``path`` (its folder is created if missing). The temporary name is unique,
    so two writers never write into one file, and the file gets the usual permissions (umask)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        with open(tmp, "xb") as out:
            yield out
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_folder(folder: Path, write: Callable[[Path], None], done: str) -> None:
    """Fill a private temporary folder through ``write(tmp)``, then rename it to ``folder``.

    For caches that several processes may build at once from the same inputs: when another
    process renamed its copy into place first (``folder/done`` exists), that copy is kept and
    this one discarded. Any other failure of the rename is raised.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; a cache is read by every worker
        write(tmp)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / done).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
