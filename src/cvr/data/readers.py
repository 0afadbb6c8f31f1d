"""Readers: stream raw data files as Arrow record batches of validated raw values.

Every reader yields `pyarrow.RecordBatch`es of at most `chunk_rows` rows with

- one column per source column the schema's fields name: categoricals as `string` (an empty
  value is null = missing), numerics as `float64` (null = missing);
- one `float64` column per label, named by the label (`schema.labels`), every value 0 or 1;
- `__line__` (`int64`): the row's 1-based line number in its file (the row number for parquet),
  so that later stages can name the line in their messages;
- `__time__` (`string`), only when the reader is given a `time_column` (for time splits).

Formats (`data.format`):

- `csv`: delimited text, with a header (`header: true`) or with `columns: [...]`.
- `criteo_tsv`: the Kaggle DAC layout, tab-separated label, I1..I13, C1..C26 without a header.
  Lines whose trailing empty columns were stripped are padded back to 40 columns, as long as they
  keep at least `min_columns` (default 14: the label and the 13 integer columns).
- `libffm`: `label field:feature:value ...`; field number n feeds the schema field whose column is
  `f{n}`, with the feature id string as its categorical value. The value part must be a number
  but is otherwise ignored: every field is one categorical. A field absent from a line is missing.
- `parquet`: columns named by the schema.

Text files are split into lines here (terminators LF, CRLF or a lone CR, as `bytes.splitlines`)
and each line is exactly one record, so `__line__` is exact and rows read + rows skipped always
equals the number of lines. Columns are cut out of whole chunks with pyarrow.compute, never by a
Python loop per row; only lines containing a quote character go through Python's csv module, so
quoted values may hold delimiters but not line breaks. pyarrow.csv is not used for text because its
invalid_row_handler can neither pad short rows nor see rows with invalid UTF-8 (the stream aborts),
and its row numbers drift from line numbers around blank lines.

Row-level problems (see `cvr.data.errors.REASONS`) follow `on_error`: `raise` stops at the first
bad row with a `DataError` naming the file and line; `skip` drops the row and counts it by reason in
`Reader.skipped`. Blank lines are records too, so they are counted: a wrong_column_count where
several columns are expected, a bad_label (missing label) in one-column or libffm files.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cvr.data.errors import (
    BAD_ENCODING,
    BAD_LABEL,
    BAD_NUMBER,
    BAD_TOKEN,
    DUPLICATE_FIELD,
    UNKNOWN_FIELD,
    WRONG_COLUMN_COUNT,
    DataError,
    check_on_error,
)
from cvr.data.schema import Schema, SchemaError

DEFAULT_CHUNK_ROWS = 65536
DEFAULT_BLOCK_BYTES = 1 << 24
LINE_COLUMN = "__line__"
TIME_COLUMN = "__time__"

# A decimal number, ASCII digits only (RE2's \d would accept other scripts' digits).
_NUMBER_RE = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
# Spellings of a missing numeric value (empty is the usual one; the rest are what pandas writes).
_MISSING_NUMBER = pa.array(["", "nan", "NaN", "NAN", "NA", "null", "NULL", "None"])

CRITEO_COLUMNS = ("label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27)))


# --- lines ---------------------------------------------------------------------------------


def _iter_line_chunks(
    path: Path, chunk_rows: int, block_bytes: int
) -> Iterator[tuple[pa.Array, int]]:
    """Yield (lines, number of the first line): `binary` arrays of at most `chunk_rows` lines.

    Each value is one line with its terminator; `_decode_lines` strips it. Lines are found with
    numpy over whole blocks of bytes, so the cost per line is a few vector operations.
    """
    first_line = 1
    carry = b""
    with open(path, "rb") as fh:
        while True:
            block = fh.read(block_bytes)
            eof = not block
            buf = carry + block
            if eof:
                cut = len(buf)
            else:
                # Keep the bytes after the last LF for the next block: the line is incomplete
                # (and a CR at the very end may be the first half of a CRLF).
                cut = buf.rfind(b"\n") + 1
            seg, carry = buf[:cut], buf[cut:]
            if seg:
                lines = _split_lines(seg)
                for start in range(0, len(lines), chunk_rows):
                    piece = lines.slice(start, chunk_rows)
                    yield piece, first_line
                    first_line += len(piece)
            if eof:
                return


def _split_lines(seg: bytes) -> pa.Array:
    """Lines of `seg` (terminators kept) as a zero-copy `binary` array over its bytes."""
    a = np.frombuffer(seg, dtype=np.uint8)
    lf = a == 0x0A
    if seg.find(b"\r") < 0:  # the usual case, checked at memchr speed
        ends = np.flatnonzero(lf) + 1
    else:
        # A CR ends a line unless it is the first half of a CRLF; an LF always ends one.
        cr_alone = a == 0x0D
        cr_alone[:-1] &= ~lf[1:]
        ends = np.flatnonzero(lf | cr_alone) + 1
    if len(ends) == 0 or ends[-1] != len(a):
        ends = np.append(ends, len(a))  # a last line without a terminator
    offsets = np.concatenate([[0], ends]).astype(np.int64)
    return pa.Array.from_buffers(
        pa.large_binary(), len(ends), [None, pa.py_buffer(offsets), pa.py_buffer(seg)]
    )


def _decode_lines(lines: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(text, bad): `string` lines without terminators; bad[i] marks a line that is not UTF-8."""
    text, bad = _decode(lines)
    return pc.utf8_rtrim(text, characters="\r\n"), bad


