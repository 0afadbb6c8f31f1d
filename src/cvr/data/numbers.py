"""Number parsing for text columns: one vectorised rule for every reader and for serving records.

A number is a finite decimal in ASCII digits (`-1`, `2.5`, `.5`, `1e-3`); a missing value is null,
empty, or one of the spellings pandas writes (`nan`, `NA`, `null`, ...). Anything else is bad.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cvr.data.arrow_numpy import from_numpy, from_strings, to_numpy

# A decimal number, ASCII digits only (RE2's \d would accept other scripts' digits).
NUMBER_RE = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
# Spellings of a missing numeric value (empty is the usual one; the rest are what pandas writes).
# A tuple, made an Arrow array where used, through buffers (pa.array() imports pandas).
MISSING_NUMBER = ("", "nan", "NaN", "NAN", "NA", "null", "NULL", "None")


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
        cast = pc.cast(blank_to_null(col), pa.float64())
    except pa.ArrowInvalid:
        return parse_numbers_checked(col)
    values = to_numpy(cast)  # null -> NaN
    missing = np.isnan(values)
    if cast.null_count != int(missing.sum()) or not np.isfinite(values[~missing]).all():
        return parse_numbers_checked(col)
    return values, missing, np.zeros(len(values), dtype=bool)


def parse_numbers_checked(col: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """parse_numbers, value by value against the number pattern (vectorized)."""
    s = pc.utf8_trim_whitespace(col)
    missing = pc.or_(pc.is_null(s), pc.is_in(s, value_set=from_strings(MISSING_NUMBER)))
    # Scalars taken from arrays: pa.scalar() (and a plain False or None here) imports pandas.
    false, null = from_numpy(np.zeros(1, dtype=bool))[0], pa.nulls(1, s.type)[0]
    ok = pc.fill_null(pc.match_substring_regex(s, NUMBER_RE), false)
    values = pc.cast(pc.if_else(ok, s, null), pa.float64())
    values, missing, ok = to_numpy(values), to_numpy(missing), to_numpy(ok)
    bad = ~missing & ~(ok & np.isfinite(values))
    return np.where(missing, np.nan, values), missing, bad


def blank_to_null(col: pa.Array) -> pa.Array:
    """`col` with empty strings as nulls (a no-op copy-free return when there are none)."""
    empty = pc.equal(col, from_strings([""])[0])  # an Arrow scalar: "" would import pandas
    if not pc.any(empty).as_py():
        return col
    return pc.if_else(empty, pa.nulls(1, col.type)[0], col)
