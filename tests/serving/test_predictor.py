"""Predictor: raw records -> probabilities through the training preprocessing, every input form.

Also the single-record fast path of the Preprocessor (`transform_record`), checked against
`transform_records` (the DataFrame path) on every encoding rule, and the synthetic store's
preprocessor against the ids the store holds.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cvr.data.errors import DataError
from cvr.data.preprocess import Preprocessor, stable_hash, stable_hash_one
from cvr.data.schema import Schema
from cvr.data.synthetic import SyntheticGenerator, SyntheticSpec
from cvr.kernels import fused_available
from cvr.serving.predictor import Predictor
from tests.helpers import TINY_DATA
from tests.serving.test_bundle import make_bundle, make_file_bundle


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    bundle, store, _, module = make_bundle(tmp_path_factory.mktemp("synthetic"))
    return Predictor.load(bundle), store, module


@pytest.fixture(scope="module")
def csv_bundle(tmp_path_factory):
    bundle, store, csv = make_file_bundle(tmp_path_factory.mktemp("csv"))
    return Predictor.load(bundle), store, csv


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key, value


def synthetic_raw(split: str, rows: int) -> tuple[list[str], np.ndarray]:
    """Field names and raw frequency ranks int (rows, F) of the tiny synthetic store's split."""
    spec = {key.removeprefix("data."): int(value) for key, value in map(_split, TINY_DATA)}
    gen = SyntheticGenerator(SyntheticSpec(**spec))
    ids = np.concatenate([chunk for chunk, _, _ in gen.chunks(split, with_labels=False)])
    return gen.spec.field_names(), ids[:rows]


# --- the preprocessor's single-record path ----------------------------------------------------

RULES_SCHEMA = Schema.from_dict(
    {
        "fields": [
            "c",
            {"name": "h", "kind": "categorical"},
            {"name": "n", "kind": "numeric"},
            {"name": "q", "kind": "numeric"},
            {"name": "nh", "kind": "numeric"},
            {"name": "c_again", "column": "c"},
        ]
    }
)
RULES_CONFIG = {
    "hash_buckets": {"h": 7, "nh": 5},
    "numeric_rule": {"q": "quantile"},
    "buckets": 4,
}


@pytest.fixture(scope="module")
def rules() -> Preprocessor:
    rng = np.random.default_rng(0)
    n = 400
    train = pa.record_batch(
        {
            "c": pa.array([str(v) for v in rng.integers(-5, 40, n)], pa.string()),
            "h": pa.array([f"h{v}" for v in rng.integers(0, 30, n)], pa.string()),
            "n": pa.array(np.floor(rng.lognormal(1, 2, n)) - 3, pa.float64()),
            "q": pa.array(rng.normal(0, 10, n).round(1), pa.float64()),
            "nh": pa.array(rng.normal(0, 100, n), pa.float64()),
        }
    )
    return Preprocessor(RULES_SCHEMA, RULES_CONFIG).fit([train])


CATEGORY = st.one_of(
    st.none(),
    st.integers(-50, 50),
    st.integers(-(2**63), 2**63 - 1),
    st.text(max_size=6),
    st.sampled_from(["", "3", "h4", "-2", "007"]),
)
NUMBER = st.one_of(
    st.none(),
    st.floats(allow_infinity=False),  # NaN included: missing
    st.floats(-1e3, 1e3),
    st.integers(-(2**53), 2**53),
    st.integers(-10, 10),
    st.sampled_from([0, 2, 2.0, 2.0000001, -2.5, math.e, 1e300, -0.0]),
)
# Values only the DataFrame path handles: they must come out the same through the fallback.
ODD = st.one_of(
    st.booleans(),
    st.sampled_from(["1.5", " 7 ", "nan", "abc", 1.0, 3.5, float("inf"), np.float32(2.5)]),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    values=st.fixed_dictionaries(
        {},
        optional={
            "c": CATEGORY,
            "h": st.one_of(CATEGORY, ODD),
            "n": NUMBER,
            "q": st.one_of(NUMBER, ODD),
            "nh": NUMBER,
            "c_again": CATEGORY,
            "unrelated": st.integers(),
        },
    )
)
def test_transform_record_equals_transform_records(rules, values):
    frame = pd.DataFrame({k: [v] for k, v in values.items()}, index=[0])
    try:
        want = rules.transform_records(frame)[0]
    except DataError as exc:
        with pytest.raises(DataError, match=str(exc).split(":")[0]):
            rules.transform_record(values)
        return
    got = rules.transform_record(values)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_stable_hash_one_equals_the_vectorized_hash(text):
    assert stable_hash_one(text) == int(stable_hash(pa.array([text], pa.string()))[0])


def test_synthetic_preprocessor_maps_raw_ranks_to_the_store_ids(synthetic):
    predictor, store, _ = synthetic
    names, raw = synthetic_raw("test", 300)
    records = [dict(zip(names, row.tolist(), strict=True)) for row in raw]
    np.testing.assert_array_equal(predictor.encode(records), store.ids("test")[:300])
    as_strings = [{k: str(v) for k, v in r.items()} for r in records]
    np.testing.assert_array_equal(predictor.encode(as_strings), store.ids("test")[:300])


