"""Cutting delimited lines into columns in one compiled scan over the block's bytes.

`cut_columns` walks each line once and records where the wanted columns start and end, how many
columns the line has, and whether it holds a non-ASCII byte or the quote character (those lines
get the careful treatment: UTF-8 validation, Python's csv module). `parse_ints` reads plain
integer columns straight from the bytes; `gather` copies columns' bytes into Arrow `large_string`
arrays, empty and absent values as nulls (categorical columns of a store build skip that copy:
`cvr.data.vocab.StringTable.encode_spans` looks their bytes up where they lie).
Nothing here loops over rows in Python.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

NON_ASCII = 1
QUOTED = 2


@intrinsic
def _load8(typingctx, arr, i):  # pragma: no cover
    """The 8 bytes at arr[i:i + 8] as one little-endian uint64 (an unaligned load)."""
    sig = types.uint64(arr, i)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, signature.args[0], ary, [args[1]])
        word = builder.bitcast(ptr, ir.IntType(64).as_pointer())
        return builder.load(word, align=1)

    return sig, codegen


@intrinsic
def _ctz(typingctx, x):  # pragma: no cover
    """Trailing zero bits of a non-zero uint64 (llvm.cttz)."""
    sig = types.uint64(x)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(i64, [i64, ir.IntType(1)]), "llvm.cttz.i64"
        )
        return builder.call(fn, [args[0], ir.Constant(ir.IntType(1), 1)])

    return sig, codegen


_LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)
_HIGH = np.uint64(0x8080808080808080)
_ONES = np.uint64(0x0101010101010101)


@njit(cache=True, nogil=True, inline="always")
def _zero_bytes(x):  # pragma: no cover
    # The high bit of every zero byte of x, exactly (no borrow runs between bytes).
    return ~(((x & _LOW7) + _LOW7) | x | _LOW7)


@njit(cache=True, nogil=True)
def _cut(
    buf, starts, ends, delim, quote, slot_of, col_start, col_end, counts, flags, seps
):  # pragma: no cover
    # Two steps per line: the delimiters are found 8 bytes at a time (one load, a few word
    # operations, one step per delimiter found), then the wanted columns are read off them.
    # Output is row-major (n, K): one line's slots together.
    wanted = len(slot_of)
    d8 = _ONES * np.uint64(delim)
    q8 = _ONES * np.uint64(quote & 255)
    has_quote = quote < 256
    for i in range(len(starts)):
        s = starts[i]
        e = ends[i]
        t = 0
        high = np.uint64(0)
        quotes = np.uint64(0)
        p = s
        while p + 8 <= e:
            w = _load8(buf, p)
            high |= w
            if has_quote:
                quotes |= _zero_bytes(w ^ q8)
            m = _zero_bytes(w ^ d8)
            while m:
                seps[t] = p + (_ctz(m) >> np.uint64(3))
                t += 1
                m &= m - np.uint64(1)
            p += 8
        for r in range(p, e):  # the last few bytes
            b = buf[r]
            seps[t] = r
            t += b == delim
            high |= np.uint64(b)
            quotes |= np.uint64(b == quote)
        seps[t] = e
        t += 1
        field = s
        for c in range(min(t, wanted)):
            k = slot_of[c]
            if k >= 0:
                col_start[i, k] = field
                col_end[i, k] = seps[c]
            field = seps[c] + 1
        counts[i] = t
        flags[i] = (1 if high & _HIGH else 0) | (2 if quotes else 0)


@njit(cache=True, nogil=True)
def _copy(buf, col_start, col_end, slots, offsets, out):  # pragma: no cover
    # Column by column: the output is written in order (measured faster than row by row,
    # which keeps dozens of output streams open at once).
    for q in range(len(slots)):
        k = slots[q]
        o = offsets[q, 0]
        for i in range(col_start.shape[1]):
            s = col_start[k, i]
            if s < 0:
                continue
            for p in range(s, col_end[k, i]):
                out[o] = buf[p]
                o += 1


@njit(cache=True, nogil=True)
def _parse_ints(buf, col_start, col_end, slots, values, plain):  # pragma: no cover
    # values[q, i]: the integer of a value that is [+-]?[0-9]{1,15} (exact in float64), NaN
    # for an empty or absent one; plain[q] stays True while every value of column q is either.
    # Line by line (a line's bytes are read together, not once per column), a column no longer
    # parsed once it is not plain.
    for i in range(col_start.shape[1]):
        for q in range(len(slots)):
            if not plain[q]:
                continue
            k = slots[q]
            s = col_start[k, i]
            e = col_end[k, i]
            if s < 0 or e == s:
                values[q, i] = np.nan
                continue
            neg = False
            if buf[s] == 45 or buf[s] == 43:  # - +
                neg = buf[s] == 45
                s += 1
            if e - s < 1 or e - s > 15:
                plain[q] = False
                continue
            v = 0
            for p in range(s, e):
                d = np.int64(buf[p]) - 48
                if d < 0 or d > 9:
                    plain[q] = False
                    break
                v = v * 10 + d
            values[q, i] = -v if neg else v


def cut_columns(
    buf: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    delimiter: str,
    quote_char: str | None,
    positions: list[int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(col_start, col_end (len(positions), n), counts (n,), flags (n,)) of lines [starts, ends).

    Row k is the column at `positions[k]`; col_start and col_end are -1 where a line has fewer
    columns than that; flags has the NON_ASCII and QUOTED bits. col_start and col_end are views
    of (n, K) arrays (one line's slots together, as the scan fills them and as the line-by-line
    kernels read them).
    """
    n = len(starts)
    slot_of = np.full(max(positions, default=-1) + 1, -1, dtype=np.int64)
    for k, j in enumerate(positions):
        slot_of[j] = k
    col_start = np.full((n, len(positions)), -1, dtype=np.int32)
    col_end = np.full((n, len(positions)), -1, dtype=np.int32)
    counts = np.empty(n, dtype=np.int64)
    flags = np.empty(n, dtype=np.uint8)
    longest = int((np.asarray(ends) - np.asarray(starts)).max()) if n else 0
    seps = np.empty(longest + 1, dtype=np.int64)
    quote = ord(quote_char) if quote_char else 256
    _cut(buf, starts, ends, ord(delimiter), quote, slot_of, col_start, col_end, counts, flags, seps)
    return col_start.T, col_end.T, counts, flags


