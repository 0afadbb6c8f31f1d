"""Cutting delimited lines into columns in one compiled scan over the block's bytes.

`cut_columns` walks each line once and records where the wanted columns start and end, how many
columns the line has, and whether it holds a non-ASCII byte or the quote character (those lines
get the careful treatment: UTF-8 validation, Python's csv module). `gather` then copies the
columns' bytes into Arrow `large_string` arrays, empty and absent values as nulls. Nothing here
loops over rows in Python.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from numba import njit

NON_ASCII = 1
QUOTED = 2


@njit(cache=True, nogil=True)
def _cut(
    buf, starts, ends, delim, quote, slot_of, col_start, col_end, counts, flags
):  # pragma: no cover
    wanted = len(slot_of)
    for i in range(len(starts)):
        s = starts[i]
        e = ends[i]
        c = 0
        field = s
        flag = 0
        for p in range(s, e):
            b = buf[p]
            if b == delim:
                if c < wanted:
                    k = slot_of[c]
                    if k >= 0:
                        col_start[k, i] = field
                        col_end[k, i] = p
                c += 1
                field = p + 1
            elif b >= 128:
                flag |= 1
            elif b == quote:
                flag |= 2
        if c < wanted:
            k = slot_of[c]
            if k >= 0:
                col_start[k, i] = field
                col_end[k, i] = e
        counts[i] = c + 1
        flags[i] = flag


@njit(cache=True, nogil=True)
def _copy(buf, col_start, col_end, offsets, out):  # pragma: no cover
    # Column by column: the positions are read in order and the output written in order
    # (measured faster than row by row, which keeps dozens of streams open at once).
    for k in range(col_start.shape[0]):
        o = offsets[k, 0]
        for i in range(col_start.shape[1]):
            s = col_start[k, i]
            if s < 0:
                continue
            for p in range(s, col_end[k, i]):
                out[o] = buf[p]
                o += 1


@njit(cache=True, nogil=True)
def _parse_ints(buf, col_start, col_end, values, plain):  # pragma: no cover
    # values[k, i]: the integer of a value that is [+-]?[0-9]{1,15} (exact in float64), NaN
    # for an empty or absent one; plain[k] stays True while every value of column k is either.
    for k in range(col_start.shape[0]):
        for i in range(col_start.shape[1]):
            s = col_start[k, i]
            e = col_end[k, i]
            if s < 0 or e == s:
                values[k, i] = np.nan
                continue
            neg = False
            if buf[s] == 45 or buf[s] == 43:  # - +
                neg = buf[s] == 45
                s += 1
            if e - s < 1 or e - s > 15:
                plain[k] = False
                break
            v = 0
            for p in range(s, e):
                d = np.int64(buf[p]) - 48
                if d < 0 or d > 9:
                    plain[k] = False
                    break
                v = v * 10 + d
            if not plain[k]:
                break
            values[k, i] = -v if neg else v


def cut_columns(
    buf: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    delimiter: str,
    quote_char: str | None,
    positions: list[int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(col_start, col_end (len(positions), n), counts (n,), flags (n,)) of lines [starts, ends).

    col_start and col_end are -1 where a line has fewer columns than the position; flags has
    the NON_ASCII and QUOTED bits.
    """
    n = len(starts)
    slot_of = np.full(max(positions, default=-1) + 1, -1, dtype=np.int64)
    for k, j in enumerate(positions):
        slot_of[j] = k
    col_start = np.full((len(positions), n), -1, dtype=np.int32)
    col_end = np.full((len(positions), n), -1, dtype=np.int32)
    counts = np.empty(n, dtype=np.int64)
    flags = np.empty(n, dtype=np.uint8)
    quote = ord(quote_char) if quote_char else 256
    _cut(buf, starts, ends, ord(delimiter), quote, slot_of, col_start, col_end, counts, flags)
    return col_start, col_end, counts, flags


def parse_ints(
    buf: np.ndarray, col_start: np.ndarray, col_end: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(values float64 (K, n), plain bool (K,)): columns of plain integers parsed straight from
    the bytes; NaN is missing. A column that is not plain (a decimal, "NA", a bad value) must
    go through `parse_numbers` on its strings, which is the rule; this is its fast path."""
    values = np.empty(col_start.shape, dtype=np.float64)
    plain = np.ones(col_start.shape[0], dtype=bool)
    _parse_ints(buf, col_start, col_end, values, plain)
    return values, plain


def gather(buf: np.ndarray, col_start: np.ndarray, col_end: np.ndarray) -> list[pa.Array]:
    """Per row k of col_start: `large_string` values buf[start:end], null where empty or -1.

    One copy into one buffer shared by every column. The bytes must be valid UTF-8 (the caller
    blanks the lines that are not).
    """
    k, n = col_start.shape
    lengths = (col_end - col_start).astype(np.int64)  # absent values have both at -1
    offsets = np.zeros((k, n + 1), dtype=np.int64)
    flat = np.cumsum(lengths.reshape(-1))
    offsets[:, 1:] = flat.reshape(k, n)
    offsets[1:, 0] = offsets[:-1, -1]
    data = np.empty(int(flat[-1]) if len(flat) else 0, dtype=np.uint8)
    _copy(buf, col_start, col_end, offsets, data)
    data_buf = pa.py_buffer(data)
    valid = lengths > 0
    out = []
    for j in range(k):
        nulls = int(n - valid[j].sum())
        bitmap = pa.py_buffer(np.packbits(valid[j], bitorder="little")) if nulls else None
        out.append(
            pa.Array.from_buffers(
                pa.large_string(),
                n,
                [bitmap, pa.py_buffer(offsets[j]), data_buf],
                null_count=nulls,
            )
        )
    return out
