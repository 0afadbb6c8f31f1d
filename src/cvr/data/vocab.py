"""Compiled hash tables that give distinct values provisional ids in first-seen order.

The store builder encodes every row in one pass before the vocabulary is known: each field's
table maps a value to a provisional id (1, 2, ... in the order values first appear; 0 is missing).
Once the train counts are in, `final_ids` turns provisional ids into the Preprocessor's ids
(descending train count, then value), and the stored ids are remapped once (`cvr.data.remap`;
numeric criteo_log fields have `cvr.data.log_table`). Strings are hashed
8 bytes at a time (splitmix64 steps) and compared byte for byte on a hash match, so two values
never share an id even when their 64-bit hashes collide (tested with truncated hashes). Train
counts are kept by the caller (`count_ids`), so a reader thread can fill a table while the
encoder counts the rows of an earlier chunk.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from cvr.data.arrow_numpy import to_numpy

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


@intrinsic
def _prefetch(typingctx, arr, i, j):  # pragma: no cover
    """Hint the CPU to load arr[i, j]'s cache line (llvm.prefetch, read, keep in all levels)."""
    sig = types.void(arr, i, j)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, signature.args[0], ary, args[1:])
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch"
        )
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


_AHEAD = 16  # rows whose table slot is prefetched ahead of the probe


@njit(cache=True, nogil=True, inline="always")
def _word(data, p, n):  # pragma: no cover
    # n (0..8) bytes from p, little-endian; with n = 8 LLVM turns this into one load.
    w = np.uint64(0)
    for q in range(n):
        w |= np.uint64(data[p + q]) << np.uint64(8 * q)
    return w


_MISSING = np.uint64(0xFFFFFFFFFFFFFFFF)  # the length word of a missing value's key


@njit(cache=True, nogil=True, inline="always")
def _span_key(data, s, e, empty_is_missing):  # pragma: no cover
    # (hash, bytes 0..8, bytes 8..16, length) of data[s:e]; length all-ones for a missing
    # value. The hash is internal to the table (the final ids never depend on it): one mix for
    # the first 16 bytes, one more per further 8.
    if s < 0 or (e <= s and empty_is_missing):
        return np.uint64(0), np.uint64(0), np.uint64(0), _MISSING
    n = e - s
    if s + 16 <= len(data):  # two whole words, masked to the value's length
        w0 = _word(data, s, 8)
        w1 = _word(data, s + 8, 8)
        if n < 8:
            w0 &= (np.uint64(1) << np.uint64(8 * n)) - np.uint64(1)
            w1 = np.uint64(0)
        elif n < 16:
            w1 &= (np.uint64(1) << np.uint64(8 * (n - 8))) - np.uint64(1)
    else:
        w0 = _word(data, s, min(n, 8))
        w1 = _word(data, s + 8, min(max(n - 8, 0), 8))
    h = _mix((w0 ^ (np.uint64(n) * np.uint64(0x9E3779B97F4A7C15))) + w1 * _FNV_PRIME)
    for p in range(s + 16, e, 8):
        h = _mix(h ^ _word(data, p, min(8, e - p)))
    return h, w0, w1, np.uint64(n)


@njit(cache=True, nogil=True)
def _span_keys(data, starts, ends, empty_is_missing, keys):  # pragma: no cover
    for i in range(len(starts)):
        h, w0, w1, n = _span_key(data, starts[i], ends[i], empty_is_missing)
        keys[i, 0] = h
        keys[i, 1] = w0
        keys[i, 2] = w1
        keys[i, 3] = n


@njit(cache=True, nogil=True)
def _span_keys_rows(data, col_start, col_end, slots, empty_is_missing, keys):  # pragma: no cover
    # Line by line: a line's values lie together in the buffer, so it is read once, not once
    # per column (0.93 -> 0.25 us per Criteo line, 26 columns).
    for i in range(col_start.shape[1]):
        for q in range(len(slots)):
            k = slots[q]
            h, w0, w1, n = _span_key(data, col_start[k, i], col_end[k, i], empty_is_missing)
            keys[q, i, 0] = h
            keys[q, i, 1] = w0
            keys[q, i, 2] = w1
            keys[q, i, 3] = n


def span_keys(
    data: np.ndarray,
    col_start: np.ndarray,
    col_end: np.ndarray,
    slots: list[int],
    empty_is_missing: bool,
) -> np.ndarray:
    """uint64 (len(slots), n, 4): the table keys of the values data[col_start[k, i]:col_end[k,
    i]] for k in `slots` (a view of line-major (n, K) spans reads fastest), for
    `StringTable.encode_spans(..., keys=)`."""
    slots = np.asarray(slots, dtype=np.int64)
    keys = np.empty((len(slots), col_start.shape[1], 4), dtype=np.uint64)
    _span_keys_rows(data, col_start, col_end, slots, empty_is_missing, keys)
    return keys


