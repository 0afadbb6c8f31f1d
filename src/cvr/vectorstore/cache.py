"""A hot-row cache bounded in bytes: rows by global feature id, vectorised over a batch.

Set-associative (`ways` slots per set, least recently used slot replaced), with a global id's
set chosen by a multiplicative hash, so a batch's lookups and inserts are a few numpy gathers
and scatters: no per-row Python and no dict. Everything it holds (rows, weights, tags, use
stamps) counts against `capacity_bytes`.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: spreads dense ids over the sets


class _HitCounts:
    """Lookups and hits of a cache (both caches count the same way: unique ids per batch)."""

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {capacity_bytes}")
        self.lookups = 0
        self.hits = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    def reset_stats(self) -> None:
        self.lookups = self.hits = 0


class RowCache(_HitCounts):
    """Up to `capacity_bytes` of (vector float32 (D,), linear float32) rows keyed by int64 id."""

    def __init__(self, capacity_bytes: int, vector_dim: int, ways: int = 8) -> None:
        super().__init__(capacity_bytes)
        self.vector_dim = int(vector_dim)
        self.ways = int(ways)
        row_bytes = 4 * self.vector_dim + 4 + 8 + 8  # vector, linear, tag, stamp
        self.sets = int(capacity_bytes) // (row_bytes * self.ways)
        self.tags = np.full((self.sets, self.ways), -1, dtype=np.int64)
        self.stamps = np.zeros((self.sets, self.ways), dtype=np.int64)
        self.vectors = np.zeros((self.sets, self.ways, self.vector_dim), dtype=np.float32)
        self.linear = np.zeros((self.sets, self.ways), dtype=np.float32)
        self.clock = 0

    @property
    def capacity_rows(self) -> int:
        return self.sets * self.ways

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.tags, self.stamps, self.vectors, self.linear))

    def _set_of(self, ids: np.ndarray) -> np.ndarray:
        hashed = (ids.astype(np.uint64) * _GOLDEN) >> np.uint64(20)
        return (hashed % np.uint64(self.sets)).astype(np.int64)

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unique int64 ids (U,) -> (hit bool (U,), vectors (H, D), linear (H,)) of the hits.

        The hit rows are in the order of `ids[hit]`; their slots count as just used.
        """
        self.lookups += len(ids)
        if self.sets == 0 or len(ids) == 0:
            empty = np.zeros((0, self.vector_dim), np.float32)
            return np.zeros(len(ids), bool), empty, np.zeros(0, np.float32)
        s = self._set_of(ids)
        match = self.tags[s] == ids[:, None]  # (U, ways)
        hit = match.any(axis=1)
        hs, hw = s[hit], match[hit].argmax(axis=1)
        self.clock += 1
        self.stamps[hs, hw] = self.clock
        self.hits += int(hit.sum())
        return hit, self.vectors[hs, hw], self.linear[hs, hw]

    def insert(self, ids: np.ndarray, vectors: np.ndarray, linear: np.ndarray) -> None:
        """Store rows of unique ids not in the cache, replacing each set's least recently used.

        Ids of one batch that fall in the same set take its slots in LRU order; beyond `ways`
        of them, the rest are not cached.
        """
        if self.sets == 0 or len(ids) == 0:
            return
        s = self._set_of(ids)
        order = np.argsort(s, kind="stable")
        sorted_sets = s[order]
        first = np.searchsorted(sorted_sets, sorted_sets, side="left")
        rank = np.empty(len(ids), dtype=np.int64)
        rank[order] = np.arange(len(ids)) - first  # position of each id among its set's ids
        keep = rank < self.ways
        s, rank = s[keep], rank[keep]
        lru = np.argsort(self.stamps[s], axis=1, kind="stable")  # (K, ways), oldest first
        way = lru[np.arange(len(s)), rank]
        self.clock += 1
        self.tags[s, way] = ids[keep]
        self.vectors[s, way] = vectors[keep]
        self.linear[s, way] = linear[keep]
        self.stamps[s, way] = self.clock


class HotRowCache(_HitCounts):
    """A fixed set of rows (the hottest that fit in `capacity_bytes`), filled once, never evicted.

    For traffic drawn from a known frequency (the training data's), the rows seen most often in
    training are the best set to hold: misses are fetched but not admitted, so a burst of rare
    ids cannot push hot rows out (which an LRU cache does at batch 1). Same lookup interface as
    RowCache; rows are kept sorted by id and found with one `searchsorted` per batch.
    """

    def __init__(self, capacity_bytes: int, vector_dim: int) -> None:
        super().__init__(capacity_bytes)
        self.vector_dim = int(vector_dim)
        self.row_bytes = 4 * self.vector_dim + 4 + 8  # vector, linear, id
        self.capacity_rows = int(capacity_bytes) // self.row_bytes
        self.ids = np.zeros(0, dtype=np.int64)
        self.vectors = np.zeros((0, self.vector_dim), dtype=np.float32)
        self.linear = np.zeros(0, dtype=np.float32)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.ids, self.vectors, self.linear))

    def fill(self, ids: np.ndarray, vectors: np.ndarray, linear: np.ndarray) -> None:
        """Hold these rows (unique ids, at most `capacity_rows`), replacing what was held."""
        if len(ids) > self.capacity_rows:
            raise ValueError(f"{len(ids)} rows do not fit in {self.capacity_rows} cache rows")
        if len(ids) > 1 and not np.all(np.diff(ids) > 0):  # sorted already: no copies
            order = np.argsort(ids, kind="stable")
            ids, vectors, linear = ids[order], vectors[order], linear[order]
        self.ids = np.ascontiguousarray(ids, dtype=np.int64)
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.linear = np.ascontiguousarray(linear, dtype=np.float32)

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unique int64 ids (U,) -> (hit bool (U,), vectors (H, D), linear (H,)) of the hits."""
        self.lookups += len(ids)
        if len(self.ids) == 0 or len(ids) == 0:
            empty = np.zeros((0, self.vector_dim), np.float32)
            return np.zeros(len(ids), bool), empty, np.zeros(0, np.float32)
        pos = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        hit = self.ids[pos] == ids
        self.hits += int(hit.sum())
        where = pos[hit]
        return hit, self.vectors[where], self.linear[where]

    def insert(self, ids: np.ndarray, vectors: np.ndarray, linear: np.ndarray) -> None:
        """Misses are not admitted: the held set is the hottest by training frequency."""
