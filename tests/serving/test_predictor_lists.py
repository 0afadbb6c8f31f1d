"""A list of dicts is encoded as one frame, exactly as a record at a time (the reference)."""

from __future__ import annotations

import numpy as np
import pytest

from cvr.data.errors import DataError
from cvr.serving.predictor import Predictor
from tests.serving.test_bundle import make_file_bundle


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    bundle, _, _ = make_file_bundle(tmp_path_factory.mktemp("lists"))
    return Predictor.load(bundle)


def _records(rng: np.random.Generator, n: int, mixed: bool) -> list[dict]:
    """Records with absent keys, None, NaN, unknown keys; `mixed`: ints and strings together."""
    out = []
    for _ in range(n):
        record = {}
        if rng.random() < 0.8:
            record["site"] = f"s{rng.integers(25)}" if rng.random() < 0.9 else None
        if rng.random() < 0.8:
            user = int(rng.integers(2**62)) if rng.random() < 0.5 else f"u{rng.integers(300)}"
            record["user"] = user if mixed else f"u{user}"
        if rng.random() < 0.8:
            record["ad"] = int(rng.integers(40))
        if rng.random() < 0.8:
            record["price"] = float(rng.lognormal(2, 1.5)) if rng.random() < 0.9 else float("nan")
        if rng.random() < 0.8:
            record["age"] = int(rng.integers(18, 80)) if rng.random() < 0.9 else None
        if rng.random() < 0.2:
            record["colour"] = "red"
        out.append(record)
    return out


@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_list_encoding_equals_one_record_at_a_time(predictor, seed, mixed):
    records = _records(np.random.default_rng(seed), 500, mixed)
    expected = np.stack([predictor.encode(r)[0] for r in records])
    np.testing.assert_array_equal(predictor.encode(records), expected)
    np.testing.assert_array_equal(predictor.predict(records), predictor.predict_ids(expected))


def test_large_integers_keep_their_exact_category(predictor):
    # A float column would turn 2**60 + 1 into 2**60: dtype=object keeps the int.
    records = [{"user": 2**60 + 1}] + [{"user": None}] * 100
    expected = np.stack([predictor.encode(r)[0] for r in records])
    np.testing.assert_array_equal(predictor.encode(records), expected)


def test_a_bad_value_in_a_long_list_names_its_record(predictor):
    records = _records(np.random.default_rng(3), 100, False)
    records[70] = {"price": "cheap"}
    with pytest.raises(DataError, match=r"record 70: field 'price'"):
        predictor.encode(records)
    records[70] = "not a dict"
    with pytest.raises(DataError, match=r"record 70: expected a dict"):
        predictor.encode(records)


def test_a_long_list_is_encoded_column_wise_not_record_by_record(predictor, monkeypatch):
    # The speed contract without timing: the per-record encoder is never called for a clean list.
    records = _records(np.random.default_rng(4), 1000, False)
    expected = predictor.encode(records)

    def per_record(record):
        raise AssertionError("encoded a record at a time")

    monkeypatch.setattr(predictor.preprocessor, "transform_record", per_record)
    np.testing.assert_array_equal(predictor.encode(records), expected)


def test_a_missing_file_is_named_without_config_keys(predictor, tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        predictor.predict(tmp_path / "day_0.csv")
    assert str(caught.value) == f"{tmp_path / 'day_0.csv'}: no such file to score"
