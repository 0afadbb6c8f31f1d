"""The collection layout of a published table, its metadata, and the Milvus calls around them.

One collection per published version: fields `id` (INT64 primary key = global feature id),
`vector` (FLOAT_VECTOR, F*k for FFM, k for FM/FwFM), `linear` (FLOAT), `field` (INT32),
`local_id` (INT64), `raw` (VARCHAR) and `bundle` (VARCHAR, the bundle fingerprint). What the
collection is (model kind, shapes, bundle, row count, checksum) is JSON in the collection
property `cvr.table` (Milvus Lite keeps properties across restarts, but not descriptions).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from cvr.vectorstore.client import StoreError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
KIND = "cvr_table"
META_KEY = "cvr.table"
RAW_MAX = 65535  # Milvus's VARCHAR limit: raw values are never cut
FIELDS = ("id", "vector", "linear", "field", "local_id", "raw", "bundle")
INDEX_RETRIES = 3
_INDEX_EXISTS = 35  # Milvus error code of a create_index retry that finds the index built


def create_table_collection(client, name: str, vector_dim: int, meta: Mapping[str, Any]) -> None:
    """Create an empty table collection with a FLAT inner-product index and its metadata."""
    from pymilvus import DataType

    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(vector_dim))
    schema.add_field("linear", DataType.FLOAT)
    schema.add_field("field", DataType.INT32)
    schema.add_field("local_id", DataType.INT64)
    schema.add_field("raw", DataType.VARCHAR, max_length=RAW_MAX)
    schema.add_field("bundle", DataType.VARCHAR, max_length=128)
    # Strong: a publish reads back what it just wrote (a server's default is Bounded staleness).
    client.create_collection(name, schema=schema, consistency_level="Strong")
    client.alter_collection_properties(name, properties={META_KEY: json.dumps(dict(meta))})
    # Lookups are by primary key; the vector index only has to exist for the collection to load.
    ensure_index(client, name, "vector", "FLAT", "IP", {})


def ensure_index(
    client, name: str, field: str, index_type: str, metric: str, params: Mapping[str, Any]
) -> dict[str, Any]:
    """Build an index on `field` and return what Milvus reports it built (describe_index:
    index_type, metric_type and, where the engine reports them, the build `params`).

    A long build can time out in gRPC and its retry fail with code 35 "index already exists":
    that retry means the first attempt went through, so it counts as success.
    """
    from pymilvus.exceptions import MilvusException

    index_params = client.prepare_index_params()
    # pymilvus 3 sends build parameters as separate keys, which Milvus Lite ignores (it builds
    # its defaults: nlist 128, M 16); one JSON `params` key is read by Lite and by servers.
    wrapped = {"params": json.dumps(dict(params))} if params else {}
    index_params.add_index(field, index_type=index_type, metric_type=metric, params=wrapped)
    for attempt in range(1, INDEX_RETRIES + 1):
        try:
            client.create_index(name, index_params)
            break
        except MilvusException as exc:
            if exc.code == _INDEX_EXISTS:
                log.info("%s: index on %s already built (code 35 on retry)", name, field)
                break
            if attempt == INDEX_RETRIES or "timeout" not in str(exc).lower():
                raise
            log.warning("%s: create_index timed out (attempt %d); retrying", name, attempt)
    return built_index(client, name, field)


def built_index(client, name: str, field: str) -> dict[str, Any]:
    """The index Milvus really built on `field` (it may differ from what was asked)."""
    names = client.list_indexes(name, field_name=field)
    if not names:
        raise StoreError(f"collection {name!r}: no index on field {field!r}")
    return dict(client.describe_index(name, names[0]))


def read_meta(client, name: str) -> dict[str, Any]:
    """The `cvr.table` metadata of a collection; StoreError if it is not a published table."""
    if not client.has_collection(name):
        raise StoreError(f"collection {name!r}: not found in the store")
    props = client.describe_collection(name).get("properties") or {}
    text = props.get(META_KEY)
    if text is None:
        raise StoreError(f"collection {name!r}: not a cvr table (no {META_KEY} property)")
    meta = json.loads(text)
    if meta.get("kind") != KIND or meta.get("format_version") != FORMAT_VERSION:
        raise StoreError(
            f"collection {name!r}: {META_KEY} kind {meta.get('kind')!r} format "
            f"{meta.get('format_version')!r}, this cvr reads {KIND!r} format {FORMAT_VERSION}"
        )
    return meta


def resolve(client, name: str) -> str:
    """The collection `name` refers to: itself, or the collection an alias points to."""
    if client.has_collection(name) and name not in _aliases(client):
        return name
    try:
        return client.describe_alias(name)["collection_name"]
    except Exception:
        raise StoreError(f"{name!r}: neither a collection nor an alias in the store") from None


def alias_target(client, alias: str) -> str | None:
    """The collection an alias points to, or None if there is no such alias."""
    if alias not in _aliases(client):
        return None
    return client.describe_alias(alias)["collection_name"]


def move_alias(client, alias: str, collection: str) -> None:
    """Point `alias` at `collection` in one call (create it the first time)."""
    if alias in _aliases(client):
        client.alter_alias(collection, alias)
    else:
        client.create_alias(collection, alias)


def _aliases(client) -> list[str]:
    return list(client.list_aliases().get("aliases", []))


def ensure_loaded(client, name: str) -> None:
    """Load a collection if it is not (Lite and servers bring collections back unloaded)."""
    from pymilvus.client.types import LoadState

    if client.get_load_state(name).get("state") != LoadState.Loaded:
        client.load_collection(name)


def insert_rows(
    client,
    name: str,
    columns: Mapping[str, Any],
    batch_rows: int,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Insert column arrays (FIELDS) in batches; returns rows inserted."""
    n = len(columns["id"])
    done = 0
    for lo in range(0, n, batch_rows):
        hi = min(n, lo + batch_rows)
        ids = columns["id"][lo:hi].tolist()
        vectors = columns["vector"][lo:hi].tolist()
        linear = columns["linear"][lo:hi].tolist()
        field = columns["field"][lo:hi].tolist()
        local = columns["local_id"][lo:hi].tolist()
        raw = columns["raw"][lo:hi]
        bundle = columns["bundle"]
        # MilvusClient takes rows as dicts; building them is pymilvus's price, not ours.
        rows = [
            {
                "id": ids[i],
                "vector": vectors[i],
                "linear": linear[i],
                "field": field[i],
                "local_id": local[i],
                "raw": raw[i],
                "bundle": bundle,
            }
            for i in range(hi - lo)
        ]
        client.insert(name, rows)
        done += hi - lo
        if progress is not None:
            progress(hi - lo)
    client.flush(name)
    return done


