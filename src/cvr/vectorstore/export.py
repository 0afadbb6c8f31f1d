"""Logical export of a published collection (for snapshots) and its restore into any Milvus.

    <dest>/                 (e.g. <snapshot>/collections/<collection>/)
      rows.parquet          every row: id, vector (fixed-size list of float32), linear, field,
                            local_id, raw, bundle; sorted by id
      collection.json       what it is: the collection's name, the alias that pointed at it, its
                            `cvr.table` metadata (row count, checksum, shapes, bundle), the field
                            schema and index Milvus reported, and the sha256 of rows.parquet

An export is made only of an intact collection (its rows read back must match its checksum).
`import_collection` checks rows.parquet against collection.json, refuses a database that
already has the collection, writes it as `publish` does (insert, read back, compare count and
checksum, then move the alias; on failure the partial collection is dropped). Milvus's own
cluster-native backups (milvus-backup, to object storage) are the other half: they copy
segments of a whole cluster; this export is small, engine-neutral and verifiable by sha256.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cvr.ops.manifest import ManifestError, sha256_file, write_json_atomic
from cvr.vectorstore import collection as col
from cvr.vectorstore.client import StoreError, connect, split_store_uri
from cvr.vectorstore.rows import rows_checksum
from cvr.vectorstore.versions import write_verified

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
KIND = "vectorstore_export"
MANIFEST = "collection.json"
ROWS = "rows.parquet"


def export_collection(store_ref: str, root: str | Path) -> dict[str, Any]:
    """Write the collection `[milvus:]URI#name` (name: alias or collection) to root/<collection>.

    That folder must not exist. Returns the content record a snapshot keeps for it.
    """
    uri, name = split_store_uri(store_ref)
    if not name:
        raise StoreError(f"{store_ref!r}: name the collection or alias to export (URI#name)")
    client = connect(uri)
    collection = col.resolve(client, name)
    meta = col.read_meta(client, collection)
    data = col.read_columns(client, collection, int(meta["rows"]))
    checksum = rows_checksum(
        data["id"], data["vector"], data["linear"], data["field"], data["local_id"], data["raw"]
    )
    if len(data["id"]) != meta["rows"] or checksum != meta["checksum"]:
        raise StoreError(
            f"collection {collection!r} (in {uri}): its rows do not match its checksum; "
            "refusing to export a damaged collection"
        )
    dest = Path(root) / collection
    dest.mkdir(parents=True)
    pq.write_table(_table(data, int(meta["vector_dim"]), meta["bundle"]), dest / ROWS)
    alias = meta["alias"] if col.alias_target(client, meta["alias"]) == collection else None
    describe = client.describe_collection(collection)
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "collection": collection,
        "alias": alias,
        "source_uri": uri,
        "meta": meta,
        "schema": [
            {"name": f["name"], "type": str(f["type"]), "params": f.get("params", {})}
            for f in describe["fields"]
        ],
        "index": {k: str(v) for k, v in col.built_index(client, collection, "vector").items()},
        "files": {ROWS: sha256_file(dest / ROWS)},
    }
    write_json_atomic(dest / MANIFEST, manifest)
    log.info("exported %s (%d rows) to %s", collection, meta["rows"], dest)
    return {
        "path": dest.name,
        "kind": KIND,
        "collection": collection,
        "alias": alias,
        "source": uri,
        "rows": meta["rows"],
        "checksum": meta["checksum"],
        "bundle": meta["bundle"],
        "manifest_sha256": sha256_file(dest / MANIFEST),
    }


def read_export(path: str | Path) -> dict[str, Any]:
    """An export's collection.json, with rows.parquet checked against it (ManifestError)."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ManifestError(f"{manifest_path}: missing; {path} is not a collection export")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("kind") != KIND or manifest.get("format_version") != FORMAT_VERSION:
        raise ManifestError(f"{manifest_path}: not a collection export of format {FORMAT_VERSION}")
    for name, digest in manifest["files"].items():
        if not (path / name).is_file():
            raise ManifestError(f"missing file {path / name}")
        actual = sha256_file(path / name)
        if actual != digest:
            raise ManifestError(
                f"changed file {path / name}: sha256 {actual[:12]}… expected {digest[:12]}…"
            )
    return manifest


def import_collection(path: str | Path, uri: str, progress=None) -> str:
    """Recreate an exported collection in the store at `uri` and move its alias; returns it.

    Raises ManifestError for a damaged export and StoreError if the collection already exists
    there or does not verify after writing.
    """
    manifest = read_export(path)
    name, meta = manifest["collection"], manifest["meta"]
    client = connect(uri)
    if client.has_collection(name):
        raise StoreError(
            f"collection {name!r} already exists in {uri}; restore into an empty database "
            "(or drop it first)"
        )
    columns = _columns(pq.read_table(Path(path) / ROWS), meta)
    write_verified(client, name, columns, meta, manifest["alias"], progress=progress)
    log.info("restored %s (%d rows) into %s", name, meta["rows"], uri)
    return name


def restore_snapshot_collections(snapshot: str | Path, uri: str, progress=None) -> list[str]:
    """Verify a snapshot, then recreate every collection it holds in `uri`; returns their names."""
    from cvr.ops.snapshot import COLLECTION_DIR, verify_snapshot

    verify_snapshot(snapshot)
    folders = sorted(p for p in (Path(snapshot) / COLLECTION_DIR).glob("*") if p.is_dir())
    if not folders:
        raise ManifestError(f"{snapshot}: holds no collections ({COLLECTION_DIR}/ is empty)")
    return [import_collection(folder, uri, progress=progress) for folder in folders]


def _table(data: dict[str, Any], vector_dim: int, bundle: str) -> pa.Table:
    flat = pa.array(np.ascontiguousarray(data["vector"], dtype=np.float32).reshape(-1))
    return pa.table(
        {
            "id": pa.array(data["id"], pa.int64()),
            "vector": pa.FixedSizeListArray.from_arrays(flat, vector_dim),
            "linear": pa.array(data["linear"], pa.float32()),
            "field": pa.array(data["field"], pa.int32()),
            "local_id": pa.array(data["local_id"], pa.int64()),
            "raw": pa.array(data["raw"], pa.string()),
            "bundle": pa.array([bundle] * len(data["id"]), pa.string()),
        }
    )


def _columns(table: pa.Table, meta: dict[str, Any]) -> dict[str, Any]:
    bundles = set(table.column("bundle").unique().to_pylist())
    if bundles != {meta["bundle"]}:
        raise ManifestError(f"{ROWS}: bundle column {sorted(bundles)} != {meta['bundle']!r}")
    vectors = table.column("vector").combine_chunks()
    return {
        "id": table.column("id").to_numpy(),
        "vector": vectors.values.to_numpy().reshape(len(table), int(meta["vector_dim"])),
        "linear": table.column("linear").to_numpy(),
        "field": table.column("field").to_numpy(),
        "local_id": table.column("local_id").to_numpy(),
        "raw": table.column("raw").to_pylist(),
        "bundle": meta["bundle"],
    }
