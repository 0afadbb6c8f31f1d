"""Lite in its own process, a bundle loaded without its tables, the hottest-rows cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cvr.serving.bundle import TablesNotLoaded, load_bundle
from cvr.serving.predictor import Predictor
from cvr.vectorstore import versions
from cvr.vectorstore.cache import HotRowCache
from cvr.vectorstore.client import StoreError, close, connect
from cvr.vectorstore.lite_server import LiteServer
from cvr.vectorstore.table import feature_counts, hot_ids_by_count
from tests.vectorstore.conftest import make_random_bundle


def test_predictions_from_lite_in_its_own_process_equal_in_process(tmp_path, lite_uri):
    bundle, store = make_random_bundle(tmp_path, "ffm")
    versions.publish(lite_uri, bundle)
    close(lite_uri)  # the server process takes the directory over
    ids = np.asarray(store.ids("test"))[:300]
    local = Predictor.load(bundle).predict_ids(ids)
    counts = feature_counts(store.ids("train"), store.cardinalities)
    hot = hot_ids_by_count(counts, store.cardinalities)
    with LiteServer(lite_uri) as server:
        assert server.uri.startswith("http://127.0.0.1:") and server.running
        # While the server owns the directory, this process cannot open it as Lite.
        with pytest.raises(StoreError, match="locked by another process"):
            connect(lite_uri)
        with pytest.raises(StoreError, match="locked by another process"):
            LiteServer(lite_uri).start()
        for cache_bytes, hot_ids in ((0, None), (4096, None), (4096, hot), (1 << 30, hot)):
            remote = Predictor.load(
                bundle, embeddings=server.uri, cache_bytes=cache_bytes, hot_ids=hot_ids
            )
            np.testing.assert_allclose(remote.predict_ids(ids), local, rtol=0, atol=1e-6)
        # A batch larger than a forward chunk is looked up once (its unique ids) and scored in
        # chunks, equal to scoring it whole in process.
        chunked = Predictor.load(bundle, embeddings=server.uri)
        np.testing.assert_allclose(chunked.predict_ids(ids), local, rtol=0, atol=1e-6)
        offsets = np.concatenate([[0], np.cumsum(store.cardinalities)[:-1]])
        unique = len(np.unique(ids.astype(np.int64) + offsets))
        assert (chunked.store_tables.fetches, chunked.store_tables.fetched_rows) == (1, unique)
        # A cache big enough for the whole table holds every row: no fetch after warming.
        before = remote.store_tables.fetches
        remote.predict_ids(ids)
        assert remote.store_tables.fetches == before
        assert server.rss_mb() > 0
        process = server.process
    assert process.poll() is not None  # stopped by its process
    connect(lite_uri)  # ... and the directory is free again


def test_a_server_that_cannot_start_is_an_error_with_its_output(tmp_path):
    bad = tmp_path / "plain.db"
    bad.write_text("not a directory")
    with pytest.raises(StoreError, match=f"Milvus Lite {bad}: is a file"):
        LiteServer(bad).start()
    with pytest.raises(StoreError, match="not started"):
        LiteServer(tmp_path / "x.db").uri  # noqa: B018


def test_a_store_backed_predictor_never_holds_the_tables(tmp_path, lite_uri):
    bundle, store = make_random_bundle(tmp_path, "ffm")
    versions.publish(lite_uri, bundle)
    rows = int(sum(store.cardinalities))
    bare = load_bundle(bundle, tables=False)
    assert isinstance(bare.model.embedding, TablesNotLoaded)
    with pytest.raises(RuntimeError, match=r"table '(embedding|linear)' was not loaded"):
        bare.model(torch.zeros(1, len(store.cardinalities), dtype=torch.int64))
    full = load_bundle(bundle)
    for name, tensor in bare.model.state_dict().items():  # every other weight is loaded
        torch.testing.assert_close(tensor, full.model.state_dict()[name], rtol=0, atol=0)
    remote = Predictor.load(bundle, embeddings=lite_uri)
    tensors = [*remote.model.parameters(), *remote.model.buffers()]
    assert not any(t.ndim and t.shape[0] == rows for t in tensors)
    ids = np.asarray(store.ids("test"))[:100]
    np.testing.assert_allclose(
        remote.predict_ids(ids), Predictor.load(bundle).predict_ids(ids), rtol=0, atol=1e-6
    )


def test_hot_row_cache_holds_the_hottest_rows_that_fit_and_admits_nothing():
    rng = np.random.default_rng(0)
    n, dim = 1000, 5
    table = rng.standard_normal((n, dim)).astype(np.float32)
    weights = rng.standard_normal(n).astype(np.float32)
    cache = HotRowCache(100 * (4 * dim + 12), dim)
    assert cache.capacity_rows == 100
    hot = rng.permutation(n)[:100].astype(np.int64)
    cache.fill(hot, table[hot], weights[hot])
    assert cache.nbytes <= 100 * (4 * dim + 12)
    ids = np.unique(rng.integers(0, n, 300)).astype(np.int64)
    hit, vectors, linear = cache.lookup(ids)
    np.testing.assert_array_equal(hit, np.isin(ids, hot))
    np.testing.assert_array_equal(vectors, table[ids[hit]])
    np.testing.assert_array_equal(linear, weights[ids[hit]])
    miss = ids[~hit]
    cache.insert(miss, table[miss], weights[miss])
    assert not cache.lookup(miss)[0].any()  # misses are not admitted
    with pytest.raises(ValueError, match="do not fit"):
        cache.fill(np.arange(101), table[:101], weights[:101])
    assert not HotRowCache(0, dim).lookup(ids)[0].any()


def test_hot_ids_are_global_ids_by_descending_training_count():
    ids = np.array([[0, 1], [0, 2], [1, 2], [0, 2]])  # two fields of cardinality 2 and 3
    counts = feature_counts(ids, [2, 3], chunk_rows=3)
    np.testing.assert_array_equal(counts, [3, 1, 0, 1, 3])
    # Each field's local id 0 (where unseen values go) first, then by count, ties by id.
    np.testing.assert_array_equal(hot_ids_by_count(counts, [2, 3]), [0, 2, 4, 1, 3])
