"""Readers: stream raw data files as Arrow record batches of validated raw values.

One module per format behind the `Reader` protocol (`base.py`, which also describes the batches
every reader yields); the line splitter (`lines.py`, plain and compressed files) and column
cutter (`columns.py`) are shared, and so is number parsing (`cvr.data.numbers`, which serving
records use too). Formats (`data.format`):

- `csv` (`delimited.py`): delimited text, with a header (`header: true`) or `columns: [...]`.
- `criteo_tsv` (`criteo.py`): the Kaggle DAC layout without a header, short lines padded.
- `libffm` (`libffm.py`): `label field:feature:value ...`; field n feeds the field `f{n}`.
- `parquet` (`parquet.py`): columns named by the schema.

A new format is one module with a `Reader` subclass plus one line in `READERS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cvr.data.numbers import parse_numbers
from cvr.data.readers.base import (
    DEFAULT_CHUNK_ROWS,
    LINE_COLUMN,
    TIME_COLUMN,
    Problems,
    Reader,
    TextReader,
)
from cvr.data.readers.criteo import CRITEO_COLUMNS, CriteoTsvReader
from cvr.data.readers.delimited import DelimitedReader
from cvr.data.readers.libffm import LibffmReader
from cvr.data.readers.lines import DEFAULT_BLOCK_BYTES, DEFAULT_MAX_LINE_BYTES
from cvr.data.readers.parquet import ParquetReader
from cvr.data.schema import Schema, SchemaError

READERS: dict[str, type[Reader]] = {
    "csv": DelimitedReader,
    "criteo_tsv": CriteoTsvReader,
    "libffm": LibffmReader,
    "parquet": ParquetReader,
}

__all__ = [
    "CRITEO_COLUMNS",
    "DEFAULT_BLOCK_BYTES",
    "DEFAULT_CHUNK_ROWS",
    "DEFAULT_MAX_LINE_BYTES",
    "LINE_COLUMN",
    "READERS",
    "TIME_COLUMN",
    "Problems",
    "Reader",
    "TextReader",
    "open_reader",
    "parse_numbers",
]


def open_reader(format: str, path: str | Path, schema: Schema, **options: Any) -> Reader:
    """A reader for `format` (one of READERS) over `path`; options are the format's keywords.

    Common options: on_error ("raise" | "skip"), chunk_rows, label_columns ({label: column}),
    time_column, config_key (the config key named when the file is missing); text formats also
    take block_bytes and max_line_bytes.
    """
    if format not in READERS:
        raise SchemaError(f"data.format: expected one of {sorted(READERS)}, got {format!r}")
    try:
        return READERS[format](path, schema, **options)
    except TypeError as exc:
        raise SchemaError(f"data: bad option for format {format!r}: {exc}") from None
