"""`csv`: delimited text, one record per line, with a header or with `columns: [...]`.

Columns are cut out of whole chunks by one compiled scan (`columns.py`); only lines containing
the quote character go through Python's csv module, so quoted values may hold delimiters but not
line breaks. pyarrow.csv is not used because its invalid_row_handler can neither pad short rows
nor see rows with invalid UTF-8 (the stream aborts), and its row numbers drift from line numbers
around blank lines.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cvr.data.arrow_numpy import from_numpy
from cvr.data.errors import BAD_ENCODING, WRONG_COLUMN_COUNT, DataError
from cvr.data.numbers import blank_to_null
from cvr.data.prefetch import prefetch
from cvr.data.readers.base import Problems, TextReader
from cvr.data.readers.columns import NON_ASCII, QUOTED, cut_columns, gather, parse_ints
from cvr.data.readers.lines import LineBlock, decode
from cvr.data.schema import Schema, SchemaError
from cvr.data.vocab import StringTable, span_keys


class DelimitedReader(TextReader):
    """`csv`: one record per line, values split by `delimiter`.

    Options: `delimiter` (default ","), `header` (default true: the first line names the columns),
    `columns` (the names when there is no header, or to replace the header's), `quote_char`
    (default '"'; null or false: quotes are ordinary characters), `min_columns` (null: every line
    needs all columns; n: lines with n or more columns are padded with missing values),
    `block_bytes` (bytes read at a time), `max_line_bytes` (longer lines are line_too_long).

    `vocab_tables` ({source column: StringTable}, passed by the store build, not a config key):
    those categorical columns come out as `int32` provisional ids of the table (0 = missing),
    their bytes looked up where they lie in the line buffer instead of copied into strings,
    numeric columns hold NaN (not null) for missing, and the cutting runs in a thread of its own.
    """

    format = "csv"
    accepts_vocab_tables = True

    def __init__(
        self,
        path: str | Path,
        schema: Schema,
        *,
        delimiter: str = ",",
        header: bool = True,
        columns: list[str] | None = None,
        quote_char: str | bool | None = '"',
        min_columns: int | None = None,
        vocab_tables: Mapping[str, StringTable] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(path, schema, **kwargs)
        self.vocab_tables = vocab_tables
        self.nan_missing = vocab_tables is not None
        if (
            not isinstance(delimiter, str)
            or len(delimiter) != 1
            or delimiter in "\r\n"
            or not delimiter.isascii()
        ):
            raise SchemaError(f"data.delimiter: expected one ASCII character, got {delimiter!r}")
        if quote_char is True:
            quote_char = '"'
        if quote_char and (
            len(quote_char) != 1 or quote_char == delimiter or not quote_char.isascii()
        ):
            raise SchemaError(f"data.quote_char: expected one ASCII character, got {quote_char!r}")
        if not header and not columns:
            raise SchemaError("data.columns: required when data.header is false")
        self.delimiter = delimiter
        self.header = bool(header)
        self.columns = list(columns) if columns else None
        self.quote_char = quote_char or None
        self.min_columns = min_columns
        self.header_lines = 0  # 1 once the header line has been read (the latest pass)

    def _empty_hint(self) -> str:
        return " or has only its header" if self.header else ""

    def read_header(self) -> list[str]:
        """The column names of the file's header line (for splitting a file into blocks)."""
        for block in self._blocks():
            return self._parse_header(block)
        raise DataError(f"{self.path}: no rows (the file is empty)")

    def _parse_header(self, block: LineBlock) -> list[str]:
        if block.too_long[0]:
            raise DataError(f"{self.path}:1: the header is longer than data.max_line_bytes")
        try:
            line = block.line_bytes(0).decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{self.path}:1: the header is not valid UTF-8") from None
        line = line.removeprefix("\ufeff")  # a byte order mark is not part of a name
        try:
            names = next(csv.reader([line], **self._csv_dialect()), [])
        except csv.Error as exc:
            raise DataError(f"{self.path}:1: cannot parse the header: {exc}") from None
        if not names or names == [""]:
            raise DataError(f"{self.path}:1: the header line is empty")
        return names

    def _csv_dialect(self) -> dict[str, Any]:
        if self.quote_char:
            return {"delimiter": self.delimiter, "quotechar": self.quote_char, "strict": True}
        return {"delimiter": self.delimiter, "quoting": csv.QUOTE_NONE}

    def _check_columns(self, names: list[str]) -> dict[str, int]:
        missing = [c for c in self.source_columns if c not in names]
        if missing:
            where = "the header" if self.header and not self.columns else "data.columns"
            raise DataError(
                f"{self.path}: column(s) {missing} not found in {where}; it has {names}"
            )
        return {c: names.index(c) for c in self.source_columns}

    def _batches(self) -> Iterator[pa.RecordBatch | None]:
        body: Iterator[tuple[LineBlock, list[str], dict[str, int]]] = self._body()
        if self.vocab_tables is not None:
            # A store build: reading and splitting, then cutting run a block or two ahead in
            # threads of their own, the table lookups in the caller's.
            body = prefetch(body, depth=2, name="cvr-lines")
        cuts: Iterator[_Cut] = (self._cut(*item) for item in body)
        if self.vocab_tables is not None:
            cuts = prefetch(cuts, depth=2, name="cvr-cut")
        for cut in cuts:
            yield self._chunk(cut)

    def _body(self) -> Iterator[tuple[LineBlock, list[str], dict[str, int]]]:
        """The blocks of lines after the header, with the column names and positions."""
        names = self.columns
        positions = self._check_columns(names) if names else None
        at_start = self.header
        self.header_lines = 0
        for block in self._blocks():
            if at_start:
                header_names = self._parse_header(block)
                names = names or header_names
                positions = self._check_columns(names)
                block = block.slice(1, len(block))
                at_start = False
                self.header_lines = 1
                if len(block) == 0:
                    continue
            yield block, names, positions

    def _cut(self, block: LineBlock, names: list[str], positions: dict[str, int]) -> _Cut:
        """Stage 1 of a chunk: columns cut, bad UTF-8 blanked, plain integer columns parsed."""
        srcs = list(positions)
        col_start, col_end, counts, flags = cut_columns(
            block.buf,
            block.starts,
            block.ends,
            self.delimiter,
            self.quote_char,
            list(positions.values()),
        )
        non_ascii = np.flatnonzero(flags & NON_ASCII)
        bad_rows = non_ascii[:0]
        if len(non_ascii):
            _, bad = decode(block.binary().take(pa.array(non_ascii)))
            bad_rows = non_ascii[bad]
            col_start[:, bad_rows] = -1  # never build strings from invalid bytes
            col_end[:, bad_rows] = -1
            flags[bad_rows] = 0
        quoted = self.quote_char is not None and bool((flags & QUOTED).any())
        numbers: dict[str, np.ndarray] = {}
        numeric = [k for k, c in enumerate(srcs) if c in self._numeric_sources and not quoted]
        if numeric:
            values, plain = parse_ints(block.buf, col_start, col_end, numeric)
            numbers.update((srcs[k], values[q]) for q, k in enumerate(numeric) if plain[q])
        # The table keys need no table: computed here, line by line, like the integers.
        tables = {} if quoted else self._tables_of(srcs)
        slots = [srcs.index(c) for c in tables]
        keys = span_keys(block.buf, col_start, col_end, slots, True) if slots else None
        return _Cut(
            block, names, positions, col_start, col_end, counts, flags, bad_rows, numbers, keys
        )

    def _chunk(self, cut: _Cut) -> pa.RecordBatch | None:
        """Stage 2: the values as columns (categoricals looked up in `vocab_tables` when given),
        the row checks, the batch."""
        block, counts = cut.block, cut.counts
        # Column by column from here: contiguous columns make the table probes twice as fast.
        col_start, col_end = np.ascontiguousarray(cut.col_start), np.ascontiguousarray(cut.col_end)
        n = len(block)
        problems = Problems(n)
        self._too_long(block, problems)
        if len(cut.bad_rows):
            mask = np.zeros(n, dtype=bool)
            mask[cut.bad_rows] = True
            problems.add(mask, BAD_ENCODING, lambda i: "the line is not valid UTF-8")
        srcs = list(cut.positions)
        quoted = self.quote_char is not None and bool((cut.flags & QUOTED).any())
        columns: dict[str, pa.Array | np.ndarray] = dict(cut.numbers)
        tables = {} if quoted else self._tables_of(srcs)
        for q, (c, table) in enumerate(tables.items()):
            k = srcs.index(c)
            ids = table.encode_spans(block.buf, col_start[k], col_end[k], True, cut.keys[q])
            columns[c] = from_numpy(ids)
        text = [k for k, c in enumerate(srcs) if c not in columns]
        strings = gather(block.buf, col_start, col_end, text)
        columns.update(zip([srcs[k] for k in text], strings, strict=True))
        if quoted:
            self._requote(block, cut.flags, counts, columns, cut.positions, problems)
            for c, table in self._tables_of(srcs).items():
                columns[c] = pa.array(table.encode(blank_to_null(columns[c])))
        expected = len(cut.names)
        ok = counts == expected
        if self.min_columns is not None:
            ok |= (counts >= self.min_columns) & (counts < expected)
        problems.add(
            ~ok,
            WRONG_COLUMN_COUNT,
            lambda i: f"expected {expected} columns, got {counts[i]}",
        )
        self._text_of = lambda c: gather(block.buf, col_start, col_end, [srcs.index(c)])[0]
        return self._finish(columns, block.numbers, problems, blanks=quoted)

    def _tables_of(self, srcs: list[str]) -> dict[str, StringTable]:
        """The vocab tables of the categorical columns read here (not the time column)."""
        if self.vocab_tables is None:
            return {}
        return {
            c: self.vocab_tables[c]
            for c in srcs
            if c in self.vocab_tables and c != self.time_column
        }

    @property
    def _numeric_sources(self) -> set[str]:
        """Source columns read as numbers only (parsed from the bytes when plain integers)."""
        numeric = {c for c, kind in self.field_columns if kind == "numeric"}
        numeric |= {c for _, c in self.label_sources}
        return numeric - {self.time_column}

    def _requote(
        self,
        block: LineBlock,
        flags: np.ndarray,
        counts: np.ndarray,
        columns: dict[str, pa.Array],
        positions: dict[str, int],
        problems: Problems,
    ) -> None:
        """Re-split the (rare) lines that contain the quote character with the csv module."""
        rows = np.flatnonzero(flags & QUOTED)
        if len(rows) == 0:
            return
        parsed: list[list[str]] = []
        broken = np.zeros(len(block), dtype=bool)
        errors: dict[int, str] = {}
        dialect = self._csv_dialect()
        for i in rows.tolist():
            try:
                values = next(csv.reader([block.line_bytes(i).decode("utf-8")], **dialect), [])
            except csv.Error as exc:
                broken[i] = True
                errors[i] = str(exc)
                values = []
            parsed.append(values)
            counts[i] = len(values)
        problems.add(
            broken,
            WRONG_COLUMN_COUNT,
            lambda i: f"cannot split the line on quotes: {errors[i]}",
        )
        quoted = np.zeros(len(block), dtype=bool)
        quoted[rows] = True
        for c, j in positions.items():
            repl = pa.array([v[j] if j < len(v) else None for v in parsed], pa.large_string())
            columns[c] = pc.replace_with_mask(columns[c], pa.array(quoted), repl)


@dataclass
class _Cut:
    """A block of lines after stage 1 (see `DelimitedReader._cut`)."""

    block: LineBlock
    names: list[str]
    positions: dict[str, int]
    col_start: np.ndarray
    col_end: np.ndarray
    counts: np.ndarray
    flags: np.ndarray
    bad_rows: np.ndarray
    numbers: dict[str, np.ndarray]
    keys: np.ndarray | None = None  # (tables, n, 4) table keys of the categorical columns
