"""Fuzzed Predictor inputs: bad input raises only DataError/ValueError with a clear message, a
valid record always gives exactly one finite probability in (0, 1), and row counts never drift.

The bundle is the CSV-built one of test_bundle (categorical, hashed, criteo_log and quantile
fields), so every encoding rule sees the fuzz.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cvr.data.errors import DataError
from cvr.serving.predictor import Predictor
from tests.serving.test_bundle import FILE_SCHEMA, make_file_bundle

FIELDS = [f["name"] for f in FILE_SCHEMA["fields"]]
NUMERIC = {f["name"] for f in FILE_SCHEMA["fields"] if f["kind"] == "numeric"}
FUZZ = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)  # surrogates too
ANYTHING = st.one_of(
    st.none(),
    ANY_TEXT,
    st.just(""),
    st.integers(),  # unbounded: far past int64
    st.floats(),  # NaN and +-inf included
    st.booleans(),
    st.binary(max_size=4),
    st.complex_numbers(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.sampled_from(
        [np.int64(3), np.float32("nan"), pd.NA, object(), {1, 2}, ("a",), "\ud800", "a\udfffb"]
    ),
)
VALID_CATEGORY = st.one_of(
    st.none(), st.text(max_size=12), st.integers(-(2**63), 2**63 - 1), st.sampled_from(["s1"])
)
VALID_NUMBER = st.one_of(
    st.none(),
    st.floats(allow_infinity=False),
    st.integers(-(2**53), 2**53),
    st.sampled_from(["3", " 4.5 ", "", "nan", "-1e3"]),
)
VALID_RECORD = st.fixed_dictionaries(
    {},
    optional={name: VALID_NUMBER if name in NUMERIC else VALID_CATEGORY for name in FIELDS},
)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    bundle, _, _ = make_file_bundle(tmp_path_factory.mktemp("fuzz"))
    return Predictor.load(bundle)


def check_probabilities(probs: np.ndarray, rows: int) -> None:
    assert isinstance(probs, np.ndarray) and probs.dtype == np.float64
    assert probs.shape == (rows,)
    assert np.isfinite(probs).all() and ((probs > 0) & (probs < 1)).all()


def check_clear(exc: BaseException) -> None:
    """Only DataError/ValueError, and the message says where: a field, a record or the input."""
    assert isinstance(exc, ValueError), f"{type(exc).__name__}: {exc}"
    message = str(exc)
    assert message and ("field '" in message or "record" in message), message


@FUZZ
@given(
    st.dictionaries(
        st.one_of(st.sampled_from(FIELDS), ANY_TEXT, st.integers()), ANYTHING, max_size=8
    )
)
def test_any_record_gives_one_probability_or_a_clear_error(predictor, record):
    try:
        probs = predictor.predict(record)
    except Exception as exc:  # the test is about which exceptions escape
        check_clear(exc)
        return
    check_probabilities(probs, 1)


@FUZZ
@given(VALID_RECORD)
def test_a_valid_record_always_gives_one_probability(predictor, record):
    check_probabilities(predictor.predict(record), 1)


@FUZZ
@given(st.lists(VALID_RECORD, max_size=20))
def test_a_list_gives_one_probability_per_record_in_order(predictor, records):
    probs = predictor.predict(records)
    check_probabilities(probs, len(records))
    one_by_one = [predictor.predict(r)[0] for r in records]
    np.testing.assert_array_equal(probs, np.array(one_by_one, dtype=np.float64))


@FUZZ
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                name: (
                    st.one_of(st.none(), st.floats(allow_infinity=False))
                    if name in NUMERIC
                    else st.one_of(st.none(), st.text(max_size=6))
                )
                for name in FIELDS
            }
        ),
        min_size=1,
        max_size=20,
    )
)
def test_a_dataframe_gives_the_same_rows_as_its_records(predictor, records):
    frame = pd.DataFrame(records, columns=FIELDS)
    for name in NUMERIC:
        frame[name] = frame[name].astype("float64")
    probs = predictor.predict(frame)
    check_probabilities(probs, len(records))
    cleaned = [
        {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
        for r in records
    ]
    np.testing.assert_array_equal(probs, predictor.predict(cleaned))


@FUZZ
@given(
    st.one_of(
        st.integers(),
        st.floats(),
        st.none(),
        st.binary(),
        st.lists(st.one_of(st.integers(), st.text(), st.lists(st.integers())), min_size=1),
        st.sets(st.integers()),
    )
)
def test_inputs_that_are_not_records_are_refused_clearly(predictor, records):
    with pytest.raises(DataError) as info:
        predictor.predict(records)
    check_clear(info.value)


@FUZZ
@given(st.dictionaries(st.sampled_from(FIELDS), ANYTHING, min_size=1, max_size=5))
def test_a_bad_record_in_a_list_is_named_by_position(predictor, record):
    good = {"site": "s1"}
    try:
        predictor.predict(record)
    except ValueError:
        with pytest.raises(DataError, match=r"^record 2: "):
            predictor.predict([good, good, record, good])
        return
    assert predictor.predict([good, good, record, good]).shape == (4,)
