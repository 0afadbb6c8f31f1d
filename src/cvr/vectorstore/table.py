"""A bundle's tables read from a published collection instead of from the bundle.

    predictor = Predictor.load(bundle, embeddings="milvus:outputs/vectors.db", cache_bytes=8 << 20)

`attach_store_tables` checks that the collection holds this bundle's tables (model kind, field
count, dimension, cardinalities and bundle fingerprint, each refused with a message naming the
collection), then swaps the model's embedding and linear tables for `FetchedRows` modules. The
model's own forward pass runs unchanged: per batch, the unique global ids are looked up in the
hot-row cache and the misses fetched in one `get` by primary key; both tables read the same
fetched rows. A feature id the collection lacks is a `StoreError` naming the collection and the
id, never a zero. With `hot_ids` (global ids hottest first, `hot_ids_by_count` of the training
counts) the cache is instead a fixed set of the hottest rows that fit, fetched at load. The
bundle's own tables are never loaded (`load_bundle(tables=False)`): the serving process holds
only the cache, and with Lite in its own process (`LiteServer`) not the database either.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cvr.serving.bundle import Bundle
from cvr.vectorstore import collection as col
from cvr.vectorstore.cache import HotRowCache, RowCache
from cvr.vectorstore.client import StoreError, connect, split_store_uri
from cvr.vectorstore.rows import bundle_fingerprint, model_kind, vector_dim
from cvr.vectorstore.versions import default_alias

log = logging.getLogger(__name__)

FETCH_CHUNK = 512  # ids per `get`


class StoreTables:
    """Rows of one collection by global id: hot-row cache first, then one batched `get`."""

    def __init__(
        self,
        client,
        collection: str,
        meta: dict[str, Any],
        cache_bytes: int = 0,
        hot_ids: np.ndarray | None = None,
    ) -> None:
        self.client = client
        self.collection = collection
        self.meta = meta
        self.vector_dim = int(meta["vector_dim"])
        cards = np.asarray(meta["cardinalities"], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(cards)[:-1]]).astype(np.int64)
        self.cache: RowCache | HotRowCache
        if hot_ids is None:
            self.cache = RowCache(cache_bytes, self.vector_dim)
        else:
            self.cache = HotRowCache(cache_bytes, self.vector_dim)
        self.fetches = 0
        self.fetched_rows = 0
        self.fetch_s = 0.0  # wall time inside the database's `get` (where the store costs)
        self._batch: tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._prefetch: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        if hot_ids is not None:
            self.warm(hot_ids)

    def warm(self, hot_ids: np.ndarray, batch_rows: int = 4096) -> int:
        """Fill the hot-row cache with the first rows of `hot_ids` (global ids, hottest first)
        that fit, fetched in batches straight into the cache's arrays; returns the rows held."""
        hot = np.sort(np.asarray(hot_ids, dtype=np.int64)[: self.cache.capacity_rows])
        if np.any(np.diff(hot) == 0):
            raise ValueError("hot_ids: expected unique global feature ids")
        vectors = np.empty((len(hot), self.vector_dim), dtype=np.float32)
        linear = np.empty(len(hot), dtype=np.float32)
        for lo in range(0, len(hot), batch_rows):
            vectors[lo : lo + batch_rows], linear[lo : lo + batch_rows] = self._fetch(
                hot[lo : lo + batch_rows]
            )
        self.cache.fill(hot, vectors, linear)
        return len(hot)

    @contextlib.contextmanager
    def prefetched(self, ids: np.ndarray):
        """Within the block, forward passes over any rows of field-local ids int (n, F) read
        the rows fetched here once (cache first, then the store), so a large batch can be
        scored in chunks (bounded memory) at the cost of one batch's lookups."""
        unique = np.unique(np.asarray(ids, dtype=np.int64) + self.offsets)
        vectors, linear = self.rows(unique)
        self._prefetch = (unique, vectors, linear)
        try:
            yield
        finally:
            self._prefetch = None

    def rows(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unique int64 global ids (U,) -> (vectors float32 (U, D), linear float32 (U,))."""
        vectors = np.empty((len(ids), self.vector_dim), dtype=np.float32)
        linear = np.empty(len(ids), dtype=np.float32)
        hit, hit_vectors, hit_linear = self.cache.lookup(ids)
        vectors[hit], linear[hit] = hit_vectors, hit_linear
        miss = ~hit
        if miss.any():
            miss_vectors, miss_linear = self._fetch(ids[miss])
            vectors[miss], linear[miss] = miss_vectors, miss_linear
            self.cache.insert(ids[miss], miss_vectors, miss_linear)
        return vectors, linear

    def _fetch(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(ids) <= FETCH_CHUNK:
            return self._fetch_one(ids)
        # pymilvus decodes a result into Python floats (~5 KB a row here): chunks bound that.
        parts = [
            self._fetch_one(ids[lo : lo + FETCH_CHUNK]) for lo in range(0, len(ids), FETCH_CHUNK)
        ]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _fetch_one(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        start = time.perf_counter()
        # A published collection is never written again and was read back in full before its
        # alias moved, so reads need no consistency wait (Strong costs a server ~0.4 s a get).
        got = self.client.get(
            self.collection,
            ids=ids.tolist(),
            output_fields=["vector", "linear"],
            consistency_level="Eventually",
        )
        self.fetch_s += time.perf_counter() - start
        self.fetches += 1
        self.fetched_rows += len(ids)
        found = np.fromiter((r["id"] for r in got), np.int64, len(got))
        if len(found) != len(ids) or not np.isin(ids, found).all():
            missing = int(ids[~np.isin(ids, found)][0])
            field = int(np.searchsorted(self.offsets, missing, side="right") - 1)
            raise StoreError(
                f"collection {self.collection!r}: no row for feature id {missing} (field "
                f"{field}, local id {missing - self.offsets[field]}); the collection is "
                "incomplete or not this bundle's"
            )
        order = np.argsort(ids)
        position = order[np.searchsorted(ids[order], found)]  # where each returned row goes
        vectors = np.empty((len(ids), self.vector_dim), dtype=np.float32)
        linear = np.empty(len(ids), dtype=np.float32)
        vectors[position] = np.asarray([r["vector"] for r in got], dtype=np.float32)
        linear[position] = np.fromiter((r["linear"] for r in got), np.float32, len(got))
        return vectors, linear

    def batch_rows(self, ids: torch.Tensor, column: str) -> torch.Tensor:
        """ids int (B, F) field-local -> float32 (B, F, D) vectors or (B, F, 1) linear weights.

        The rows of the last batch are kept, so the linear and the embedding table of one
        forward pass share one fetch.
        """
        if self._batch is None or self._batch[0] is not ids:
            global_ids = ids.numpy().astype(np.int64) + self.offsets
            if self._prefetch is not None:
                unique, vectors, linear = self._prefetch
                inverse = np.searchsorted(unique, global_ids)
            else:
                unique, inverse = np.unique(global_ids, return_inverse=True)
                vectors, linear = self.rows(unique)
            self._batch = (ids, inverse.reshape(global_ids.shape), vectors, linear)
        _, inverse, vectors, linear = self._batch
        if column == "vector":
            return torch.from_numpy(vectors[inverse])
        return torch.from_numpy(linear[inverse][..., None])

    def end_batch(self) -> None:
        self._batch = None

    def reset_stats(self) -> None:
        self.cache.reset_stats()
        self.fetches = self.fetched_rows = 0
        self.fetch_s = 0.0

    def stats(self) -> dict[str, float]:
        return {
            "cache_bytes": float(self.cache.nbytes),
            "cache_rows": float(self.cache.capacity_rows),
            "cache_hit_rate": self.cache.hit_rate,
            "fetches": float(self.fetches),
            "fetched_rows": float(self.fetched_rows),
            "fetch_s": self.fetch_s,
        }


class FetchedRows(nn.Module):
    """Stands in for a model's embedding or linear table: returns the rows the store fetched."""

    def __init__(self, tables: StoreTables, column: str, dim: int) -> None:
        super().__init__()
        self.tables = tables
        self.column = column
        self.dim = dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.tables.batch_rows(ids, self.column)


def feature_counts(ids: np.ndarray, cardinalities: list[int], chunk_rows: int = 1 << 16):
    """int64 (N,) occurrences of every global feature id in field-local ids int (n, F)."""
    cards = np.asarray(cardinalities, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(cards)[:-1]])
    counts = np.zeros(int(cards.sum()), dtype=np.int64)
    for lo in range(0, len(ids), chunk_rows):
        chunk = np.asarray(ids[lo : lo + chunk_rows], dtype=np.int64) + offsets
        counts += np.bincount(chunk.ravel(), minlength=len(counts))
    return counts


