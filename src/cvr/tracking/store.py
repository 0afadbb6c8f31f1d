"""The SQLite MLflow store is created and migrated once, under an inter-process file lock.

MLflow creates a SQLite store's tables and runs its alembic migrations on first use, in every
process that opens it. Several runs starting together on a new output root raced those
migrations (`duplicate column name`, a leftover `_alembic_tmp_experiments` table) and broke the
file for good. `ensure_store(uri)` takes `<db>.lock` (a `filelock.FileLock`), opens the store
(creating and migrating it if needed) and releases the lock; MLflow caches the opened store per
URI in the process, so later clients skip the migration step. Server URIs are left alone.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path

from filelock import FileLock, Timeout

from cvr.startup import late_import

log = logging.getLogger(__name__)

#: Long enough for a cold migration on a loaded machine; a stuck lock is reported, not waited on.
LOCK_TIMEOUT_S = 300.0
_READY: set[str] = set()


class StoreError(RuntimeError):
    """The tracking store cannot be created or opened; the message names the file."""


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///...` URI, else None (server or other store)."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    path = tracking_uri[len(prefix) :].split("?", 1)[0]  # sqlite:////abs -> /abs
    return Path(path) if path and path != ":memory:" else None


def ensure_store(tracking_uri: str) -> None:
    """Create and migrate the SQLite store of `tracking_uri` once, under its file lock.

    Cheap after the first call in a process. Raises StoreError naming the database when its
    folder cannot be written, the disk is full or the lock is not released in time.
    """
    path = sqlite_path(tracking_uri)
    if path is None or tracking_uri in _READY:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{path.parent}: cannot create the MLflow store folder ({exc})") from None
    lock = FileLock(f"{path}.lock", timeout=LOCK_TIMEOUT_S)
    try:
        with lock:
            _open_store(tracking_uri, path)
    except Timeout:
        raise StoreError(
            f"{path}.lock: held for over {LOCK_TIMEOUT_S:.0f}s by another process; if none is "
            "running, delete the lock file"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise StoreError(f"{path}: disk full while creating the MLflow store") from None
        raise StoreError(f"{path}: cannot open the MLflow store ({exc})") from None
    _READY.add(tracking_uri)


def _open_store(tracking_uri: str, path: Path) -> None:
    from mlflow.tracking import MlflowClient

    try:
        # The first query makes MLflow build (tables + migrations) and cache the store, with
        # MLflow's SQLAlchemy store module (sqlalchemy, alembic): imported first as a late import.
        late_import("mlflow.store.tracking.sqlalchemy_store")
        MlflowClient(tracking_uri).search_experiments(max_results=1)
    except Exception as exc:  # MLflow, SQLAlchemy and sqlite3 each raise their own types
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "disk is full" in text:
            raise StoreError(f"{path}: disk full while creating the MLflow store") from None
        raise StoreError(f"{path}: cannot open the MLflow store ({text[:300]})") from None