def _decode(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(text, bad): `binary` values as `large_string`; a value that is not UTF-8 becomes empty.

    Checking value by value happens only when the whole array fails to decode.
    """
    try:
        return values.cast(pa.large_string()), np.zeros(len(values), dtype=bool)
    except pa.ArrowInvalid:
        pass
    items = values.to_pylist()
    bad = np.array([v is not None and not _is_utf8(v) for v in items], dtype=bool)
    fixed = pa.array([b"" if b else v for v, b in zip(items, bad, strict=True)], pa.large_binary())
    return fixed.cast(pa.large_string()), bad


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _list_item(lists: pa.Array, counts: np.ndarray, j: int) -> pa.Array:
    """Item j of every list in `lists` (null where a list is shorter), without a row loop."""
    offsets = lists.offsets.to_numpy()
    has = counts > j
    idx = pa.array(np.where(has, offsets[:-1] + j, 0), type=pa.int64(), mask=~has)
    return lists.values.take(idx)


# --- row problems --------------------------------------------------------------------------


class _Problems:
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


def _raw(col: pa.Array, i: int) -> str:
    value = col[i].as_py()
    return "" if value is None else value


def parse_numbers(col: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values float64, missing, bad) for a `string` column of numbers.

    Missing: null or a missing-value spelling ("", "nan", "NA", ...); bad: anything else that is
    not a finite decimal number (including values that overflow float64). values is NaN where
    missing (and undefined where bad).
    """
    # Fast path: a plain cast. It is trusted only when every non-empty value came out finite;
    # anything else (a failed cast, "nan", "inf", overflow) takes the full check. A property
    # test holds both paths equal.
    try:
        cast = pc.cast(_blank_to_null(col), pa.float64())
    except pa.ArrowInvalid:
        return _parse_numbers_checked(col)
    values = cast.to_numpy(zero_copy_only=False)  # null -> NaN
    missing = np.isnan(values)
    if cast.null_count != int(missing.sum()) or not np.isfinite(values[~missing]).all():
        return _parse_numbers_checked(col)
    return values, missing, np.zeros(len(values), dtype=bool)


def _parse_numbers_checked(col: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """parse_numbers, value by value against the number pattern (vectorized)."""
    s = pc.utf8_trim_whitespace(col)
    missing = pc.or_(pc.is_null(s), pc.is_in(s, value_set=_MISSING_NUMBER))
    ok = pc.fill_null(pc.match_substring_regex(s, _NUMBER_RE), False)
    values = pc.cast(pc.if_else(ok, s, pa.scalar(None, s.type)), pa.float64())
    values = values.to_numpy(zero_copy_only=False)
    missing = missing.to_numpy(zero_copy_only=False)
    ok = ok.to_numpy(zero_copy_only=False)
    bad = ~missing & ~(ok & np.isfinite(values))
    return np.where(missing, np.nan, values), missing, bad


def _blank_to_null(col: pa.Array) -> pa.Array:
    return pc.if_else(pc.equal(col, ""), pa.scalar(None, col.type), col)


# --- readers -------------------------------------------------------------------------------


class Reader:
    """Base class: validates raw columns of a chunk and turns them into the output batch.

    Iterating reads the file from the start, so a reader can make several passes; `skipped`
    ({reason: rows}), `rows` and `lines` describe the latest pass.
    """

    format: ClassVar[str]

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
        self, columns: Mapping[str, pa.Array], lines: np.ndarray, problems: _Problems
    ) -> pa.RecordBatch | None:
        """Validate raw `string` columns (by source name) and build the output batch.

        `problems` holds what the format-specific parsing found already; rows it marks are not
        checked further, so a row is counted once, under its first problem.
        """
        self.lines += len(lines)
        out: dict[str, pa.Array | np.ndarray] = {}
        numeric_masks: dict[str, np.ndarray] = {}
        for src, kind in self.field_columns:
            col = columns[src]
            if kind == "categorical":
                out[src] = _blank_to_null(col)
                continue
            values, missing, bad = parse_numbers(col)
            problems.add(
                bad,
                BAD_NUMBER,
                lambda i, src=src, col=col: f"column {src}: {_raw(col, i)!r} is not a number",
            )
            out[src] = values
            numeric_masks[src] = missing
        for name, src in self.label_sources:
            col = columns[src]
            values, missing, bad = parse_numbers(col)
            bad |= missing | ~((values == 0) | (values == 1))
            problems.add(
                bad,
                BAD_LABEL,
                lambda i, name=name, col=col: (
                    f"label {name!r} must be 0 or 1, got {_raw(col, i)!r}"
                ),
            )
            out[name] = values
        if self.time_column:
            out[TIME_COLUMN] = _blank_to_null(columns[self.time_column])

        keep = ~problems.bad
        if not keep.all():
            if self.on_error == "raise":
                i, message = problems.first()
                raise DataError(f"{self.path}:{int(lines[i])}: {message}")
            for reason, n in problems.counts().items():
                self.skipped[reason] = self.skipped.get(reason, 0) + n
            if not keep.any():
                return None
        keep_idx = None if keep.all() else pa.array(np.flatnonzero(keep))
        arrays, names = [], []
        for name, value in out.items():
            if isinstance(value, np.ndarray):
                value = pa.array(value, type=pa.float64(), mask=numeric_masks.get(name))
            if keep_idx is not None:
                value = value.take(keep_idx)
            arrays.append(value.cast(pa.string()) if _is_text(value) else value)
            names.append(name)
        arrays.append(pa.array(np.asarray(lines, dtype=np.int64)[keep]))
        names.append(LINE_COLUMN)
        return pa.RecordBatch.from_arrays(arrays, names=names)


def _is_text(arr: pa.Array) -> bool:
    return pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)


