"""cut_columns (the word-at-a-time scan) against a plain Python split of each line."""

from __future__ import annotations

import numpy as np
import pytest

from cvr.data.readers.columns import NON_ASCII, QUOTED, cut_columns


def _reference(lines: list[bytes], delim: bytes, quote: bytes | None, positions: list[int]):
    n, k = len(lines), len(positions)
    col_start = np.full((k, n), -1, dtype=np.int64)
    col_end = np.full((k, n), -1, dtype=np.int64)
    counts, flags, at = [], [], 0
    for i, line in enumerate(lines):
        parts = line.split(delim)
        starts = np.cumsum([0] + [len(p) + 1 for p in parts[:-1]]) + at
        for q, j in enumerate(positions):
            if j < len(parts):
                col_start[q, i] = starts[j]
                col_end[q, i] = starts[j] + len(parts[j])
        counts.append(len(parts))
        flag = NON_ASCII if any(b >= 128 for b in line) else 0
        if quote is not None and quote in line:
            flag |= QUOTED
        flags.append(flag)
        at += len(line) + 1
    return col_start, col_end, np.array(counts), np.array(flags)


@pytest.mark.parametrize("delim, quote", [(b"\t", None), (b",", b'"'), (b";", b"'")])
def test_cut_columns_equals_a_python_split(delim, quote):
    rng = np.random.default_rng(7)
    # delim ^ 1 next to a delimiter is where a borrowing zero-byte test would see a false one.
    near = bytes([delim[0] ^ 1])
    alphabet = np.frombuffer(
        b"ab" + delim * 3 + near * 2 + (quote or b"c") + b"\xc3\xa9z0", dtype=np.uint8
    )
    lines = []
    for _ in range(3000):
        size = int(rng.integers(0, 70))  # every alignment of delimiters to the 8-byte words
        lines.append(alphabet[rng.integers(0, len(alphabet), size)].tobytes())
    lines += [b"", delim, delim * 17, b"x" * 8, b"x" * 7 + delim + b"y" * 8]
    buf = np.frombuffer(b"\n".join(lines) + b"\n", dtype=np.uint8)
    lengths = np.array([len(line) + 1 for line in lines])
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    starts, ends = bounds[:-1], bounds[1:] - 1
    positions = [0, 3, 1, 9, 30]
    got = cut_columns(buf, starts, ends, delim.decode(), quote and quote.decode(), positions)
    want = _reference(lines, delim, quote, positions)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.asarray(g), w)
