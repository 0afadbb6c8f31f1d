"""The Reader protocol: a format's parsing in, validated Arrow record batches out.

Every reader yields `pyarrow.RecordBatch`es of at most `chunk_rows` rows with

- one column per source column the schema's fields name: categoricals as `string` (an empty
  value is null = missing), numerics as `float64` (null = missing);
- one `float64` column per label, named by the label (`schema.labels`), every value 0 or 1;
- `__line__` (`int64`): the row's 1-based line number in its file (the row number for parquet),
  so that later stages can name the line in their messages;
- `__time__` (`string`), only when the reader is given a `time_column` (for time splits).

Row-level problems (see `cvr.data.errors.REASONS`) follow `on_error`: `raise` stops at the first
bad row with a `DataError` naming the file and line; `skip` drops the row and counts it by reason in
`Reader.skipped`. Blank lines are records too, so they are counted: a wrong_column_count where
several columns are expected, a bad_label (missing label) in one-column or libffm files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa

from cvr.data.arrow_numpy import from_numpy, to_numpy
from cvr.data.errors import BAD_LABEL, BAD_NUMBER, LINE_TOO_LONG, DataError, check_on_error
from cvr.data.numbers import blank_to_null, parse_numbers
from cvr.data.readers.lines import (
    DEFAULT_BLOCK_BYTES,
    DEFAULT_MAX_LINE_BYTES,
    Digest,
    LineBlock,
    iter_line_blocks,
)
from cvr.data.schema import Schema, SchemaError

DEFAULT_CHUNK_ROWS = 65536
LINE_COLUMN = "__line__"
TIME_COLUMN = "__time__"


class Problems:
    """Row-level problems of one chunk: each bad row's first reason and how to describe it."""

    def __init__(self, n: int) -> None:
        self.check = np.full(n, -1, dtype=np.int32)
        self._checks: list[tuple[str, Callable[[int], str]]] = []

    @property
    def bad(self) -> np.ndarray:
        return self.check >= 0

    def add(self, mask: np.ndarray, reason: str, describe: Callable[[int], str]) -> None:
        """Mark rows in `mask` that have no problem yet; `describe(i)` explains row i."""
        new = np.asarray(mask, dtype=bool) & (self.check < 0)
        if new.any():
            self.check[new] = len(self._checks)
            self._checks.append((reason, describe))

    def first(self) -> tuple[int, str] | None:
        """(row, message) of the first bad row, or None."""
        rows = np.flatnonzero(self.bad)
        if len(rows) == 0:
            return None
        i = int(rows[0])
        return i, self._checks[self.check[i]][1](i)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        per_check = np.bincount(self.check[self.check >= 0], minlength=len(self._checks))
        for (reason, _), n in zip(self._checks, per_check, strict=True):
            if n:
                out[reason] = out.get(reason, 0) + int(n)
        return out


def raw_value(col: pa.Array, i: int) -> str:
    value = col[i].as_py()
    return "" if value is None else value


def list_item(lists: pa.Array, counts: np.ndarray, j: int) -> pa.Array:
    """Item j of every list in `lists` (null where a list is shorter), without a row loop."""
    offsets = to_numpy(lists.offsets)
    has = counts > j
    idx = pa.array(np.where(has, offsets[:-1] + j, 0), type=pa.int64(), mask=~has)
    return lists.values.take(idx)


