"""Predictor with tables read from the store equals the in-process Predictor; refusals; cache."""

from __future__ import annotations

import numpy as np
import pytest

from cvr.serving.predictor import Predictor
from cvr.vectorstore import versions
from cvr.vectorstore.cache import RowCache
from cvr.vectorstore.client import StoreError, connect
from tests.vectorstore.conftest import make_random_bundle

SAMPLES = ["criteo", "criteo_csv", "avazu", "libffm", "aliexpress", "aliccp", "movielens"]


def assert_same_predictions(bundle, store, uri, cache_bytes=0, name=None):
    """Store-backed and in-process predictions of the store's test ids agree to 1e-6."""
    ids = np.asarray(store.ids("test"))[:500]
    local = Predictor.load(bundle)
    embeddings = f"milvus:{uri}" + (f"#{name}" if name else "")
    remote = Predictor.load(bundle, embeddings=embeddings, cache_bytes=cache_bytes)
    assert remote.store_tables is not None and remote.backend == "torch"
    expected = local.predict_ids(ids)
    np.testing.assert_allclose(remote.predict_ids(ids), expected, rtol=0, atol=1e-6)
    return local, remote, ids


@pytest.mark.parametrize("model", ["ffm", "fm", "fwfm"])
def test_store_predictions_equal_in_process_on_synthetic_data(tmp_path, lite_uri, model):
    bundle, store = make_random_bundle(tmp_path, model)
    versions.publish(lite_uri, bundle)
    local, remote, ids = assert_same_predictions(bundle, store, lite_uri)
    # One batched fetch per request batch, of its unique feature ids.
    before = remote.store_tables.fetches
    remote.predict_ids(ids[:64])
    assert remote.store_tables.fetches == before + 1
    # Raw records through the same preprocessing give the same probabilities.
    records = local.example_records(50, seed=3)
    np.testing.assert_allclose(remote.predict(records), local.predict(records), atol=1e-6)
    np.testing.assert_allclose(remote.predict(records[0]), local.predict(records[0]), atol=1e-6)


def test_a_hashed_table_is_published_as_the_rows_the_model_computes(tmp_path, lite_uri):
    bundle, store = make_random_bundle(tmp_path, "ffm", ["embedding=hashed"])
    versions.publish(lite_uri, bundle)
    assert_same_predictions(bundle, store, lite_uri)


def test_the_cache_serves_hits_with_the_same_predictions(tmp_path, lite_uri):
    bundle, store = make_random_bundle(tmp_path, "ffm")
    versions.publish(lite_uri, bundle)
    _, remote, ids = assert_same_predictions(bundle, store, lite_uri, cache_bytes=1 << 20)
    tables = remote.store_tables
    first = remote.predict_ids(ids)
    fetched = tables.fetched_rows
    np.testing.assert_array_equal(remote.predict_ids(ids), first)  # all from the cache now
    assert tables.fetched_rows == fetched and tables.cache.hit_rate > 0.4


@pytest.mark.parametrize("data", SAMPLES)
def test_store_predictions_equal_in_process_on_every_sample(tmp_path, shared_data, data):
    bundle, store = make_random_bundle(tmp_path, "ffm", [f"data={data}"], tiny=False)
    uri = str(tmp_path / "vectors.db")
    versions.publish(uri, bundle)
    assert_same_predictions(bundle, store, uri, cache_bytes=64 << 10)


def test_a_missing_row_is_an_error_naming_the_collection_and_id(tmp_path, lite_uri):
    bundle, store = make_random_bundle(tmp_path, "ffm")
    result = versions.publish(lite_uri, bundle)
    ids = np.asarray(store.ids("test"))[:20]
    offsets = np.concatenate([[0], np.cumsum(store.cardinalities)[:-1]])
    gone = int(ids[3, 2] + offsets[2])
    connect(lite_uri).delete(result.collection, ids=[gone])
    remote = Predictor.load(bundle, embeddings=f"milvus:{lite_uri}")
    with pytest.raises(
        StoreError,
        match=rf"collection '{result.collection}': no row for feature id {gone} \(field 2",
    ):
        remote.predict_ids(ids)


def test_a_collection_of_another_kind_dimension_or_bundle_is_refused(tmp_path, lite_uri):
    ffm, _ = make_random_bundle(tmp_path / "ffm", "ffm")
    fm, _ = make_random_bundle(tmp_path / "fm", "fm")
    ffm8, _ = make_random_bundle(tmp_path / "ffm8", "ffm", ["embedding.dim=8"])
    versions.publish(lite_uri, ffm)
    versions.publish(lite_uri, fm)
    uri = f"milvus:{lite_uri}"
    with pytest.raises(StoreError, match=r"'cvr_ffm_live_v0001'.*: model 'ffm' does not match"):
        Predictor.load(fm, embeddings=f"{uri}#cvr_ffm_live")
    with pytest.raises(StoreError, match=r"cvr_ffm_live_v0001.*: dim 4 does not match .* 8"):
        Predictor.load(ffm8, embeddings=uri)
    other, _ = make_random_bundle(tmp_path / "other", "ffm", weight_seed=1)
    with pytest.raises(StoreError, match=r"bundle '.*' does not match"):
        Predictor.load(other, embeddings=uri)
    with pytest.raises(StoreError, match="'nothing': neither a collection nor an alias"):
        Predictor.load(ffm, embeddings=f"{uri}#nothing")


def test_row_cache_returns_stored_rows_within_its_byte_budget():
    rng = np.random.default_rng(0)
    n, dim = 5000, 6
    table = rng.standard_normal((n, dim)).astype(np.float32)
    weights = rng.standard_normal(n).astype(np.float32)
    rates = {}
    for share in (0.01, 0.2):
        budget = int(share * n * (dim + 1) * 4)
        cache = RowCache(budget, dim)
        assert cache.nbytes <= budget
        for _ in range(200):
            ids = np.unique(np.minimum(rng.zipf(1.3, 40) - 1, n - 1)).astype(np.int64)
            hit, vectors, linear = cache.lookup(ids)
            np.testing.assert_array_equal(vectors, table[ids[hit]])
            np.testing.assert_array_equal(linear, weights[ids[hit]])
            miss = ids[~hit]
            cache.insert(miss, table[miss], weights[miss])
        rates[share] = cache.hit_rate
    assert 0 < rates[0.01] < rates[0.2]
    hot = np.arange(8, dtype=np.int64)
    cache = RowCache(1 << 16, dim)
    cache.insert(hot, table[hot], weights[hot])
    assert cache.lookup(hot)[0].all()  # rows that fit are all found again
    assert RowCache(0, dim).lookup(hot)[0].sum() == 0