def read_columns(
    client,
    name: str,
    id_end: int,
    batch_rows: int = 8192,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Every row with id in [0, id_end) as columns sorted by id (raw: a list of str).

    Tables are dense (ids 0..N-1), so they are read in id ranges with plain queries (pymilvus's
    query_iterator asks Lite for a timestamp it does not implement and logs an error each time).
    """
    ensure_loaded(client, name)
    ids, vectors, linear, field, local, raw, bundles = [], [], [], [], [], [], set()
    for lo in range(0, id_end, batch_rows):
        hi = min(id_end, lo + batch_rows)
        batch = client.query(
            name, filter=f"id >= {lo} and id < {hi}", output_fields=list(FIELDS), limit=hi - lo
        )
        if not batch:
            continue
        ids.append(np.fromiter((r["id"] for r in batch), np.int64, len(batch)))
        vectors.append(np.asarray([r["vector"] for r in batch], dtype=np.float32))
        linear.append(np.fromiter((r["linear"] for r in batch), np.float32, len(batch)))
        field.append(np.fromiter((r["field"] for r in batch), np.int32, len(batch)))
        local.append(np.fromiter((r["local_id"] for r in batch), np.int64, len(batch)))
        raw.extend(r["raw"] for r in batch)
        bundles.update(r["bundle"] for r in batch)
        if progress is not None:
            progress(len(batch))
    if not ids:
        return {"id": np.zeros(0, np.int64), "bundle": sorted(bundles)}
    id_all = np.concatenate(ids)
    order = np.argsort(id_all, kind="stable")
    return {
        "id": id_all[order],
        "vector": np.concatenate(vectors)[order],
        "linear": np.concatenate(linear)[order],
        "field": np.concatenate(field)[order],
        "local_id": np.concatenate(local)[order],
        "raw": [raw[i] for i in order],
        "bundle": sorted(bundles),
    }


def row_count(client, name: str) -> int:
    return int(client.get_collection_stats(name)["row_count"])