class Reader:
    """Base class: validates raw columns of a chunk and turns them into the output batch.

    Iterating reads the file from the start, so a reader can make several passes; `skipped`
    ({reason: rows}), `rows` and `lines` describe the latest pass.
    """

    format: ClassVar[str]
    # Whether the format takes `vocab_tables` (categoricals looked up in a store build's tables).
    accepts_vocab_tables: ClassVar[bool] = False
    # Whether the format takes `digest` (the file's bytes hashed as the reader reads them).
    accepts_digest: ClassVar[bool] = False

    def __init__(
        self,
        path: str | Path,
        schema: Schema,
        *,
        on_error: str = "raise",
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        label_columns: Mapping[str, str] | None = None,
        time_column: str | None = None,
        config_key: str = "data.path",
    ) -> None:
        if chunk_rows < 1:
            raise ValueError(f"data.chunk_rows: expected a positive integer, got {chunk_rows}")
        self.path = Path(path)
        self.schema = schema
        self.on_error = check_on_error(on_error)
        self.chunk_rows = int(chunk_rows)
        self.config_key = config_key
        label_columns = dict(label_columns or {})
        unknown = sorted(set(label_columns) - set(schema.labels))
        if unknown:
            raise SchemaError(
                f"data.label_columns: {unknown} are not labels of the schema {list(schema.labels)}"
            )
        # (output name, source column) per label, and (source column, kind) per field column.
        self.label_sources = [(name, label_columns.get(name, name)) for name in schema.labels]
        kinds: dict[str, str] = {}
        for f in schema.fields:
            if kinds.setdefault(f.source, f.kind) != f.kind:
                raise SchemaError(
                    f"data.schema.fields: column {f.source!r} is used as both categorical and "
                    "numeric"
                )
        self.field_columns = list(kinds.items())
        clash = sorted({name for name, _ in self.label_sources} & set(kinds))
        if clash:
            raise SchemaError(
                f"data.schema.labels: {clash} are also field columns; a label cannot be a feature"
            )
        self.time_column = time_column
        self.nan_missing = False  # numeric columns with NaN, not null, for missing
        self.skipped: dict[str, int] = {}
        self.rows = 0
        self.lines = 0

    @property
    def source_columns(self) -> list[str]:
        """Every source column this reader needs, in a fixed order, without duplicates."""
        cols = [c for c, _ in self.field_columns] + [c for _, c in self.label_sources]
        if self.time_column:
            cols.append(self.time_column)
        return list(dict.fromkeys(cols))

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        if not self.path.is_file():
            raise FileNotFoundError(
                f"{self.path}: data file not found (config key {self.config_key})"
            )
        self.skipped, self.rows, self.lines = {}, 0, 0
        seen_any = False
        for batch in self._batches():
            seen_any = True
            if batch is not None and batch.num_rows:
                self.rows += batch.num_rows
                yield batch
        if not seen_any:
            raise DataError(f"{self.path}: no rows (the file is empty{self._empty_hint()})")

    def _empty_hint(self) -> str:
        return ""

    def _batches(self) -> Iterator[pa.RecordBatch | None]:
        """Yield one output batch (or None when every row was skipped) per chunk read."""
        raise NotImplementedError

    def _finish(
        self,
        columns: Mapping[str, pa.Array | np.ndarray],
        lines: np.ndarray,
        problems: Problems,
        blanks: bool = True,
    ) -> pa.RecordBatch | None:
        """Validate raw `string` columns (by source name) and build the output batch.

        A numeric or label column may instead come as float64 numbers already parsed by the
        format (NaN = missing; `_text_of(source)` gives its text for messages). `blanks=False`
        says the text columns hold nulls, never empty strings. `problems` holds what the
        format-specific parsing found already; rows it marks are not checked further, so a row
        is counted once, under its first problem.
        """
        self.lines += len(lines)
        out: dict[str, pa.Array | np.ndarray] = {}
        numeric_masks: dict[str, np.ndarray] = {}
        for src, kind in self.field_columns:
            col = columns[src]
            if kind == "categorical":
                # (int32 ids come from a store build's tables, blanks already missing)
                text = blanks and not pa.types.is_int32(col.type)
                out[src] = blank_to_null(col) if text else col
                continue
            values, missing, bad = _numbers(col)
            problems.add(
                bad,
                BAD_NUMBER,
                lambda i, src=src, col=col: f"column {src}: {raw_value(col, i)!r} is not a number",
            )
            out[src] = values
            numeric_masks[src] = missing
        for name, src in self.label_sources:
            col = columns[src]
            values, missing, bad = _numbers(col)
            bad |= missing | ~((values == 0) | (values == 1))
            problems.add(
                bad,
                BAD_LABEL,
                lambda i, name=name, src=src, col=col: (
                    f"label {name!r} must be 0 or 1, got {raw_value(self._text(src, col), i)!r}"
                ),
            )
            out[name] = values
        if self.time_column:
            out[TIME_COLUMN] = blank_to_null(columns[self.time_column])

        return self._batch(out, numeric_masks, lines, problems)

    def _text(self, src: str, col: pa.Array | np.ndarray) -> pa.Array:
        return self._text_of(src) if isinstance(col, np.ndarray) else col

    def _batch(
        self,
        out: dict[str, pa.Array | np.ndarray],
        numeric_masks: dict[str, np.ndarray],
        lines: np.ndarray,
        problems: Problems,
    ) -> pa.RecordBatch | None:

        keep = ~problems.bad
        if not keep.all():
            if self.on_error == "raise":
                i, message = problems.first()
                raise DataError(f"{self.path}:{int(lines[i])}: {message}")
            for reason, n in problems.counts().items():
                self.skipped[reason] = self.skipped.get(reason, 0) + n
            if not keep.any():
                return None
        keep_idx = None if keep.all() else from_numpy(np.flatnonzero(keep))
        arrays, names = [], []
        for name, value in out.items():
            if isinstance(value, np.ndarray):
                # A store build reads NaN as missing: no validity bitmap to build and undo.
                mask = None if self.nan_missing else numeric_masks.get(name)
                value = from_numpy(value, type=pa.float64(), mask=mask)
            if keep_idx is not None:
                value = value.take(keep_idx)
            arrays.append(value.cast(pa.string()) if _is_text(value) else value)
            names.append(name)
        arrays.append(from_numpy(np.asarray(lines, dtype=np.int64)[keep]))
        names.append(LINE_COLUMN)
        return pa.RecordBatch.from_arrays(arrays, names=names)


