"""The MLflow store a study tracks into: its URI, checked and made usable, and a client bound to it.

Everything talks to MLflow through an explicit tracking URI: Ray workers run in another
working directory, so a relative ``sqlite:///mlflow.db`` must be made absolute by the driver
(:func:`resolve_tracking_uri`) before it is passed on. A new sqlite database is built aside
and linked into place whole (:func:`prepare_store`), so no process sees it half-built.

Whether a URI is usable is checked before Ray starts, by
:func:`study.preflight.paths.check_tracking_uri`.

``mlflow`` is imported inside the functions that talk to a store: its import cost (docs/performance.md,
"Start-up") is one that ``study.run --help``, a refused flag and every importer of this module would pay.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from trainables.errors import one_line

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow 3.x's own default


class TrackingError(RuntimeError):
    """The tracking URI is unusable or MLflow refused an operation. One-line message."""


def resolve_tracking_uri(uri: Optional[str] = None, cwd: Optional[str] = None) -> str:
    """The explicit tracking URI: ``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``.

    A relative sqlite path (or a bare local path) is made absolute against ``cwd`` (default:
    the current directory), so that Ray workers, whose working directory differs, reach the
    same database.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    base = Path(cwd or os.getcwd())
    if uri.startswith("sqlite:///"):
        rest = uri[len("sqlite:///"):]
        path, sep, query = rest.partition("?")
        if path and not path.startswith("/") and path != ":memory:":
            path = str((base / path).resolve())
            return f"sqlite:///{path}{sep}{query}"
        return uri
    if "://" not in uri and not uri.startswith("file:"):
        return (base / uri).resolve().as_uri()  # a bare path: MLflow's file store (refused in 3.x)
    return uri


def is_tracking_server(uri: str) -> bool:
    """Whether ``uri`` names a tracking server (``http://``, ``https://``), which serves its own UI."""
    return uri.lower().startswith(("http://", "https://"))


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of an absolute ``sqlite:////...`` URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].partition("?")[0]
    return Path(path) if path and path != ":memory:" else None


def store_place(uri: str) -> str:
    """How an error line names the store of ``uri``: its sqlite file, else the URI."""
    db = sqlite_path(uri)
    return str(db) if db is not None else uri


def prepare_store(uri: str) -> None:
    """Create a missing sqlite tracking database whole, so nobody sees it half-built.

    MLflow builds a new sqlite store by running its schema migrations in place. A second
    process that opens the file meanwhile (``mlflow ui``, a script polling the study, a Ray
    worker) runs the same migrations at the same time, and one of them fails with
    ``table _alembic_tmp_... already exists``, leaving a broken database. Here the schema is
    built under a private name in the same folder and hard-linked into place only when
    complete; if another process got there first, its database is kept. Other stores, and a
    database that already exists, are left alone.
    """
    db = sqlite_path(uri)
    if db is None or db.exists():
        return
    tmp = db.with_name(f".{db.name}.building-{os.getpid()}")
    try:
        _build_sqlite_schema(f"sqlite:///{tmp}")
        try:
            os.link(tmp, db)  # atomic, and never replaces a database another process made
        except FileExistsError:
            pass
    except Exception as err:  # noqa: BLE001 - say why in one line
        raise TrackingError(f"MLflow tracking URI {uri}: cannot create the database: {one_line(err)}") from None
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
            leftover.unlink(missing_ok=True)


def _build_sqlite_schema(uri: str) -> None:
    """Run MLflow's own store initialisation (schema migrations, default experiment) on ``uri``."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    client.search_experiments(max_results=1)
    engine = getattr(getattr(client._tracking_client, "store", None), "engine", None)
    if engine is not None:
        engine.dispose()  # close the pooled connections to the private file before it is unlinked


def client_for(uri: str):
    """An MlflowClient bound to ``uri`` (never the process-global tracking URI).

    MLflow opens the store as the client is made; a missing sqlite database is first built
    aside and linked into place (:func:`prepare_store`).
    """
    from mlflow import MlflowClient

    prepare_store(uri)
    return MlflowClient(tracking_uri=uri)


def fetch_artifact(client, run_id: str, path: str, folder: str) -> Optional[str]:
    """The local copy, in ``folder``, of artifact ``path`` of run ``run_id``; None when the run has
    no such artifact. TrackingError (one line) when it has one that cannot be read, or when the
    store cannot say: a reader must not take an unreadable file for a missing one."""
    parent = os.path.dirname(path) or None
    try:
        listed = {a.path for a in client.list_artifacts(run_id, parent)}
    except Exception as err:  # noqa: BLE001 - any store failure: say which run, in one line
        raise TrackingError(f"cannot list the artifacts of run {run_id}: {one_line(err)}") from None
    if path not in listed:
        return None
    try:
        return client.download_artifacts(run_id, path, folder)
    except Exception as err:  # noqa: BLE001 - any store failure: say which file, in one line
        raise TrackingError(f"artifact {path} of run {run_id} cannot be read: {one_line(err)}") from None


__all__ = [
    "DEFAULT_TRACKING_URI",
    "TrackingError",
    "resolve_tracking_uri",
    "sqlite_path",
    "prepare_store",
    "client_for",
    "fetch_artifact",
]
