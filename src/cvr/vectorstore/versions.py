"""Versioned publishing: each publish writes a new collection, verifies it, then moves an alias.

    result = publish("outputs/vectors.db", "outputs/runs/<run>/bundle")   # alias cvr_ffm_live
    list_versions("outputs/vectors.db")                                    # every version
    rollback("outputs/vectors.db", "cvr_ffm_live")                         # alias -> previous
    prune("outputs/vectors.db", "cvr_ffm_live", keep=2)                    # drop older versions

Versions of alias A are the collections `A_v0001`, `A_v0002`, ... A publish inserts every row,
reads the whole collection back and compares its row count and checksum (`rows.rows_checksum`)
with what it meant to write; only then does the alias move (one `alter_alias` call, atomic for
readers). Any failure before that drops the new collection and leaves the alias where it was.
The live version is never pruned.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvr.serving.bundle import MANIFEST, Bundle, load_bundle
from cvr.vectorstore import collection as col
from cvr.vectorstore.client import StoreError, connect
from cvr.vectorstore.rows import TableRows, rows_checksum, table_rows

log = logging.getLogger(__name__)

BATCH_ROWS = 4096
Progress = Callable[[str, int], Callable[[int], None]]  # (label, total) -> advance(n)


@dataclass(frozen=True)
class PublishResult:
    collection: str
    alias: str
    previous: str | None  # the collection the alias pointed to before, if any
    rows: int
    checksum: str
    insert_s: float
    verify_s: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / max(self.insert_s + self.verify_s, 1e-9)


@dataclass(frozen=True)
class VersionInfo:
    collection: str
    alias: str
    version: int
    live: bool
    meta: dict[str, Any]


def default_alias(kind: str) -> str:
    return f"cvr_{kind}_live"


@dataclass(frozen=True)
class PublishSettings:
    uri: str
    alias: str | None


def publish_settings(value: Any, default_uri: str | Path) -> PublishSettings | None:
    """The training config's `publish`: false/null (off), true, or {uri: ..., alias: ...}.

    Raises ValueError naming the key for anything else.
    """
    if value is None or value is False:
        return None
    if value is True:
        return PublishSettings(str(default_uri), None)
    if isinstance(value, Mapping) and set(value) <= {"uri", "alias"}:
        alias = value.get("alias")
        if alias is not None:
            _check_name(str(alias))
        return PublishSettings(str(value.get("uri") or default_uri), alias)
    raise ValueError(f"publish: expected false, true or {{uri: URI, alias: NAME}}, got {value!r}")


def resolve_bundle_dir(path: str | Path) -> Path:
    """A bundle folder, or a run folder that holds one in `bundle/`."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    if (path / "bundle" / MANIFEST).is_file():
        return path / "bundle"
    raise FileNotFoundError(f"{path}: neither a serving bundle nor a run folder with bundle/")


def publish(
    uri: str,
    bundle: str | Path | Bundle,
    alias: str | None = None,
    batch_rows: int = BATCH_ROWS,
    progress: Progress | None = None,
) -> PublishResult:
    """Publish a bundle's tables to a new version of `alias` (default `cvr_<kind>_live`).

    Returns what was written; raises (after dropping the partial collection) on any failure.
    """
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(resolve_bundle_dir(bundle))
    rows = table_rows(bundle)
    alias = alias or default_alias(rows.kind)
    _check_name(alias)
    client = connect(uri)
    name = f"{alias}_v{_next_version(client, alias):04d}"
    meta = {
        "format_version": col.FORMAT_VERSION,
        "kind": col.KIND,
        "model": rows.kind,
        "num_fields": rows.num_fields,
        "dim": rows.dim,
        "vector_dim": rows.vector_dim,
        "cardinalities": rows.cardinalities,
        "bundle": rows.bundle,
        "bundle_path": str(Path(bundle.path).resolve()),
        "rows": len(rows.linear),
        "checksum": rows.checksum(),
        "alias": alias,
        "created_unix": time.time(),
    }
    previous = col.alias_target(client, alias)
    insert_s, verify_s = write_verified(
        client, name, _columns(rows), meta, alias, batch_rows=batch_rows, progress=progress
    )
    log.info("published %s (%d rows); alias %s -> %s", name, meta["rows"], alias, name)
    return PublishResult(
        collection=name,
        alias=alias,
        previous=previous,
        rows=meta["rows"],
        checksum=meta["checksum"],
        insert_s=insert_s,
        verify_s=verify_s,
    )


