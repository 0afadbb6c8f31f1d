"""Serving records (a DataFrame of raw values, one column per field name) as reader batches.

The Preprocessor encodes what readers yield; a record from a caller is coerced here into the
same columns (categorical strings, numeric float64, null = missing), under the same number rule
as files (`cvr.data.numbers`). Anything else raises a DataError that names the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cvr.data.errors import DataError
from cvr.data.numbers import parse_numbers

if TYPE_CHECKING:
    import pandas as pd


class _Encoder(Protocol):
    name: str
    source: str
    kind: str


def records_batch(encoders: Sequence[_Encoder], df: pd.DataFrame) -> pa.RecordBatch:
    """A reader-shaped batch (one column per source column) of the records in `df`.

    A missing column means missing values; a source column shared by several fields is read
    under its first field's name.
    """
    n = len(df)
    columns: dict[str, pa.Array] = {}
    for enc in encoders:
        if enc.source in columns:
            continue
        if enc.name not in df.columns:
            kind_type = pa.float64() if enc.kind == "numeric" else pa.string()
            columns[enc.source] = pa.nulls(n, kind_type)
        elif enc.kind == "numeric":
            columns[enc.source] = numeric_column(enc.name, df[enc.name])
        else:
            columns[enc.source] = categorical_column(enc.name, df[enc.name])
    return pa.RecordBatch.from_arrays(list(columns.values()), names=list(columns))


def categorical_column(name: str, series: pd.Series) -> pa.Array:
    """Strings (null = missing) from strings, integers or integral floats."""
    try:
        arr = pa.array(series, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        raise DataError(
            f"field {name!r}: values must be strings or integers, got mixed types"
        ) from None
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t):
        return arr.cast(pa.string())
    if pa.types.is_integer(t):
        return arr.cast(pa.string())
    if pa.types.is_floating(t):
        values = arr.to_numpy(zero_copy_only=False)
        finite = values[~np.isnan(values)]
        if np.all(np.isfinite(finite)) and np.all(finite == np.floor(finite)):
            return arr.cast(pa.int64()).cast(pa.string())
    raise DataError(f"field {name!r}: categorical values must be strings or integers, got {t}")


def numeric_column(name: str, series: pd.Series) -> pa.Array:
    """float64 (null = missing) from numbers or number strings; inf is rejected like in files."""
    try:
        arr = pa.array(series, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        raise DataError(f"field {name!r}: values must be numbers, got mixed types") from None
    t = arr.type
    if pa.types.is_null(t):
        return arr.cast(pa.float64())
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        values, missing, bad = parse_numbers(arr)
    elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        values = pc.fill_null(arr.cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False)
        missing = np.isnan(values)
        bad = np.isinf(values)
    else:
        raise DataError(f"field {name!r}: numeric values must be numbers, got {t}")
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"field {name!r}: {arr[i].as_py()!r} is not a number (row {i})")
    return pa.array(values, type=pa.float64(), mask=missing)


# Value types the single-record path takes as they are (exact types: bool is not an int here).
_FLOAT_TYPES = frozenset({float, np.float64, np.float32})
_INT_TYPES = frozenset(
    {int, np.int64, np.int32, np.int16, np.int8, np.uint64, np.uint32, np.uint16, np.uint8}
)


def plain_number(value: Any) -> float | None:
    """A float (NaN = missing) for an int or float that a DataFrame takes as it is, else None."""
    kind = type(value)
    if kind in _FLOAT_TYPES:
        number = float(value)
        return None if number in (np.inf, -np.inf) else number
    if kind in _INT_TYPES and -(2**53) <= value <= 2**53:  # exact in float64
        return float(value)
    return None


def plain_category(value: Any) -> str | None:
    """The category string of a str (valid UTF-8) or int64 value, else None."""
    kind = type(value)
    if kind is str:
        if value.isascii():
            return value
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return None  # lone surrogates: transform_records names the error
        return value
    if kind in _INT_TYPES and -(2**63) <= value < 2**63:
        return str(int(value))
    return None
