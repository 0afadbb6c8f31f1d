"""Compiled hash tables that give distinct values provisional ids in first-seen order.

The store builder encodes every row in one pass before the vocabulary is known: each field's
table maps a value to a provisional id (1, 2, ... in the order values first appear; 0 is missing).
Once the train counts are in, `final_ids` turns provisional ids into the Preprocessor's ids
(descending train count, then value), and the stored ids are remapped once. Strings are hashed
with the Preprocessor's `stable_hash` (FNV-1a 64 + splitmix64) and compared byte for byte on a
hash match, so two values never share an id.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


@njit(cache=True, nogil=True, inline="always")
def _mix(z):  # pragma: no cover
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, nogil=True)
def _hash_strings(data, offsets, out):  # pragma: no cover
    for i in range(len(out)):
        h = _FNV_OFFSET
        for p in range(offsets[i], offsets[i + 1]):
            h = (h ^ np.uint64(data[p])) * _FNV_PRIME
        out[i] = _mix(h)


@njit(cache=True, nogil=True)
def _encode_strings(
    data, offsets, valid, out, keys, slots, pool, pool_off, state, start
):  # pragma: no cover
    mask = np.uint64(len(keys) - 1)
    n_ids = state[0]
    used = state[1]
    for i in range(start, len(out)):
        if not valid[i]:
            out[i] = 0
            continue
        s = offsets[i]
        e = offsets[i + 1]
        h = _FNV_OFFSET
        for p in range(s, e):
            h = (h ^ np.uint64(data[p])) * _FNV_PRIME
        h = _mix(h)
        slot = h & mask
        found = 0
        while True:
            ident = slots[slot]
            if ident == 0:
                break
            if keys[slot] == h:
                a = pool_off[ident - 1]
                if pool_off[ident] - a == e - s:
                    same = True
                    for q in range(e - s):
                        if pool[a + q] != data[s + q]:
                            same = False
                            break
                    if same:
                        found = ident
                        break
            slot = (slot + np.uint64(1)) & mask
        if found == 0:
            if (
                (n_ids + 1) * 2 > len(keys)
                or used + (e - s) > len(pool)
                or n_ids + 2 > len(pool_off)
            ):
                state[0] = n_ids
                state[1] = used
                return i  # the caller grows the arrays and resumes here
            for q in range(e - s):
                pool[used + q] = data[s + q]
            used += e - s
            n_ids += 1
            pool_off[n_ids] = used
            keys[slot] = h
            slots[slot] = n_ids
            found = n_ids
        out[i] = found
    state[0] = n_ids
    state[1] = used
    return -1


@njit(cache=True, nogil=True)
def _encode_ints(values, valid, out, keys, slots, table_values, state, start):  # pragma: no cover
    mask = np.uint64(len(keys) - 1)
    n_ids = state[0]
    for i in range(start, len(out)):
        if not valid[i]:
            out[i] = 0
            continue
        v = values[i]
        h = _mix(np.uint64(v))
        slot = h & mask
        found = 0
        while True:
            ident = slots[slot]
            if ident == 0:
                break
            if table_values[ident] == v:
                found = ident
                break
            slot = (slot + np.uint64(1)) & mask
        if found == 0:
            if (n_ids + 1) * 2 > len(keys) or n_ids + 2 > len(table_values):
                state[0] = n_ids
                return i
            n_ids += 1
            table_values[n_ids] = v
            keys[slot] = h
            slots[slot] = n_ids
            found = n_ids
        out[i] = found
    state[0] = n_ids
    return -1


@njit(cache=True, nogil=True)
def _rehash(keys, slots, new_keys, new_slots):  # pragma: no cover
    mask = np.uint64(len(new_keys) - 1)
    for j in range(len(keys)):
        ident = slots[j]
        if ident == 0:
            continue
        slot = keys[j] & mask
        while new_slots[slot] != 0:
            slot = (slot + np.uint64(1)) & mask
        new_keys[slot] = keys[j]
        new_slots[slot] = ident


def _string_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(data uint8, offsets int64 (n + 1,), valid bool (n,)) of a string array, zero-copy."""
    arr = arr.cast(pa.large_string()) if not pa.types.is_large_string(arr.type) else arr
    n = len(arr)
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int64)[arr.offset : arr.offset + n + 1]
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(1, np.uint8)
    if arr.null_count:
        valid = arr.is_valid().to_numpy(zero_copy_only=False)
    else:
        valid = np.ones(n, dtype=bool)
    return data, offsets, valid


