"""`libffm`: `label field:feature:value ...`, one record per line.

Field number n feeds the schema field whose column is `f{n}`, with the feature id string as its
categorical value. The value part must be a number but is otherwise ignored: every field is one
categorical. A field absent from a line is missing. `field_numbers` scans a file for the field
numbers it uses, so a config can infer its fields (`f0..f{max}`) instead of listing them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cvr.data.errors import BAD_ENCODING, BAD_TOKEN, DUPLICATE_FIELD, UNKNOWN_FIELD
from cvr.data.numbers import parse_numbers
from cvr.data.readers.base import DEFAULT_CHUNK_ROWS, Problems, TextReader, list_item, raw_value
from cvr.data.readers.lines import LineBlock, decode_lines, iter_line_blocks
from cvr.data.schema import Schema, SchemaError

_FIELD_RE = re.compile(r"^f([0-9]+)$")


class LibffmReader(TextReader):
    """`libffm`: `label field:feature:value ...`, one record per line.

    Options: `duplicate_fields`: "error" (default: a field given twice on a line is a row problem)
    or "first" (keep the first occurrence; for files where a field lists several features).
    """

    format = "libffm"

    def __init__(
        self,
        path: str | Path,
        schema: Schema,
        *,
        duplicate_fields: str = "error",
        **kwargs: Any,
    ) -> None:
        super().__init__(path, schema, **kwargs)
        if len(self.label_sources) != 1:
            raise SchemaError(f"data.schema.labels: libffm has one label, got {schema.labels}")
        if self.time_column:
            raise SchemaError("data.split.time_column: libffm files have no time column")
        if duplicate_fields not in ("error", "first"):
            raise SchemaError(
                f"data.duplicate_fields: expected 'error' or 'first', got {duplicate_fields!r}"
            )
        self.duplicate_fields = duplicate_fields
        numbers = []
        for src, _ in self.field_columns:
            m = _FIELD_RE.match(src)
            if not m:
                raise SchemaError(
                    f"data.schema.fields: libffm field columns are named f<number>, got {src!r}"
                )
            numbers.append(int(m.group(1)))
        self.field_numbers = np.array(numbers, dtype=np.int64)

    def _batches(self) -> Iterator[pa.RecordBatch | None]:
        for block in self._blocks():
            yield self._chunk(block)

    def _chunk(self, block: LineBlock) -> pa.RecordBatch | None:
        text, bad_utf8 = decode_lines(block.binary())
        n = len(text)
        problems = Problems(n)
        self._too_long(block, problems)
        problems.add(bad_utf8, BAD_ENCODING, lambda i: "the line is not valid UTF-8")
        tok = _Tokens(text)
        row, feat, number, well_formed = tok.row, tok.feat, tok.number, tok.well_formed
        problems.add(
            _rows_with(~well_formed, row, n),
            BAD_TOKEN,
            lambda i: (
                f"malformed token {_first_token(feat, row, ~well_formed, i)!r} "
                "(expected field:feature:value)"
            ),
        )
        sorter = np.argsort(self.field_numbers, kind="stable")
        pos = np.searchsorted(self.field_numbers, number, sorter=sorter)
        pos = sorter[np.minimum(pos, len(sorter) - 1)]
        known = well_formed & (self.field_numbers[pos] == number)
        unknown = well_formed & ~known
        problems.add(
            _rows_with(unknown, row, n),
            UNKNOWN_FIELD,
            lambda i: (
                f"field {number[np.flatnonzero(unknown & (row == i))[0]]} is not in the schema "
                f"(fields {sorted(self.field_numbers.tolist())})"
            ),
        )

        # Duplicates: sort the tokens by (row, field) keeping file order, compare neighbours.
        sel_tok = np.flatnonzero(known)
        key = row[sel_tok] * len(self.field_numbers) + pos[sel_tok]
        order = np.argsort(key, kind="stable")
        repeat = np.zeros(len(sel_tok), dtype=bool)
        repeat[order[1:]] = key[order[1:]] == key[order[:-1]]
        if self.duplicate_fields == "error":
            dup_tokens = np.zeros(len(row), dtype=bool)
            dup_tokens[sel_tok[repeat]] = True
            problems.add(
                _rows_with(dup_tokens, row, n),
                DUPLICATE_FIELD,
                lambda i: (
                    f"field {number[np.flatnonzero(dup_tokens & (row == i))[0]]} is given twice"
                ),
            )
        sel_tok = sel_tok[~repeat]

        columns: dict[str, pa.Array] = {}
        for j, (src, _) in enumerate(self.field_columns):
            sel = sel_tok[pos[sel_tok] == j]
            where = np.full(n, -1, dtype=np.int64)
            where[row[sel]] = sel
            columns[src] = tok.feature.take(pa.array(where, type=pa.int64(), mask=where < 0))
        columns[self.label_sources[0][1]] = tok.label
        return self._finish(columns, block.numbers, problems)


class _Tokens:
    """The tokens of a chunk of libffm lines, flat in file order, with the row of each."""

    def __init__(self, text: pa.Array) -> None:
        n = len(text)
        tokens = pc.ascii_split_whitespace(pc.ascii_trim_whitespace(text))
        counts = pc.list_value_length(tokens).to_numpy(zero_copy_only=False).astype(np.int64)
        offsets = tokens.offsets.to_numpy().astype(np.int64)
        self.label = list_item(tokens, counts, 0)
        n_feat = np.maximum(counts - 1, 0)
        self.row = np.repeat(np.arange(n), n_feat)
        tok_idx = np.arange(len(self.row)) - np.repeat(np.cumsum(n_feat) - n_feat, n_feat)
        tok_idx += offsets[:-1][self.row] + 1
        self.feat = tokens.values.take(pa.array(tok_idx, type=pa.int64()))
        parts = pc.split_pattern(self.feat, ":")
        nparts = pc.list_value_length(parts).to_numpy(zero_copy_only=False).astype(np.int64)
        field_s = list_item(parts, nparts, 0)
        self.feature = list_item(parts, nparts, 1)
        _, _, value_bad = parse_numbers(list_item(parts, nparts, 2))
        self.well_formed = (
            (nparts == 3)
            & pc.fill_null(pc.match_substring_regex(field_s, r"^[0-9]{1,9}$"), False).to_numpy(
                zero_copy_only=False
            )
            & pc.fill_null(pc.not_equal(self.feature, ""), False).to_numpy(zero_copy_only=False)
            & ~value_bad
        )
        self.number = np.full(len(self.row), -1, dtype=np.int64)
        self.number[self.well_formed] = pc.cast(
            field_s.filter(pa.array(self.well_formed)), pa.int64()
        ).to_numpy()


def field_numbers(path: str | Path, max_line_bytes: int | None = None) -> np.ndarray:
    """Sorted distinct field numbers of the well-formed tokens of a libffm file (one pass)."""
    seen = np.zeros(0, dtype=np.int64)
    kwargs = {} if max_line_bytes is None else {"max_line_bytes": max_line_bytes}
    for block in iter_line_blocks(path, DEFAULT_CHUNK_ROWS, **kwargs):
        text, _ = decode_lines(block.binary())
        tok = _Tokens(text)
        seen = np.union1d(seen, np.unique(tok.number[tok.well_formed]))
    return seen


def _rows_with(token_mask: np.ndarray, row: np.ndarray, n: int) -> np.ndarray:
    """Rows (bool, length n) that own at least one token in `token_mask`."""
    return np.bincount(row[token_mask], minlength=n) > 0


def _first_token(feat: pa.Array, row: np.ndarray, mask: np.ndarray, i: int) -> str:
    return raw_value(feat, int(np.flatnonzero(mask & (row == i))[0]))