@njit(cache=True, nogil=True)
def _encode_spans(
    data, starts, ends, keys, out, table, pool, pool_off, state, hmask, start
):  # pragma: no cover
    # table[slot] = (hash, id | length << 32, bytes 0..8, bytes 8..16): 32 bytes, so one cache
    # line decides a lookup of a value up to 16 bytes; longer values are compared further in
    # the pool. Two values whose hashes collide still get two ids (the bytes decide).
    mask = np.uint64(len(table) - 1)
    n_ids = state[0]
    used = state[1]
    n = len(starts)
    for i in range(start, min(start + _AHEAD, n)):
        _prefetch(table, (keys[i, 0] & hmask) & mask, 0)
    for i in range(start, n):
        if i + _AHEAD < n:
            _prefetch(table, (keys[i + _AHEAD, 0] & hmask) & mask, 0)
        length = keys[i, 3]
        if length == _MISSING:
            out[i] = 0
            continue
        s = starts[i]
        e = ends[i]
        h = keys[i, 0] & hmask
        slot = h & mask
        found = 0
        while True:
            meta = table[slot, 1]
            ident = np.int64(meta & np.uint64(0xFFFFFFFF))
            if ident == 0:
                break
            if (
                table[slot, 0] == h
                and (meta >> np.uint64(32)) == length
                and table[slot, 2] == keys[i, 1]
                and table[slot, 3] == keys[i, 2]
            ):
                same = True
                if e - s > 16:
                    a = pool_off[ident - 1]
                    for q in range(16, e - s):
                        if pool[a + q] != data[s + q]:
                            same = False
                            break
                if same:
                    found = ident
                    break
            slot = (slot + np.uint64(1)) & mask
        if found == 0:
            if (
                (n_ids + 1) * 2 > len(table)
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
            table[slot, 0] = h
            table[slot, 1] = np.uint64(n_ids) | (length << np.uint64(32))
            table[slot, 2] = keys[i, 1]
            table[slot, 3] = keys[i, 2]
            found = n_ids
        out[i] = found
    state[0] = n_ids
    state[1] = used
    return -1


@njit(cache=True, nogil=True)
def count_ids(ids, column, train, counts):  # pragma: no cover
    """counts[ids[i, column]] += 1 for each row i in `train` (counts long enough)."""
    for i in range(ids.shape[0]):
        if train[i]:
            counts[ids[i, column]] += 1


@njit(cache=True, nogil=True)
def _rehash_strings(table, new_table):  # pragma: no cover
    mask = np.uint64(len(new_table) - 1)
    for j in range(len(table)):
        if table[j, 1] == 0:
            continue
        slot = table[j, 0] & mask
        while new_table[slot, 1] != 0:
            slot = (slot + np.uint64(1)) & mask
        new_table[slot] = table[j]


def _string_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(data uint8, offsets (n + 1,), valid bool (n,)) of a string array, zero-copy."""
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = arr.cast(pa.large_string())
    n = len(arr)
    bufs = arr.buffers()
    width = np.int64 if pa.types.is_large_string(arr.type) else np.int32  # no offsets copy
    offsets = np.frombuffer(bufs[1], dtype=width)[arr.offset : arr.offset + n + 1]
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(1, np.uint8)
    if arr.null_count:
        valid = to_numpy(arr.is_valid())
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
    """Distinct strings -> provisional ids 1..n in first-seen order (0 for missing).

    `hash_bits` below 64 truncates the table's hashes (tests use it to force collisions).
    """

    def __init__(self, capacity: int = 1 << 12, hash_bits: int = 64) -> None:
        self.table = np.zeros((capacity, 4), dtype=np.uint64)
        self.pool = np.empty(capacity * 8, dtype=np.uint8)
        self.pool_off = np.zeros(capacity + 1, dtype=np.int64)
        self.state = np.zeros(2, dtype=np.int64)  # ids used, pool bytes used
        self.hmask = np.uint64((1 << hash_bits) - 1)

    def __len__(self) -> int:
        return int(self.state[0])

    def encode(self, arr: pa.Array) -> np.ndarray:
        """int32 (n,) provisional ids of a string array (null -> 0, "" is a value)."""
        data, offsets, valid = _string_buffers(arr)
        starts = np.where(valid, offsets[:-1], -1)
        return self.encode_spans(data, starts, offsets[1:], empty_is_missing=False)

    def encode_spans(
        self,
        data: np.ndarray,
        starts: np.ndarray,
        ends: np.ndarray,
        empty_is_missing: bool,
        keys: np.ndarray | None = None,
    ) -> np.ndarray:
        """int32 (n,) provisional ids of the values data[starts[i]:ends[i]] (starts < 0:
        missing), looked up where they lie: a reader's line buffer, no copy. The keys of every
        value are computed first (or given: `span_keys`), so each probe's slot can be
        prefetched a few rows ahead."""
        out = np.empty(len(starts), dtype=np.int32)
        if keys is None:
            keys = np.empty((len(starts), 4), dtype=np.uint64)
            _span_keys(data, starts, ends, empty_is_missing, keys)
        start = 0
        while True:
            start = _encode_spans(
                data,
                starts,
                ends,
                keys,
                out,
                self.table,
                self.pool,
                self.pool_off,
                self.state,
                self.hmask,
                start,
            )
            if start < 0:
                return out
            self._grow(int(ends[start] - starts[start]))

    def _grow(self, need_bytes: int) -> None:
        n, used = int(self.state[0]), int(self.state[1])
        if (n + 1) * 2 > len(self.table):
            table = np.zeros((len(self.table) * 2, 4), dtype=np.uint64)
            _rehash_strings(self.table, table)
            self.table = table
        if n + 2 > len(self.pool_off):
            self.pool_off = np.concatenate([self.pool_off, np.zeros_like(self.pool_off)])
        if used + need_bytes > len(self.pool):
            size = max(2 * len(self.pool), used + need_bytes)
            pool = np.empty(size, dtype=np.uint8)
            pool[:used] = self.pool[:used]
            self.pool = pool

    def values(self) -> pa.Array:
        """`large_string` (n,): the value of provisional id i + 1 at position i.

        A view of the pool as it is now: later inserts write past it (or into a new pool),
        so an array returned earlier never changes.
        """
        n, used = len(self), int(self.state[1])
        offsets = self.pool_off[: n + 1]
        data = self.pool[:used]
        return pa.Array.from_buffers(
            pa.large_string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
        )