class DelimitedReader(Reader):
    """`csv`: one record per line, values split by `delimiter`.

    Options: `delimiter` (default ","), `header` (default true: the first line names the columns),
    `columns` (the names when there is no header, or to replace the header's), `quote_char`
    (default '"'; null or false: quotes are ordinary characters), `min_columns` (null: every line
    needs all columns; n: lines with n or more columns are padded with missing values),
    `block_bytes` (bytes read at a time).
    """

    format = "csv"

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
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        **kwargs: Any,
    ) -> None:
        super().__init__(path, schema, **kwargs)
        if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in "\r\n":
            raise SchemaError(f"data.delimiter: expected one character, got {delimiter!r}")
        if quote_char is True:
            quote_char = '"'
        if quote_char and (len(quote_char) != 1 or quote_char == delimiter):
            raise SchemaError(f"data.quote_char: expected one character, got {quote_char!r}")
        if not header and not columns:
            raise SchemaError("data.columns: required when data.header is false")
        self.delimiter = delimiter
        self.header = bool(header)
        self.columns = list(columns) if columns else None
        self.quote_char = quote_char or None
        self.min_columns = min_columns
        self.block_bytes = int(block_bytes)

    def _empty_hint(self) -> str:
        return " or has only its header" if self.header else ""

    def _parse_header(self, text: pa.Array, bad: np.ndarray) -> list[str]:
        if bad[0]:
            raise DataError(f"{self.path}:1: the header is not valid UTF-8")
        line = text[0].as_py().removeprefix("\ufeff")  # a byte order mark is not part of a name
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
        names = self.columns
        positions = self._check_columns(names) if names else None
        at_start = self.header
        for lines, first in _iter_line_chunks(self.path, self.chunk_rows, self.block_bytes):
            text, bad_utf8 = _decode_lines(lines)
            if at_start:
                header_names = self._parse_header(text, bad_utf8)
                names = names or header_names
                positions = self._check_columns(names)
                text, bad_utf8, first = text.slice(1), bad_utf8[1:], first + 1
                at_start = False
                if len(text) == 0:
                    continue
            yield self._chunk(text, bad_utf8, first, names, positions)

    def _chunk(
        self,
        text: pa.Array,
        bad_utf8: np.ndarray,
        first: int,
        names: list[str],
        positions: dict[str, int],
    ) -> pa.RecordBatch | None:
        n = len(text)
        problems = _Problems(n)
        problems.add(bad_utf8, BAD_ENCODING, lambda i: "the line is not valid UTF-8")
        lists = pc.split_pattern(text, self.delimiter)
        counts = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
        columns = {c: _list_item(lists, counts, j) for c, j in positions.items()}
        if self.quote_char:
            self._requote(text, counts, columns, positions, problems)
        expected = len(names)
        ok = counts == expected
        if self.min_columns is not None:
            ok |= (counts >= self.min_columns) & (counts < expected)
        problems.add(
            ~ok,
            WRONG_COLUMN_COUNT,
            lambda i: f"expected {expected} columns, got {counts[i]}",
        )
        return self._finish(columns, np.arange(first, first + n, dtype=np.int64), problems)

    def _requote(
        self,
        text: pa.Array,
        counts: np.ndarray,
        columns: dict[str, pa.Array],
        positions: dict[str, int],
        problems: _Problems,
    ) -> None:
        """Re-split the (rare) lines that contain the quote character with the csv module."""
        quoted = pc.match_substring(text, self.quote_char).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(quoted)
        if len(rows) == 0:
            return
        parsed: list[list[str]] = []
        broken = np.zeros(len(text), dtype=bool)
        errors: dict[int, str] = {}
        dialect = self._csv_dialect()
        for i in rows:
            try:
                values = next(csv.reader([text[int(i)].as_py()], **dialect), [])
            except csv.Error as exc:
                broken[i] = True
                errors[int(i)] = str(exc)
                values = []
            parsed.append(values)
            counts[i] = len(values)
        problems.add(
            broken,
            WRONG_COLUMN_COUNT,
            lambda i: f"cannot split the line on quotes: {errors[i]}",
        )
        for c, j in positions.items():
            repl = pa.array([v[j] if j < len(v) else None for v in parsed], pa.string())
            columns[c] = pc.replace_with_mask(
                columns[c], pa.array(quoted), repl.cast(columns[c].type)
            )