class TextReader(Reader):
    """A reader of line-per-record text: options `block_bytes` and `max_line_bytes`; the Dask
    engine also passes `byte_range` and `first_line` to read one block of a file, a store build
    `digest` (given every byte of the file by the first read, see `lines.open_bytes`)."""

    accepts_digest = True

    def __init__(
        self,
        path: str | Path,
        schema: Schema,
        *,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        byte_range: tuple[int, int] | None = None,
        first_line: int = 1,
        digest: Digest | None = None,
        **kwargs,
    ) -> None:
        super().__init__(path, schema, **kwargs)
        self.digest = digest
        # A part of a file (a Dask block): its byte range and the number of its first line.
        self.byte_range = tuple(byte_range) if byte_range is not None else None
        self.first_line = int(first_line)
        for key, value in (("block_bytes", block_bytes), ("max_line_bytes", max_line_bytes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SchemaError(f"data.{key}: expected a positive integer, got {value!r}")
        self.block_bytes = int(block_bytes)
        self.max_line_bytes = int(max_line_bytes)

    def _blocks(self) -> Iterator[LineBlock]:
        digest, self.digest = self.digest, None  # one whole read feeds it
        return iter_line_blocks(
            self.path,
            self.chunk_rows,
            self.block_bytes,
            self.max_line_bytes,
            self.byte_range,
            self.first_line,
            digest,
        )

    def _too_long(self, block: LineBlock, problems: Problems) -> None:
        limit = self.max_line_bytes
        problems.add(
            block.too_long,
            LINE_TOO_LONG,
            lambda i: f"the line is longer than data.max_line_bytes ({limit} bytes)",
        )


def _numbers(col: pa.Array | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, missing, bad) of a text column, or of numbers a format already parsed."""
    if isinstance(col, np.ndarray):
        missing = np.isnan(col)
        return col, missing, np.zeros(len(col), dtype=bool)
    return parse_numbers(col)


def _is_text(arr: pa.Array) -> bool:
    return pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)
