"""Fuzzing the readers: whatever the bytes, only DataError, and every line is accounted for.

Lines are counted as `bytes.splitlines` does (LF, CRLF, lone CR), the readers' definition.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cvr.data.errors import DataError
from cvr.data.numbers import parse_numbers_checked as _parse_numbers_checked
from cvr.data.preprocess import Preprocessor
from cvr.data.readers import LINE_COLUMN, open_reader, parse_numbers
from cvr.data.schema import Schema

# CVR_FUZZ_EXAMPLES=2000 for a longer hunt; the suite keeps it short.
FUZZ = settings(
    max_examples=int(os.environ.get("CVR_FUZZ_EXAMPLES", "50")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

CRITEO = Schema.from_dict(
    {
        "fields": [{"name": f"I{i}", "kind": "numeric"} for i in range(1, 14)]
        + [f"C{i}" for i in range(1, 27)]
    }
)
SMALL = Schema.from_dict({"fields": [{"name": "n", "kind": "numeric"}, "c"]})
FFM = Schema.from_dict({"fields": [f"f{i}" for i in range(4)]})

# Values that are awkward for a parser: missing spellings, overflow, signs, quotes, separators,
# line breaks, NUL, non-ASCII, huge integers, every float repr (nan, inf, 1e+300, -0.0).
NASTY = st.sampled_from(
    [
        "",
        "0",
        "1",
        "2",
        "-1",
        "0.5",
        "1.0",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "1e400",
        "1e-400",
        "abc",
        "0x1f",
        '"',
        '""',
        'a"b',
        '"q,q"',
        ",",
        ":",
        "\t",
        " ",
        "\r",
        "\n",
        "\r\n",
        "\x00",
        "1:2:3",
        "0:a:1",
        "3:x:0.5",
        "9:z:1",
        "é",
        "✓",
        "٣",
        "\ufeff",
    ]
)
TOKEN = st.one_of(
    NASTY,
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=6),
)


def lines_of(sep: str, max_tokens: int) -> st.SearchStrategy[bytes]:
    line = st.lists(TOKEN, max_size=max_tokens).map(sep.join)
    text = st.tuples(
        st.lists(line, max_size=12), st.sampled_from(["\n", "\r\n", "\r"]), st.booleans()
    ).map(lambda t: (t[1].join(t[0]) + (t[1] if t[2] else "")).encode("utf-8"))
    # Some raw bytes (invalid UTF-8 included), some text with a stray invalid byte.
    spoiled = st.tuples(text, st.binary(min_size=1, max_size=3), st.integers(0, 500)).map(
        lambda t: t[0][: t[2]] + t[1] + t[0][t[2] :]
    )
    return st.one_of(text, spoiled, st.binary(max_size=400))


def check_reader(fmt, path, schema, expected_lines, first_line=1, **options):
    """Only DataError; on success every line is a row (raise) or a row or a skip (skip).

    Returns the skip-mode batches (empty when that raised).
    """
    batches: list[pa.RecordBatch] = []
    for on_error in ("raise", "skip"):
        reader = open_reader(fmt, path, schema, on_error=on_error, chunk_rows=5, **options)
        try:
            batches = list(reader)
        except DataError as exc:
            assert str(path) in str(exc)
            if on_error == "skip":  # nothing to skip past: the file has no data lines
                assert expected_lines == 0, exc
            batches = []
            continue
        rows = sum(b.num_rows for b in batches)
        if on_error == "raise":
            assert rows == expected_lines and reader.skipped == {}
        else:
            assert rows + sum(reader.skipped.values()) == expected_lines == reader.lines
        if batches:
            lines = pa.concat_arrays([b.column(LINE_COLUMN) for b in batches]).to_numpy()
            assert (np.diff(lines) > 0).all()
            assert lines[0] >= first_line and lines[-1] < first_line + expected_lines
    return batches


def encode_through_preprocessor(batches, schema):
    """The skipped-mode rows must also survive fitting and transforming."""
    if not batches:
        return
    pre = Preprocessor(schema, {"numeric_rule": "criteo_log"}).fit(batches)
    cards = np.array(pre.cardinalities)
    for batch in batches:
        ids = pre.transform(batch)
        assert ((ids >= 0) & (ids < cards)).all()


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(data=lines_of("\t", 45))
def test_fuzz_criteo_tsv(fuzz_dir, data):
    path = fuzz_dir / "criteo.tsv"
    path.write_bytes(data)
    batches = check_reader("criteo_tsv", path, CRITEO, len(data.splitlines()))
    encode_through_preprocessor(batches, CRITEO)


@FUZZ
@given(data=lines_of(",", 5), quote=st.booleans())
def test_fuzz_csv(fuzz_dir, data, quote):
    path = fuzz_dir / "small.csv"
    path.write_bytes(b"n,c,click\n" + data)
    options = {"quote_char": '"' if quote else None}
    batches = check_reader("csv", path, SMALL, len(data.splitlines()), first_line=2, **options)
    encode_through_preprocessor(batches, SMALL)


@FUZZ
@given(data=lines_of(" ", 8), duplicates=st.sampled_from(["error", "first"]))
def test_fuzz_libffm(fuzz_dir, data, duplicates):
    path = fuzz_dir / "d.ffm"
    path.write_bytes(data)
    batches = check_reader("libffm", path, FFM, len(data.splitlines()), duplicate_fields=duplicates)
    encode_through_preprocessor(batches, FFM)


@st.composite
def frames(draw):
    n = draw(st.integers(0, 12))

    def column(*elements):
        return draw(st.one_of(*(st.lists(e, min_size=n, max_size=n) for e in elements)))

    floats = st.floats(allow_nan=True, allow_infinity=True)
    ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
    texts = st.one_of(NASTY, st.text(max_size=5), st.none())
    return pd.DataFrame(
        {
            "n": column(floats, ints, texts),
            "c": column(texts, ints, floats),
            "click": column(st.sampled_from([0, 1]), floats, texts, st.sampled_from([0.0, 1.0])),
        }
    )


@FUZZ
@given(df=frames())
def test_fuzz_parquet(fuzz_dir, df):
    path = fuzz_dir / "d.parquet"
    df.to_parquet(path)
    batches = check_reader("parquet", path, SMALL, len(df))
    encode_through_preprocessor(batches, SMALL)


NUMBERISH = st.one_of(
    NASTY,
    st.text(alphabet="0123456789+-.eEnaifINFx_ ,٣\t", max_size=8),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.integers(min_value=-(10**400), max_value=10**400).map(str),
)


@FUZZ
@given(values=st.lists(st.one_of(NUMBERISH, st.none()), max_size=6))
def test_number_parsing_fast_path_agrees_with_the_full_check(values):
    # Each value alone (where the fast path may apply) and all together (where one bad value
    # sends the whole column to the full check) must give the same answer.
    for arr in [pa.array([v], pa.large_string()) for v in values] + [
        pa.array(values, pa.large_string())
    ]:
        fast, exact = parse_numbers(arr), _parse_numbers_checked(arr)
        np.testing.assert_array_equal(fast[1], exact[1])  # missing
        np.testing.assert_array_equal(fast[2], exact[2])  # bad
        good = ~exact[1] & ~exact[2]
        np.testing.assert_array_equal(fast[0][good], exact[0][good])


def test_garbage_that_is_not_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"d\.parquet: not a readable parquet file"):
        list(open_reader("parquet", path, SMALL))