# --- predictions ---------------------------------------------------------------------------------


def test_predictions_are_the_models_on_the_store_ids(synthetic):
    predictor, store, module = synthetic
    names, raw = synthetic_raw("test", 300)
    records = [dict(zip(names, row.tolist(), strict=True)) for row in raw]
    probs = predictor.predict(records)
    assert probs.dtype == np.float64 and probs.shape == (300,)
    with torch.no_grad():
        want = torch.sigmoid(module.model(torch.from_numpy(np.array(store.ids("test")[:300]))))
    np.testing.assert_allclose(probs, want.numpy(), rtol=0, atol=1e-6)
    assert probs.std() > 0.05  # random weights: the comparison is not between constants


def test_every_input_form_gives_the_same_probabilities(csv_bundle, tmp_path):
    predictor, _, csv = csv_bundle
    from_file = predictor.predict(csv)
    frame = pd.read_csv(csv, dtype={"site": str, "user": str, "ad": str}, keep_default_na=False)
    frame = frame.replace({"": None})
    records = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in frame.to_dict("records")
    ]
    assert from_file.shape == (300,)
    np.testing.assert_array_equal(predictor.predict(frame), from_file)
    np.testing.assert_array_equal(predictor.predict(records), from_file)
    np.testing.assert_array_equal(predictor.predict(records[7]), from_file[7:8])
    np.testing.assert_array_equal(predictor.predict(tuple(records[:5])), from_file[:5])
    np.testing.assert_array_equal(predictor.predict(str(csv)), from_file)


def test_unseen_missing_and_extra_fields(csv_bundle):
    predictor, _, _ = csv_bundle
    base = {"site": "s1", "user": "u3", "ad": "4", "price": 7.5, "age": 30}
    unseen = {**base, "site": "never-seen-site"}
    missing = {k: v for k, v in base.items() if k != "site"}
    assert predictor.encode(unseen)[0, 0] == 0
    np.testing.assert_array_equal(predictor.encode(unseen), predictor.encode(missing))
    np.testing.assert_array_equal(
        predictor.encode({**base, "site": None}), predictor.encode(missing)
    )
    np.testing.assert_array_equal(
        predictor.predict({**base, "label": 1, "request_id": "x"}), predictor.predict(base)
    )
    assert predictor.encode({}).tolist() == [[0, 0, 0, 0, 0]]
    assert predictor.predict({}).shape == (1,)


def test_wrong_types_raise_a_data_error_naming_the_field(csv_bundle):
    predictor, _, _ = csv_bundle
    with pytest.raises(DataError, match="field 'price': 'cheap' is not a number"):
        predictor.predict({"price": "cheap"})
    with pytest.raises(DataError, match="field 'site'"):
        predictor.predict({"site": [1, 2]})
    with pytest.raises(DataError, match=r"field 'age'.*OverflowError"):
        predictor.predict({"age": 10**30})
    with pytest.raises(DataError, match="record 2: field 'ad'"):
        predictor.predict([{"ad": "1"}, {"ad": 2}, {"ad": 2.5}])
    with pytest.raises(DataError, match="record 1: expected a dict"):
        predictor.predict([{"ad": "1"}, ["ad", "1"]])
    with pytest.raises(DataError, match="records: expected a dict"):
        predictor.predict(42)
    with pytest.raises(DataError, match=r"duplicate columns \['ad'\]"):
        predictor.predict(pd.DataFrame([[1, 2]], columns=["ad", "ad"]))


def test_empty_inputs_give_empty_results(csv_bundle):
    predictor, _, _ = csv_bundle
    assert predictor.predict([]).shape == (0,)
    assert predictor.predict(pd.DataFrame(columns=["site"])).shape == (0,)


def test_predict_ids_checks_shape_and_range(csv_bundle):
    predictor, store, _ = csv_bundle
    ids = np.array(store.ids("train")[:3])
    np.testing.assert_array_equal(predictor.predict_ids(ids), predictor.predict_ids(ids.copy()))
    bad = ids.copy()
    bad[1, 2] = store.cardinalities[2]
    with pytest.raises(ValueError, match=r"field 'ad' has id .* in row 1"):
        predictor.predict_ids(bad)
    with pytest.raises(ValueError, match="expected shape"):
        predictor.predict_ids(ids[:, :2])


def test_read_only_ids_score_without_a_warning(csv_bundle):
    predictor, store, _ = csv_bundle
    ids = np.array(store.ids("train")[:5])
    frozen = ids.copy()
    frozen.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.from_numpy's "not writable" UserWarning fails it
        got = predictor.predict_ids(frozen)
    np.testing.assert_array_equal(got, predictor.predict_ids(ids))


def test_fused_and_torch_backends_agree(csv_bundle):
    predictor, store, _ = csv_bundle
    ok, reason = fused_available()
    if not ok:
        pytest.skip(f"fused kernels unavailable: {reason}")
    torch_predictor = Predictor(predictor.bundle, backend="torch")
    fused = Predictor(predictor.bundle, backend="fused")
    ids = np.array(store.ids("train"))
    np.testing.assert_allclose(fused.predict_ids(ids), torch_predictor.predict_ids(ids), atol=1e-6)
