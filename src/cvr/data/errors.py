"""Errors for bad input data, and the row-level problems a reader can skip and count.

Bad input is expected, not exceptional: every problem gets a message that names the file, the
line and what was expected, e.g. ``criteo.tsv:17: expected 40 columns, got 12``.
"""

from __future__ import annotations

from collections.abc import Mapping

from cvr.data.schema import SchemaError

ON_ERROR = ("raise", "skip")

# Row-level problems, the keys of the `skipped` counts a store records under on_error=skip.
# A row with several problems is counted once, under the first of these it hits (this order).
LINE_TOO_LONG = "line_too_long"  # a line longer than data.max_line_bytes
BAD_ENCODING = "bad_encoding"  # bytes that are not UTF-8
WRONG_COLUMN_COUNT = "wrong_column_count"
BAD_TOKEN = "bad_token"  # libffm: a token that is not field:feature:value
UNKNOWN_FIELD = "unknown_field"  # libffm: a field number the schema does not name
DUPLICATE_FIELD = "duplicate_field"  # libffm: a field given twice on one line
BAD_NUMBER = "bad_number"
BAD_LABEL = "bad_label"
REASONS = (
    LINE_TOO_LONG,
    BAD_ENCODING,
    WRONG_COLUMN_COUNT,
    BAD_TOKEN,
    UNKNOWN_FIELD,
    DUPLICATE_FIELD,
    BAD_NUMBER,
    BAD_LABEL,
)


class DataError(ValueError):
    """Input data that cannot be read as promised; the message names the file and the line."""


def check_on_error(on_error: str) -> str:
    """Validate the `data.on_error` setting and return it."""
    if on_error not in ON_ERROR:
        raise SchemaError(f"data.on_error: expected one of {ON_ERROR}, got {on_error!r}")
    return on_error


def merge_counts(total: dict[str, int], more: Mapping[str, int]) -> dict[str, int]:
    """Add the counts in `more` into `total` (in place) and return it."""
    for key, n in more.items():
        total[key] = total.get(key, 0) + int(n)
    return total
