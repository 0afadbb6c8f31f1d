"""`parquet`: columns named by the schema; every value is validated like text."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cvr.data.errors import DataError
from cvr.data.readers.base import Problems, Reader
from cvr.data.readers.lines import decode


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
                    columns, np.arange(first, first + n, dtype=np.int64), Problems(n)
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
        text, _ = decode(col)  # invalid UTF-8 becomes an empty (missing) value
        return text
    return col.cast(pa.large_string())
