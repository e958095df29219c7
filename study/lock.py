"""One process per study: the lock on a study's state folder.

Two drivers of one study (two ``--resume`` at once, or a new study started twice) would
both restore the same Tune state and run the same unfinished trial twice, each logging its
own MLflow child run. So a driver holds its study's lock from before Ray starts until it
ends, and a second driver refuses at once, naming the holder's process, host and start time.

Where the lock lives and what it guarantees:

* **Local storage** (a folder, also on NFS): ``<storage>/<name>/.study.lock``, held with an
  exclusive ``flock``. The kernel drops the lock when the holder ends in any way (exit,
  Ctrl-C, SIGKILL, a crash), so a lock never outlives its process: mutual exclusion is
  exact among processes that see the same file. The file also records the holder (pid,
  host, start time) for the refusal message. A holder that ends cleanly deletes the file;
  a file left with a record means its process died, and the next driver takes it over with
  one line saying so.
* **Object storage** (``s3://``, ``gs://``: no file locks): a lease object
  ``<storage>/<name>/.study.lease`` holding the holder's record, a random token and an
  expiry, renewed by a background thread every ``ttl/4`` seconds. A driver refuses while an
  unexpired lease of another process exists; it takes over an expired lease, or at once one
  whose process is gone from this same host (same boot and pid namespace). Object stores
  offer no compare-and-swap here, so a new lease is written, left to settle for
  ``settle_s`` seconds and read back: the driver whose token is read back holds it.
  Guaranteed: two drivers never both proceed when each one's read-write-read round trip
  finishes within ``settle_s`` (the store is read-after-write consistent, as S3 and GCS
  are) and the clocks of the hosts agree to well within ``ttl``. Not guaranteed: a holder
  stalled for longer than ``ttl`` (suspended, partitioned) loses its lease to a newcomer;
  it then prints a warning, but nothing stops it. The same lease is used on a local file
  system without ``flock`` support.

The lock is advisory: it binds drivers of this project, not other programs writing the
folder.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator, Optional

from study.storage import LEASE_FILE, LOCK_FILE, filesystem, is_uri, join
from trainables.errors import one_line

LEASE_TTL_S = 60.0
LEASE_SETTLE_S = 2.0
# flock is missing on some file systems (old NFS without lockd, some FUSE mounts): use the lease there.
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}

Say = Callable[[str], None]


class LockError(RuntimeError):
    """The study (or the machine's local cluster) is held by another process. One-line message."""


# ---------------------------------------------------------------------------
# Who holds a lock
# ---------------------------------------------------------------------------
def _namespace() -> str:
    """This machine's boot and pid namespace: where a pid names the same process as here."""
    parts = []
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        pass
    return ":".join(parts)


def holder_record(**extra: object) -> dict:
    """This process as a lock holder: pid, host, start time (epoch seconds), namespace, token."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
            "namespace": _namespace(), "token": uuid.uuid4().hex, **extra}


def _pid_alive(pid: object) -> bool:
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False  # not a process id (0 and -1 would address process groups)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def gone_from_here(record: dict) -> bool:
    """Whether ``record``'s process was on this host and no longer runs."""
    same_place = record.get("host") == socket.gethostname() and record.get("namespace") == _namespace()
    return same_place and not _pid_alive(record.get("pid"))


def when(seconds: Optional[float]) -> str:
    """A local time stamp for messages, e.g. ``2026-05-09 07:35:25 UTC``."""
    if not isinstance(seconds, (int, float)):
        return "an unknown time"
    return datetime.fromtimestamp(seconds).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def describe_holder(record: Optional[dict]) -> str:
    """``process PID on HOST since T`` (or what is known of it)."""
    if not record or "pid" not in record:
        return "another process (starting up: its record is not written yet)"
    return f"process {record['pid']} on {record.get('host', '?')} since {when(record.get('started'))}"


class Held(LockError):
    """The lock is held; ``record`` is the holder's (None when unreadable), ``where`` the lock's path."""

    def __init__(self, record: Optional[dict], where: str):
        super().__init__(f"held by {describe_holder(record)} ({where})")
        self.record, self.where = record, where


# ---------------------------------------------------------------------------
# Local: flock
# ---------------------------------------------------------------------------
class FileLock:
    """An exclusive ``flock`` on ``path`` with the holder's record in the file (see module doc)."""

    def __init__(self, path: Path, record: dict):
        self.path, self.record = Path(path), record
        self._fd: Optional[int] = None
        self._made: list[Path] = []

    def acquire(self) -> Optional[dict]:
        """Take the lock, or raise :class:`Held`; returns the record a dead holder left, if any.

        OSError with an errno in ``_NO_FLOCK`` means the file system has no flock.
        """
        import fcntl

        self._made = _make_folders(self.path.parent)
        for _ in range(20):  # the file can be replaced between open and flock: retry on a new one
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                record = _holders_record(fd)
                os.close(fd)
                raise Held(record, str(self.path)) from None
            except OSError:
                os.close(fd)
                raise
            if _same_file(fd, self.path):
                left = _read_fd(fd)
                data = json.dumps(self.record).encode()
                os.pwrite(fd, data, 0)  # written over the old record, then cut: never an empty file
                os.ftruncate(fd, len(data))
                os.fsync(fd)
                self._fd = fd
                return left
            os.close(fd)  # a releasing holder unlinked it meanwhile
        raise Held(None, str(self.path))

    def release(self) -> None:
        """Delete the file (a clean end leaves no record behind), then drop the lock."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None
        for folder in reversed(self._made):  # only folders this lock created, and only if empty
            try:
                folder.rmdir()
            except OSError:
                break


def peek_file(path: Path) -> Optional[dict]:
    """The record of a live holder of the flock at ``path``, or None; creates nothing."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holders_record(fd) or {}
    except OSError:
        return None
    finally:
        os.close(fd)  # also drops the shared lock just taken
    return None


def _make_folders(folder: Path) -> list[Path]:
    """``mkdir -p folder``; returns the folders created, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
    return list(reversed(missing))


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _holders_record(fd: int, wait_s: float = 1.0) -> Optional[dict]:
    """The record of the process holding the flock on ``fd``'s file.

    The holder writes it just after taking the lock, over the record a dead holder may have
    left; so an unreadable record, or one of a process gone from this host, is read again for
    up to ``wait_s`` seconds.
    """
    deadline = time.monotonic() + wait_s
    while True:
        record = _read_fd(fd)
        if (record and "pid" in record and not gone_from_here(record)) or time.monotonic() > deadline:
            return record
        time.sleep(0.02)


def _read_fd(fd: int) -> Optional[dict]:
    try:
        data = json.loads(os.pread(fd, 65536, 0).decode() or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------------------
# Object storage: a lease
# ---------------------------------------------------------------------------
class Lease:
    """A renewed lease object at ``path`` on pyarrow file system ``fs`` (see module doc)."""

    def __init__(self, fs, path: str, record: dict, ttl_s: Optional[float] = None,
                 settle_s: Optional[float] = None, say: Optional[Say] = None):
        self.fs, self.path, self.record = fs, path, dict(record)
        self.ttl_s = LEASE_TTL_S if ttl_s is None else ttl_s
        self.settle_s = LEASE_SETTLE_S if settle_s is None else settle_s
        self.say = say
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def acquire(self) -> Optional[dict]:
        """Take the lease, or raise :class:`Held`; returns the lapsed lease taken over, if any."""
        current = self._read()
        if current is not None and self._live(current):
            raise Held(current, self.path)
        self._write()
        time.sleep(self.settle_s)  # a rival's write within the settle time wins or loses here, not later
        after = self._read()
        if not after or after.get("token") != self.record["token"]:
            raise Held(after, self.path)
        self._thread = threading.Thread(target=self._renew, name="study-lease", daemon=True)
        self._thread.start()
        return current

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        current = self._read()
        if current and current.get("token") == self.record["token"]:
            try:
                self.fs.delete_file(self.path)
            except OSError:
                pass  # it expires on its own

    def _live(self, record: dict) -> bool:
        expired = float(record.get("expires", 0)) < time.time()
        return not expired and record.get("token") != self.record["token"] and not gone_from_here(record)

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                current = self._read()
                if current and current.get("token") != self.record["token"]:
                    if self.say:
                        self.say(f"warning: the study's lease {self.path} was taken over by {describe_holder(current)}; "
                                 "two drivers may now run this study")
                    return
                self._write()
            except OSError:
                continue  # a passing store error: try again at the next renewal, well before expiry

    def _write(self) -> None:
        """Write the record whole: an object store shows a new object whole; a local file system
        gets a temporary file renamed into place, so a rival's read never sees two writes mixed
        (pyarrow truncates a local file and then writes it)."""
        import pyarrow.fs  # see _read

        self.record["expires"] = time.time() + self.ttl_s
        data = json.dumps(self.record).encode()
        if not isinstance(self.fs, pyarrow.fs.LocalFileSystem):
            with self.fs.open_output_stream(self.path) as out:
                out.write(data)
            return
        tmp = f"{self.path}.{self.record['token']}.tmp"
        with self.fs.open_output_stream(tmp) as out:
            out.write(data)
        self.fs.move(tmp, self.path)

    def _read(self) -> Optional[dict]:
        import pyarrow.fs  # start-up cost a study on a local folder never needs (docs/performance.md)

        if self.fs.get_file_info(self.path).type == pyarrow.fs.FileType.NotFound:
            return None
        try:
            with self.fs.open_input_stream(self.path) as src:
                data = json.loads(src.read().decode() or "null")
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None


# ---------------------------------------------------------------------------
# The study lock
# ---------------------------------------------------------------------------
def _study_lock(storage_path: str, name: str, say: Optional[Say], create: bool = True):
    """The lock object for study ``name``: a FileLock locally, a Lease on object storage."""
    record = holder_record(study=name)
    if not is_uri(storage_path):
        return FileLock(Path(storage_path) / name / LOCK_FILE, record)
    fs, folder = filesystem(join(storage_path, name))
    if create:
        fs.create_dir(folder, recursive=True)
    return Lease(fs, f"{folder}/{LEASE_FILE}", record, say=say)


def _lease_on_local(lock: FileLock, say: Optional[Say]) -> Lease:
    import pyarrow.fs  # see Lease._read

    path = lock.path.with_name(LEASE_FILE)
    return Lease(pyarrow.fs.LocalFileSystem(), str(path), lock.record, say=say)


def refusal(name: str, held: Held) -> str:
    """The one-line refusal for a held study lock."""
    return f"study {name!r} is being run by {describe_holder(held.record)}; wait for it to end, then retry (its lock: {held.where})"


@contextmanager
def hold_study(storage_path: str, name: str, say: Optional[Say] = None) -> Iterator[None]:
    """Hold study ``name``'s lock for the ``with`` block; LockError (one line) when another process holds it."""
    lock = None
    try:
        lock = _study_lock(storage_path, name, say)
        try:
            left = lock.acquire()
        except OSError as err:
            if not isinstance(lock, FileLock) or err.errno not in _NO_FLOCK:
                raise
            lock = _lease_on_local(lock, say)
            left = lock.acquire()
    except Held as held:
        raise LockError(refusal(name, held)) from None
    except OSError as err:
        where = getattr(lock, "path", f"{storage_path}/{name}")
        raise LockError(f"cannot lock study {name!r} ({where}): {one_line(err)}") from None
    if left and say:
        say(f"note: taking over the lock of study {name!r} left by {describe_holder(left)}, which is no longer running")
    try:
        yield
    finally:
        lock.release()


def study_holder(storage_path: str, name: str) -> Optional[dict]:
    """The record of a process holding study ``name`` now (``{}`` if unreadable), or None; creates nothing."""
    if not is_uri(storage_path):
        return peek_file(Path(storage_path) / name / LOCK_FILE)
    lease = _study_lock(storage_path, name, None, create=False)
    current = lease._read()  # noqa: SLF001 - the same reading the lease itself does
    return current if current is not None and lease._live(current) else None  # noqa: SLF001
