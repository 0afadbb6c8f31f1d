"""Open a vector store by URI: a local path is Milvus Lite, `http://host:port` a Milvus server.

    client = connect("outputs/vectors.db")            # Milvus Lite (embedded, a data directory)
    client = connect("http://127.0.0.1:19530")        # Milvus standalone or cluster
    uri, name = split_store_uri("milvus:outputs/vectors.db#cvr_ffm_live")

The same code runs against both; the URI is the only thing that changes. A Lite data directory
can be open in one process at a time: a second process gets a `StoreError` that says so (checked
with the same lock Lite takes, before Lite starts). Clients are cached per URI in this process,
so opening the same Lite directory twice here reuses the first client.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "milvus:"
SERVER_SCHEMES = ("http://", "https://", "tcp://", "grpc://")
LITE_LOCK = "LOCK"  # the file milvus_lite flocks inside its data directory
CONNECT_TIMEOUT_S = 10.0

_clients: dict[str, object] = {}


class StoreError(RuntimeError):
    """A vector store or collection that cannot be used; the message names it and why."""


def split_store_uri(text: str) -> tuple[str, str | None]:
    """`[milvus:]URI[#name]` -> (URI, name or None); the name is a collection or an alias."""
    text = str(text)
    uri = text[len(PREFIX) :] if text.startswith(PREFIX) else text
    uri, sep, name = uri.partition("#")
    if not uri:
        raise StoreError(f"store URI {text!r}: empty; expected a local path or http://host:port")
    return uri, (name or None) if sep else None


def is_server_uri(uri: str) -> bool:
    """True for a Milvus server URI, False for a Lite path; StoreError for anything else."""
    if uri.startswith(SERVER_SCHEMES):
        return True
    if "://" in uri:
        raise StoreError(
            f"store URI {uri!r}: unknown scheme; expected a local path (Milvus Lite) or "
            "http://host:port (a Milvus server)"
        )
    return False


def connect(uri: str):
    """A `pymilvus.MilvusClient` for `uri` (cached per URI in this process).

    Raises StoreError naming the URI for an unknown scheme, a path that is a file, a Lite
    directory locked by another process, or a server that does not answer.
    """
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    uri, _ = split_store_uri(uri)
    key = uri if is_server_uri(uri) else str(Path(uri).resolve())
    if key in _clients:
        return _clients[key]
    if is_server_uri(uri):
        try:
            client = MilvusClient(uri, timeout=CONNECT_TIMEOUT_S)
        except MilvusException as exc:
            raise StoreError(f"Milvus server {uri}: cannot connect ({exc.message})") from None
    else:
        path = Path(key)
        check_lite_dir(path)
        try:
            client = MilvusClient(str(path))
        except MilvusException as exc:  # e.g. a lock taken between our check and Lite's
            raise StoreError(f"Milvus Lite {path}: cannot open ({exc.message})") from None
    _clients[key] = client
    return client


def close(uri: str) -> None:
    """Close this process's client of `uri`, if any (releases a Lite directory's lock)."""
    uri, _ = split_store_uri(uri)
    key = uri if is_server_uri(uri) else str(Path(uri).resolve())
    client = _clients.pop(key, None)
    if client is not None:
        client.close()
        if not is_server_uri(uri):  # pymilvus keeps Lite running (and locked) until exit
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(key)


def check_lite_dir(path: Path) -> None:
    """StoreError unless `path` can be a Lite data directory that no other process holds."""
    if path.suffix != ".db":  # how pymilvus tells a Lite path from a socket or server address
        raise StoreError(
            f"Milvus Lite {path}: a Lite data directory name must end in .db "
            "(e.g. outputs/vectors.db)"
        )
    if path.exists() and not path.is_dir():
        raise StoreError(
            f"Milvus Lite {path}: is a file; a Lite store is a data directory (give a new or "
            "existing directory path)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path / LITE_LOCK
    if not lock.is_file():
        return
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        raise StoreError(
            f"Milvus Lite {path}: locked by another process (Lite opens a data directory in one "
            "process at a time); stop that process or serve from a Milvus server URI"
        ) from None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