def write_verified(
    client,
    name: str,
    columns: dict[str, Any],
    meta: dict[str, Any],
    alias: str | None,
    batch_rows: int = BATCH_ROWS,
    progress: Progress | None = None,
) -> tuple[float, float]:
    """Create collection `name`, insert `columns`, verify, then point `alias` at it.

    On any failure the new collection is dropped and the alias is untouched. Returns the
    seconds spent inserting and verifying.
    """
    col.create_table_collection(client, name, int(meta["vector_dim"]), meta)
    try:
        start = time.perf_counter()
        col.insert_rows(client, name, columns, batch_rows, _bar(progress, "insert", meta))
        inserted = time.perf_counter()
        verify_collection(client, name, meta, _bar(progress, "verify", meta))
        verified = time.perf_counter()
        if alias is not None:
            col.move_alias(client, alias, name)
    except BaseException:
        log.error("writing %s failed; dropping the partial collection", name)
        _drop_quietly(client, name)
        raise
    return inserted - start, verified - inserted


def verify_collection(
    client, name: str, meta: dict[str, Any] | None = None, progress=None
) -> dict[str, Any]:
    """Read every row back; StoreError unless the count and checksum equal the metadata's."""
    meta = meta or col.read_meta(client, name)
    data = col.read_columns(client, name, meta["rows"], progress=progress)
    counted = col.row_count(client, name)
    if len(data["id"]) != meta["rows"] or counted != meta["rows"]:
        raise StoreError(
            f"collection {name!r}: {counted} rows in the collection, {len(data['id'])} of ids "
            f"0..{meta['rows'] - 1} read back, {meta['rows']} written"
        )
    if meta["rows"]:
        checksum = rows_checksum(
            data["id"], data["vector"], data["linear"], data["field"], data["local_id"], data["raw"]
        )
        if checksum != meta["checksum"]:
            raise StoreError(
                f"collection {name!r}: checksum {checksum[:12]}… of the rows read back differs "
                f"from {meta['checksum'][:12]}… of the rows written"
            )
    return meta


def list_versions(uri: str, alias: str | None = None) -> list[VersionInfo]:
    """Published versions (of one alias, or all), oldest first per alias."""
    client = connect(uri)
    found = []
    for name in sorted(client.list_collections()):
        match = re.fullmatch(r"(.+)_v(\d+)", name)
        if match is None or (alias is not None and match.group(1) != alias):
            continue
        try:
            meta = col.read_meta(client, name)
        except StoreError:
            continue  # a collection of someone else's that happens to look like a version
        family = match.group(1)
        found.append(
            VersionInfo(
                collection=name,
                alias=family,
                version=int(match.group(2)),
                live=col.alias_target(client, family) == name,
                meta=meta,
            )
        )
    return sorted(found, key=lambda v: (v.alias, v.version))


def rollback(uri: str, alias: str, to: str | None = None) -> tuple[str | None, str]:
    """Move `alias` to collection `to` (default: the newest version older than the live one).

    Returns (previous target, new target).
    """
    versions = list_versions(uri, alias)
    client = connect(uri)
    current = col.alias_target(client, alias)
    if to is None:
        live = next((v.version for v in versions if v.collection == current), None)
        older = [v for v in versions if live is None or v.version < live]
        if not older:
            raise StoreError(f"alias {alias!r}: no version older than {current!r} to roll back to")
        to = older[-1].collection
    elif to not in {v.collection for v in versions}:
        raise StoreError(f"alias {alias!r}: {to!r} is not one of its versions")
    col.move_alias(client, alias, to)
    log.info("alias %s: %s -> %s", alias, current, to)
    return current, to


def prune(uri: str, alias: str, keep: int) -> list[str]:
    """Drop all but the newest `keep` versions of `alias` (never the live one); returns drops."""
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    versions = list_versions(uri, alias)
    newest = {v.collection for v in versions[len(versions) - keep :]} if keep else set()
    doomed = [v.collection for v in versions if not v.live and v.collection not in newest]
    client = connect(uri)
    for name in doomed:
        client.drop_collection(name)
        log.info("pruned %s", name)
    return doomed


def _columns(rows: TableRows) -> dict[str, Any]:
    return {
        "id": rows.ids,
        "vector": rows.vectors,
        "linear": rows.linear,
        "field": rows.field,
        "local_id": rows.local_id,
        "raw": rows.raw,
        "bundle": rows.bundle,
    }


def _next_version(client, alias: str) -> int:
    numbers = [
        int(m.group(1))
        for name in client.list_collections()
        if (m := re.fullmatch(re.escape(alias) + r"_v(\d+)", name))
    ]
    return max(numbers, default=0) + 1


def _check_name(alias: str) -> None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,200}", alias):
        raise ValueError(f"alias {alias!r}: expected letters, digits and underscores")


def _bar(progress: Progress | None, label: str, meta: dict[str, Any]):
    return progress(label, int(meta["rows"])) if progress is not None else None


def _drop_quietly(client, name: str) -> None:
    try:
        if client.has_collection(name):
            client.drop_collection(name)
    except Exception as exc:  # the original failure matters more than this one
        log.error("could not drop partial collection %s: %s", name, exc)