def parse_ints(
    buf: np.ndarray, col_start: np.ndarray, col_end: np.ndarray, slots: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """(values float64 (len(slots), n), plain bool (len(slots),)): the columns in `slots` as
    plain integers parsed straight from the bytes; NaN is missing. A column that is not plain
    (a decimal, "NA", a bad value) must go through `parse_numbers` on its strings, which is the
    rule; this is its fast path."""
    slots = np.asarray(slots, dtype=np.int64)
    values = np.empty((len(slots), col_start.shape[1]), dtype=np.float64)
    plain = np.ones(len(slots), dtype=bool)
    _parse_ints(buf, col_start, col_end, slots, values, plain)
    return values, plain


def gather(
    buf: np.ndarray, col_start: np.ndarray, col_end: np.ndarray, slots: list[int]
) -> list[pa.Array]:
    """Per row k in `slots` of (K, n) col_start/col_end: `large_string` values buf[start:end],
    null where empty or -1.

    One copy into one buffer shared by every column. The bytes must be valid UTF-8 (the caller
    blanks the lines that are not).
    """
    n = col_start.shape[1]
    slots = np.asarray(slots, dtype=np.int64)
    k = len(slots)
    lengths = (col_end[slots] - col_start[slots]).astype(np.int64)  # absent: -1 - -1
    offsets = np.zeros((k, n + 1), dtype=np.int64)
    flat = np.cumsum(lengths.reshape(-1))
    offsets[:, 1:] = flat.reshape(k, n)
    offsets[1:, 0] = offsets[:-1, -1]
    data = np.empty(int(flat[-1]) if len(flat) else 0, dtype=np.uint8)
    _copy(buf, col_start, col_end, slots, offsets, data)
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