class CriteoTsvReader(DelimitedReader):
    """`criteo_tsv`: Kaggle DAC train.txt, label I1..I13 C1..C26 tab-separated, no header.

    The label column is `label`; it feeds the schema's single label (by default `click`).
    """

    format = "criteo_tsv"

    def __init__(
        self, path: str | Path, schema: Schema, *, min_columns: int = 14, **kwargs: Any
    ) -> None:
        if len(schema.labels) != 1:
            raise SchemaError(f"data.schema.labels: criteo_tsv has one label, got {schema.labels}")
        kwargs.setdefault("label_columns", {schema.labels[0]: "label"})
        for key in ("delimiter", "header", "columns", "quote_char"):
            if key in kwargs:
                raise SchemaError(f"data.{key}: fixed by format criteo_tsv")
        super().__init__(
            path,
            schema,
            delimiter="\t",
            header=False,
            columns=list(CRITEO_COLUMNS),
            quote_char=None,
            min_columns=min_columns,
            **kwargs,
        )


class LibffmReader(Reader):
    """`libffm`: `label field:feature:value ...`, one record per line.

    Options: `duplicate_fields`: "error" (default: a field given twice on a line is a row problem)
    or "first" (keep the first occurrence; for files where a field lists several features).
    """

    format = "libffm"
    _FIELD_RE = re.compile(r"^f([0-9]+)$")

    def __init__(
        self,
        path: str | Path,
        schema: Schema,
        *,
        duplicate_fields: str = "error",
        block_bytes: int = DEFAULT_BLOCK_BYTES,
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
        self.block_bytes = int(block_bytes)
        numbers = []
        for src, _ in self.field_columns:
            m = self._FIELD_RE.match(src)
            if not m:
                raise SchemaError(
                    f"data.schema.fields: libffm field columns are named f<number>, got {src!r}"
                )
            numbers.append(int(m.group(1)))
        self.field_numbers = np.array(numbers, dtype=np.int64)

    def _batches(self) -> Iterator[pa.RecordBatch | None]:
        for lines, first in _iter_line_chunks(self.path, self.chunk_rows, self.block_bytes):
            text, bad_utf8 = _decode_lines(lines)
            yield self._chunk(text, bad_utf8, first)

    def _chunk(self, text: pa.Array, bad_utf8: np.ndarray, first: int) -> pa.RecordBatch | None:
        n = len(text)
        problems = _Problems(n)
        problems.add(bad_utf8, BAD_ENCODING, lambda i: "the line is not valid UTF-8")
        tokens = pc.ascii_split_whitespace(pc.ascii_trim_whitespace(text))
        counts = pc.list_value_length(tokens).to_numpy(zero_copy_only=False).astype(np.int64)
        offsets = tokens.offsets.to_numpy().astype(np.int64)
        label = _list_item(tokens, counts, 0)

        # Every token after the label, with the row it belongs to (flat, in file order).
        n_feat = np.maximum(counts - 1, 0)
        row = np.repeat(np.arange(n), n_feat)
        tok_idx = np.arange(len(row)) - np.repeat(np.cumsum(n_feat) - n_feat, n_feat)
        tok_idx += offsets[:-1][row] + 1
        feat = tokens.values.take(pa.array(tok_idx, type=pa.int64()))
        parts = pc.split_pattern(feat, ":")
        nparts = pc.list_value_length(parts).to_numpy(zero_copy_only=False).astype(np.int64)
        field_s = _list_item(parts, nparts, 0)
        feature_s = _list_item(parts, nparts, 1)
        _, _, value_bad = parse_numbers(_list_item(parts, nparts, 2))
        well_formed = (
            (nparts == 3)
            & pc.fill_null(pc.match_substring_regex(field_s, r"^[0-9]{1,9}$"), False).to_numpy(
                zero_copy_only=False
            )
            & pc.fill_null(pc.not_equal(feature_s, ""), False).to_numpy(zero_copy_only=False)
            & ~value_bad
        )
        problems.add(
            _rows_with(~well_formed, row, n),
            BAD_TOKEN,
            lambda i: (
                f"malformed token {_first_token(feat, row, ~well_formed, i)!r} "
                "(expected field:feature:value)"
            ),
        )

        number = np.full(len(row), -1, dtype=np.int64)
        number[well_formed] = pc.cast(field_s.filter(pa.array(well_formed)), pa.int64()).to_numpy()
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
        tok = np.flatnonzero(known)
        key = row[tok] * len(self.field_numbers) + pos[tok]
        order = np.argsort(key, kind="stable")
        repeat = np.zeros(len(tok), dtype=bool)
        repeat[order[1:]] = key[order[1:]] == key[order[:-1]]
        if self.duplicate_fields == "error":
            dup_tokens = np.zeros(len(row), dtype=bool)
            dup_tokens[tok[repeat]] = True
            problems.add(
                _rows_with(dup_tokens, row, n),
                DUPLICATE_FIELD,
                lambda i: (
                    f"field {number[np.flatnonzero(dup_tokens & (row == i))[0]]} is given twice"
                ),
            )
        tok = tok[~repeat]

        columns: dict[str, pa.Array] = {}
        for j, (src, _) in enumerate(self.field_columns):
            sel = tok[pos[tok] == j]
            where = np.full(n, -1, dtype=np.int64)
            where[row[sel]] = sel
            columns[src] = feature_s.take(pa.array(where, type=pa.int64(), mask=where < 0))
        columns[self.label_sources[0][1]] = label
        return self._finish(columns, np.arange(first, first + n, dtype=np.int64), problems)


def _rows_with(token_mask: np.ndarray, row: np.ndarray, n: int) -> np.ndarray:
    """Rows (bool, length n) that own at least one token in `token_mask`."""
    return np.bincount(row[token_mask], minlength=n) > 0


def _first_token(feat: pa.Array, row: np.ndarray, mask: np.ndarray, i: int) -> str:
    return _raw(feat, int(np.flatnonzero(mask & (row == i))[0]))


class ParquetReader(Reader):
    """`parquet`: columns named by the schema; every value is validated like text.

    `__line__` is the 1-based row number. Values are cast to strings first so that parquet goes
    through the same checks as text (a float label 0.5 is a bad_label, NaN is missing).
    """

    format = "parquet"

    def _batches(self) -> Iterator[pa.RecordBatch | None]:
        try:
            pf = pq.ParquetFile(self.path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{self.path}: not a readable parquet file ({exc})") from None
        names = pf.schema_arrow.names
        missing = [c for c in self.source_columns if c not in names]
        if missing:
            raise DataError(f"{self.path}: column(s) {missing} not found; the file has {names}")
        first = 1
        try:
            for batch in pf.iter_batches(batch_size=self.chunk_rows, columns=self.source_columns):
                n = batch.num_rows
                columns = {c: _as_text(batch.column(c)) for c in self.source_columns}
                yield self._finish(
                    columns, np.arange(first, first + n, dtype=np.int64), _Problems(n)
                )
                first += n
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise DataError(
                f"{self.path}: cannot read rows after row {first - 1} ({exc})"
            ) from None


def _as_text(col: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        text, _ = _decode(col)  # invalid UTF-8 becomes an empty (missing) value
        return text
    return col.cast(pa.large_string())


READERS: dict[str, type[Reader]] = {
    cls.format: cls for cls in (DelimitedReader, CriteoTsvReader, LibffmReader, ParquetReader)
}


def open_reader(format: str, path: str | Path, schema: Schema, **options: Any) -> Reader:
    """A reader for `format` (one of READERS) over `path`; options are the format's keywords.

    Common options: on_error ("raise" | "skip"), chunk_rows, label_columns ({label: column}),
    time_column, config_key (the config key named when the file is missing).
    """
    if format not in READERS:
        raise SchemaError(f"data.format: expected one of {sorted(READERS)}, got {format!r}")
    try:
        return READERS[format](path, schema, **options)
    except TypeError as exc:
        raise SchemaError(f"data: bad option for format {format!r}: {exc}") from None
