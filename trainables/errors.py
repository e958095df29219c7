"""How the project words a failure: one line of text, and a failure's root cause.

Every error the CLI prints, every refusal and every failure reason an MLflow run records
names its problem on one line (docs/reliability.md). :func:`one_line` makes that line, with
the one length limit; :func:`root_cause` and :func:`failure_reason` find what to say when a
trial fails, however deep Ray has wrapped the exception. A write that fails because a file
system is full (ENOSPC) is told apart (:func:`is_out_of_space`): it says nothing about the
trial's settings, so a study stops on it instead of failing the trial (docs/reliability.md);
:class:`OutOfSpace` and :func:`naming_full` give it the one line that names the full place,
its path and its free space.
"""

from __future__ import annotations

import errno
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

ONE_LINE_LIMIT = 500  # characters: a reason fits a terminal line or two and an MLflow tag


class TrialFailed(RuntimeError):
    """A trial's training failed; the message carries the root cause (:func:`root_cause`)."""


def one_line(what: object, limit: int = ONE_LINE_LIMIT) -> str:
    """``what`` (an exception or a text) on one line: every run of whitespace, newlines included,
    becomes one space; cut to ``limit`` characters, ``...`` marking the cut. An exception with
    no message gives its type's name."""
    text = " ".join(str(what).split())
    if not text and isinstance(what, BaseException):
        text = type(what).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def root_cause(err: BaseException) -> str:
    """``Type: last line`` of the innermost exception behind ``err``, following Ray's ``cause``
    attribute (a worker's exception inside Ray Train's wrappers) and Python's ``__cause__``."""
    seen = err
    while True:
        nxt = getattr(seen, "cause", None) or seen.__cause__
        if nxt is None or nxt is seen:
            break
        seen = nxt
    text = str(seen).strip().splitlines()
    last = text[-1] if text else ""
    return f"{type(seen).__name__}: {last}" if last else type(seen).__name__


def failure_reason(err: BaseException, limit: int = ONE_LINE_LIMIT) -> str:
    """One line saying why a trial failed: a ``reason`` attribute or a :class:`TrialFailed`'s
    message (the root cause, found by the driver) along the exception's chain, else the most
    specific ``SomeError: message`` line of its (possibly remote) traceback text."""
    seen: set[int] = set()
    current: Optional[BaseException] = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        reason = getattr(current, "reason", None)
        if isinstance(reason, str) and reason.strip():
            return one_line(reason, limit)
        if type(current) is TrialFailed and str(current).strip():  # exactly ours, not Ray's wrapper of it
            return one_line(str(current), limit)
        current = current.__cause__ or current.__context__
    return one_line(_last_error_line(err), limit)


def _last_error_line(err: BaseException) -> str:
    """The most specific ``SomeError: message`` line of a (possibly remote) traceback text."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception|Failed|Interrupt)\b", ln)]
    if errors:
        return errors[-1]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


# ---------------------------------------------------------------------------
# A full file system
# ---------------------------------------------------------------------------
# How ENOSPC (and EDQUOT, a quota spent: the same for a writer) reads once a library has turned it
# into text: strerror on Linux and macOS, pyarrow's "[errno 28]" (its OSError keeps the errno, but
# Ray's wrappers keep only the text), and SQLite's SQLITE_FULL.
_FULL_TEXT = re.compile(r"No space left on device|Disk quota exceeded|\[errno (28|122)\]|database or disk is full",
                        re.IGNORECASE)
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# An error that names no place (Ray's own write into the storage path, say) is taken for a full
# storage path only if that path's file system is nearly full when the error is seen: ENOSPC also
# comes from places that are not the study's (a full /dev/shm, the inotify watch limit), and
# stopping the study for those, naming a disk with room, would stop every resume again. The margin
# allows for what a failed writer removed after the error (a checkpoint's temporary file).
NEARLY_FULL_BYTES = 1 << 30
NEARLY_FULL_SHARE = 0.02


class OutOfSpace(RuntimeError):
    """A write failed because the file system of a place the project names (the storage path, the
    data cache, ...) is full. The message is the one line to show: the place, its path, its free
    space and the failed write (:func:`out_of_space_line`); ``reason`` is the same line (what
    :func:`failure_reason` reports)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.reason = message


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err`` and every exception behind it: Python's ``__cause__`` and ``__context__``, Ray's
    ``cause``, and Ray Train's ``controller_failure`` and ``worker_failures`` (the exceptions of the
    controller and of each worker, which its errors carry as attributes, not as causes)."""
    todo, seen = [err], set()
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        failures = getattr(current, "worker_failures", None)
        todo += [getattr(current, "cause", None), current.__cause__, current.__context__,
                 getattr(current, "controller_failure", None),
                 *(failures.values() if isinstance(failures, dict) else ())]
        todo = [e for e in todo if isinstance(e, BaseException)]


def is_out_of_space(err: BaseException) -> bool:
    """Whether ``err`` comes from a write that found its file system full: an :class:`OutOfSpace`, an
    ``OSError`` with errno ENOSPC, or (once Ray or pyarrow has wrapped it) their text, anywhere in
    its chain (:func:`_chain`)."""
    return any(isinstance(e, OutOfSpace) or (isinstance(e, OSError) and e.errno in _FULL_ERRNOS)
               or mentions_full_disk(str(e)) for e in _chain(err))


def mentions_full_disk(text: str) -> bool:
    """Whether ``text`` (an error message, a traceback printed into a log line) reports ENOSPC or EDQUOT."""
    return bool(_FULL_TEXT.search(text))


def named_out_of_space(err: BaseException) -> Optional[str]:
    """The line of the first :class:`OutOfSpace` in ``err``'s chain (it names its place), or None."""
    return next((str(e.reason) for e in _chain(err) if isinstance(e, OutOfSpace)), None)