def hot_ids_by_count(counts: np.ndarray, cardinalities: list[int]) -> np.ndarray:
    """Global ids in the order a hot-row cache fills: each field's local id 0 first, then the
    rest by descending training count (ties by id).

    Local id 0 is where serving sends every value unseen in training (and missing values), so
    it is hot at serving time whatever its training count (often 0 when min_count is 1).
    """
    counts = np.asarray(counts)
    cards = np.asarray(cardinalities, dtype=np.int64)
    unseen = np.zeros(len(counts), dtype=bool)
    unseen[np.concatenate([[0], np.cumsum(cards)[:-1]])] = True
    return np.lexsort((-counts, ~unseen)).astype(np.int64)


def open_store_tables(
    bundle: Bundle, embeddings: str, cache_bytes: int = 0, hot_ids: np.ndarray | None = None
) -> StoreTables:
    """The collection `embeddings` names (`[milvus:]URI[#alias or collection]`) for `bundle`.

    Without a name, the alias `cvr_<kind>_live`. Raises StoreError if the collection is not a
    table of this bundle: another model kind, field count, dimension, cardinalities or bundle.
    """
    uri, name = split_store_uri(embeddings)
    kind = model_kind(bundle.model)
    client = connect(uri)
    name = name or default_alias(kind)
    collection = col.resolve(client, name)
    meta = col.read_meta(client, collection)
    where = f"collection {collection!r} (in {uri})"
    num_fields, dim = int(bundle.model.num_fields), int(bundle.model.dim)
    expected = {
        "model": kind,
        "num_fields": num_fields,
        "dim": dim,
        "vector_dim": vector_dim(kind, num_fields, dim),
        "cardinalities": [int(c) for c in bundle.model.cardinalities],
        "bundle": bundle_fingerprint(bundle),
    }
    for key, want in expected.items():
        if meta.get(key) != want:
            have = meta.get(key)
            raise StoreError(
                f"{where}: {key} {_short(have)} does not match the bundle's {_short(want)} "
                f"({Path(bundle.path)}); publish this bundle or name its collection"
            )
    col.ensure_loaded(client, collection)
    log.info("serving %s tables from %s", kind, where)
    return StoreTables(client, collection, meta, cache_bytes=cache_bytes, hot_ids=hot_ids)


def attach_store_tables(
    bundle: Bundle, embeddings: str, cache_bytes: int = 0, hot_ids: np.ndarray | None = None
) -> StoreTables:
    """Swap the bundle model's tables for rows read from the store (frees the bundle's).

    `hot_ids` (global ids, hottest first): fill a fixed hot-row cache with the hottest rows
    that fit in `cache_bytes`, instead of an LRU cache filled by traffic.
    """
    tables = open_store_tables(bundle, embeddings, cache_bytes, hot_ids)
    model = bundle.model
    model.embedding = FetchedRows(tables, "vector", tables.vector_dim)
    model.linear = FetchedRows(tables, "linear", 1)
    return tables


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
