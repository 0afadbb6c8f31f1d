"""The same publish -> predict -> snapshot -> restore against a real Milvus server (standalone).

The server is the `milvus` package ("embedded Milvus", the test-only `server` extra): Go + C++
binaries started as a child process with its data under a temporary folder, on free ports,
reached at http://127.0.0.1:PORT, and stopped by terminating that process.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest

from cvr.ops.snapshot import create_snapshot, verify_snapshot
from cvr.serving.predictor import Predictor
from cvr.vectorstore import collection as col
from cvr.vectorstore import versions
from cvr.vectorstore.client import close, connect
from cvr.vectorstore.export import restore_snapshot_collections
from tests.vectorstore.conftest import make_random_bundle

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server_uri(tmp_path_factory):
    milvus = pytest.importorskip("milvus", reason="the Milvus server package (`server` extra)")
    server = milvus.default_server
    server.set_base_dir(str(tmp_path_factory.mktemp("milvus-server")))
    server.listen_port = free_port()
    server.start()  # waits until the server answers
    process = server.server_proc
    uri = f"http://127.0.0.1:{server.listen_port}"
    try:
        yield uri
    finally:
        close(uri)
        server.stop()  # terminate (then kill) its process
        assert process.poll() is not None, "the Milvus server process is still running"


def test_publish_predict_snapshot_restore_on_a_milvus_server(server_uri, tmp_path):
    bundle, store = make_random_bundle(tmp_path, "ffm")
    first = versions.publish(server_uri, bundle)
    second = versions.publish(server_uri, bundle)
    assert [v.collection for v in versions.list_versions(server_uri)] == [
        first.collection,
        second.collection,
    ]
    ids = np.asarray(store.ids("test"))[:300]
    local = Predictor.load(bundle).predict_ids(ids)
    remote = Predictor.load(bundle, embeddings=server_uri, cache_bytes=1 << 16)
    before = remote.predict_ids(ids)
    np.testing.assert_allclose(before, local, rtol=0, atol=1e-6)
    assert versions.rollback(server_uri, "cvr_ffm_live") == (second.collection, first.collection)
    versions.rollback(server_uri, "cvr_ffm_live", to=second.collection)

    snapshot = create_snapshot(
        tmp_path / "snaps", bundle, collections=[f"{server_uri}#cvr_ffm_live"]
    )
    verify_snapshot(snapshot)
    client = connect(server_uri)
    client.drop_alias("cvr_ffm_live")  # the disaster: the collections are gone
    for name in client.list_collections():
        client.drop_collection(name)
    assert restore_snapshot_collections(snapshot, server_uri) == [second.collection]
    assert col.alias_target(client, "cvr_ffm_live") == second.collection
    after = Predictor.load(bundle, embeddings=server_uri).predict_ids(ids)
    assert after.tobytes() == before.tobytes()

    lite = str(tmp_path / "from-server.db")  # a server's collection restores into Lite too
    try:
        restore_snapshot_collections(snapshot, lite)
        lite_probs = Predictor.load(bundle, embeddings=lite).predict_ids(ids)
        assert lite_probs.tobytes() == before.tobytes()
    finally:
        close(lite)


def test_index_parameters_are_built_as_asked_on_the_server(server_uri):
    from cvr.vectorstore import search

    rng = np.random.default_rng(0)
    items = rng.standard_normal((600, 8)).astype(np.float32)
    client = connect(server_uri)
    search.publish_items(client, "items_bench", items, np.arange(600) % 3)
    built = search.build_index(client, "items_bench", "IVF_FLAT", {"nlist": 16})
    assert built["index_type"] == "IVF_FLAT" and str(built.get("nlist", built.get("params"))) in (
        "16",
        "{'nlist': 16}",
    ), built
    found = search.search_ids(client, "items_bench", items[:2], 5, {"nprobe": 16}, "group == 1")
    assert ((np.arange(600) % 3)[found] == 1).all()
    client.drop_collection("items_bench")