def size_text(n_bytes: float) -> str:
    """``n_bytes`` for messages: ``0 B``, ``512 B``, ``12.0 KiB``, ``3.4 MiB``, ``1.2 GiB``, ``2.0 TiB``."""
    value, unit = float(n_bytes), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"


def _disk_usage(path: str):
    """``shutil.disk_usage`` of the file system that holds ``path`` (or would: its deepest existing
    folder); None for a URI or where it cannot be read."""
    if "://" in path and not path.startswith("file://"):
        return None
    folder = Path(path[len("file://"):] if path.startswith("file://") else path)
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder)
    except OSError:
        return None


def free_bytes(path: str) -> Optional[int]:
    """The free bytes of the file system that holds ``path`` (or would: its deepest existing folder);
    None for a URI or where it cannot be read."""
    usage = _disk_usage(path)
    return None if usage is None else usage.free


def nearly_full(path: str) -> bool:
    """Whether the file system of ``path`` has less than :data:`NEARLY_FULL_BYTES` or
    :data:`NEARLY_FULL_SHARE` of its size free (False for a URI or where it cannot be read)."""
    usage = _disk_usage(path)
    return usage is not None and usage.free < max(NEARLY_FULL_BYTES, NEARLY_FULL_SHARE * usage.total)


def full_disk_line(err: BaseException, storage_path: str) -> Optional[str]:
    """The one line that stops a study for ``err``, or None when ``err`` is no full disk of its own:
    a writer's line that names its place (:func:`named_out_of_space`), else, for a full-disk error
    that names none (Ray's own write, say), the storage path's line while that path is
    :func:`nearly_full` (a full ``/dev/shm`` is the trial's failure, not a full storage path)."""
    named = named_out_of_space(err)
    if named is None and is_out_of_space(err) and nearly_full(storage_path):
        return out_of_space_line("storage path", storage_path, err)
    return named


def free_space(path: str) -> str:
    """:func:`free_bytes` of ``path`` as :func:`size_text`, or ``unknown``."""
    free = free_bytes(path)
    return "unknown" if free is None else size_text(free)


def out_of_space_line(place: str, path: str, err: BaseException) -> str:
    """``PLACE PATH is full (N free): CAUSE``, one line; ``CAUSE`` is the failed write as
    :func:`root_cause` words it: the ENOSPC ``OSError`` itself where the chain holds one, rather
    than the wrappers around it."""
    full = next((e for e in _chain(err) if isinstance(e, OSError) and e.errno in _FULL_ERRNOS), err)
    return one_line(f"{place} {path} is full ({free_space(path)} free): {root_cause(full)}")


@contextmanager
def naming_full(place: str, path: str) -> Iterator[None]:
    """Run the block; a write in it that finds its file system full (:func:`is_out_of_space`) raises
    :class:`OutOfSpace` naming ``place`` and ``path`` instead. Other errors pass unchanged."""
    try:
        yield
    except OutOfSpace:
        raise
    except Exception as err:
        if not is_out_of_space(err):
            raise
        raise OutOfSpace(out_of_space_line(place, path, err)) from err