def hash_strings(arr: pa.Array) -> np.ndarray:
    """uint64 `stable_hash` of each string (nulls hash like ""), compiled."""
    data, offsets, _ = _string_buffers(pc.fill_null(arr, "") if arr.null_count else arr)
    out = np.empty(len(arr), dtype=np.uint64)
    _hash_strings(data, offsets, out)
    return out


class StringTable:
    """Distinct strings -> provisional ids 1..n in first-seen order (0 for null)."""

    def __init__(self, capacity: int = 1 << 12) -> None:
        self.keys = np.zeros(capacity, dtype=np.uint64)
        self.slots = np.zeros(capacity, dtype=np.int32)
        self.pool = np.empty(capacity * 8, dtype=np.uint8)
        self.pool_off = np.zeros(capacity + 1, dtype=np.int64)
        self.state = np.zeros(2, dtype=np.int64)  # ids used, pool bytes used

    def __len__(self) -> int:
        return int(self.state[0])

    def encode(self, arr: pa.Array) -> np.ndarray:
        """int32 (n,) provisional ids of a string array."""
        data, offsets, valid = _string_buffers(arr)
        out = np.empty(len(arr), dtype=np.int32)
        start = 0
        while True:
            start = _encode_strings(
                data,
                offsets,
                valid,
                out,
                self.keys,
                self.slots,
                self.pool,
                self.pool_off,
                self.state,
                start,
            )
            if start < 0:
                return out
            self._grow(int(offsets[start + 1] - offsets[start]))

    def _grow(self, need_bytes: int) -> None:
        n, used = int(self.state[0]), int(self.state[1])
        if (n + 1) * 2 > len(self.keys):
            keys = np.zeros(len(self.keys) * 2, dtype=np.uint64)
            slots = np.zeros(len(self.keys) * 2, dtype=np.int32)
            _rehash(self.keys, self.slots, keys, slots)
            self.keys, self.slots = keys, slots
        if n + 2 > len(self.pool_off):
            self.pool_off = np.concatenate([self.pool_off, np.zeros_like(self.pool_off)])
        if used + need_bytes > len(self.pool):
            size = max(2 * len(self.pool), used + need_bytes)
            pool = np.empty(size, dtype=np.uint8)
            pool[:used] = self.pool[:used]
            self.pool = pool

    def values(self) -> pa.Array:
        """`large_string` (n,): the value of provisional id i + 1 at position i."""
        n, used = len(self), int(self.state[1])
        offsets = np.ascontiguousarray(self.pool_off[: n + 1])
        data = np.ascontiguousarray(self.pool[:used])
        return pa.Array.from_buffers(
            pa.large_string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
        )


class IntTable:
    """Distinct int64 keys -> provisional ids 1..n in first-seen order (0 where not valid)."""

    def __init__(self, capacity: int = 1 << 8) -> None:
        self.keys = np.zeros(capacity, dtype=np.uint64)
        self.slots = np.zeros(capacity, dtype=np.int32)
        self.table_values = np.zeros(capacity + 1, dtype=np.int64)
        self.state = np.zeros(1, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.state[0])

    def encode(self, values: np.ndarray, valid: np.ndarray) -> np.ndarray:
        out = np.empty(len(values), dtype=np.int32)
        values = np.ascontiguousarray(values, dtype=np.int64)
        valid = np.ascontiguousarray(valid, dtype=bool)
        start = 0
        while True:
            start = _encode_ints(
                values, valid, out, self.keys, self.slots, self.table_values, self.state, start
            )
            if start < 0:
                return out
            if (len(self) + 1) * 2 > len(self.keys):
                keys = np.zeros(len(self.keys) * 2, dtype=np.uint64)
                slots = np.zeros(len(self.keys) * 2, dtype=np.int32)
                _rehash(self.keys, self.slots, keys, slots)
                self.keys, self.slots = keys, slots
            if len(self) + 2 > len(self.table_values):
                self.table_values = np.concatenate(
                    [self.table_values, np.zeros_like(self.table_values)]
                )

    def values(self) -> np.ndarray:
        """int64 (n,): the key of provisional id i + 1 at position i."""
        return self.table_values[1 : len(self) + 1].copy()
