"""Publishing to Milvus Lite: versions, alias moves, rollback, prune, verification, refusals."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from cvr.serving.bundle import load_bundle
from cvr.vectorstore import collection as col
from cvr.vectorstore import versions
from cvr.vectorstore.client import StoreError, connect, split_store_uri
from cvr.vectorstore.rows import rows_checksum, table_rows
from tests.vectorstore.conftest import make_random_bundle


def test_publish_writes_every_row_of_the_bundle_and_moves_the_alias(ffm_bundle, lite_uri):
    result = versions.publish(lite_uri, ffm_bundle)
    assert (result.collection, result.alias, result.previous) == (
        "cvr_ffm_live_v0001",
        "cvr_ffm_live",
        None,
    )
    bundle = load_bundle(ffm_bundle)
    model = bundle.model
    client = connect(lite_uri)
    n = sum(model.cardinalities)
    data = col.read_columns(client, "cvr_ffm_live", n)  # through the alias
    assert result.rows == n and np.array_equal(data["id"], np.arange(n))
    # The FFM row is the F*k floats of the stacked table, bit for bit; weights likewise.
    np.testing.assert_array_equal(data["vector"], model.embedding.weight.detach().numpy())
    np.testing.assert_array_equal(data["linear"], model.linear.weight.detach().numpy()[:, 0])
    offsets = np.concatenate([[0], np.cumsum(model.cardinalities)[:-1]])
    assert np.array_equal(offsets[data["field"]] + data["local_id"], data["id"])
    enc = bundle.preprocessor.encoders[0]
    assert data["raw"][0] == "" and data["raw"][1] == str(enc.vocab[0])
    assert data["bundle"] == [table_rows(bundle).bundle]


def test_versions_rollback_and_prune(ffm_bundle, lite_uri):
    first = versions.publish(lite_uri, ffm_bundle)
    second = versions.publish(lite_uri, ffm_bundle)
    third = versions.publish(lite_uri, ffm_bundle)
    assert third.previous == second.collection
    listed = versions.list_versions(lite_uri)
    assert [v.collection for v in listed] == [
        first.collection,
        second.collection,
        third.collection,
    ]
    assert [v.live for v in listed] == [False, False, True]
    assert all(v.meta["rows"] == first.rows for v in listed)

    assert versions.rollback(lite_uri, "cvr_ffm_live") == (third.collection, second.collection)
    assert col.alias_target(connect(lite_uri), "cvr_ffm_live") == second.collection
    # keep=1 keeps the newest (v3) and never drops the live one (v2).
    assert versions.prune(lite_uri, "cvr_ffm_live", keep=1) == [first.collection]
    assert [v.collection for v in versions.list_versions(lite_uri)] == [
        second.collection,
        third.collection,
    ]
    versions.rollback(lite_uri, "cvr_ffm_live", to=third.collection)
    assert versions.prune(lite_uri, "cvr_ffm_live", keep=0) == [second.collection]
    with pytest.raises(StoreError, match="no version older"):
        versions.rollback(lite_uri, "cvr_ffm_live")
    with pytest.raises(StoreError, match="not one of its versions"):
        versions.rollback(lite_uri, "cvr_ffm_live", to="cvr_ffm_live_v0042")
    # Numbers are never reused after a prune.
    assert versions.publish(lite_uri, ffm_bundle).collection == "cvr_ffm_live_v0004"


def test_a_publish_that_fails_midway_leaves_the_alias_and_no_partial_collection(
    ffm_bundle, lite_uri, monkeypatch
):
    good = versions.publish(lite_uri, ffm_bundle)
    client = connect(lite_uri)
    real_insert = client.insert
    calls = []

    def insert_then_fail(name, rows):
        calls.append(len(rows))
        if len(calls) == 2:
            raise RuntimeError("disk full (injected)")
        return real_insert(name, rows)

    monkeypatch.setattr(client, "insert", insert_then_fail)
    with pytest.raises(RuntimeError, match="injected"):
        versions.publish(lite_uri, ffm_bundle, batch_rows=300)
    assert len(calls) == 2  # it failed after one batch was written
    assert col.alias_target(client, "cvr_ffm_live") == good.collection
    assert client.list_collections() == [good.collection]


def test_verification_catches_a_changed_row(ffm_bundle, lite_uri):
    result = versions.publish(lite_uri, ffm_bundle)
    client = connect(lite_uri)
    row = client.get(result.collection, ids=[5])[0]
    row["linear"] = row["linear"] + 1.0
    client.upsert(result.collection, [row])
    with pytest.raises(StoreError, match="checksum"):
        versions.verify_collection(client, result.collection)
    row["linear"] -= 1.0
    client.upsert(result.collection, [row])
    versions.verify_collection(client, result.collection)  # restored: passes again
    client.insert(result.collection, [{**row, "id": result.rows}])  # one row too many
    client.flush(result.collection)
    with pytest.raises(StoreError, match=f"{result.rows + 1} rows in the collection"):
        versions.verify_collection(client, result.collection)


def test_checksum_depends_on_every_column_not_on_row_order():
    rng = np.random.default_rng(0)
    ids = np.arange(5)
    cols = [ids, rng.random((5, 3)), rng.random(5), ids % 2, ids, ["a", "b", "", "d", "e"]]
    base = rows_checksum(*cols)
    order = rng.permutation(5)
    shuffled = [c[order] if isinstance(c, np.ndarray) else [c[i] for i in order] for c in cols]
    assert rows_checksum(*shuffled) == base
    for k in range(6):
        changed = list(cols)
        if k == 5:
            changed[k] = ["a", "b", "c", "d", "e"]
        else:
            changed[k] = np.array(cols[k], dtype=np.float64, copy=True)
            changed[k].flat[1] += 1
        assert rows_checksum(*changed) != base, k


def test_wrong_uris_and_a_locked_lite_directory_are_refused_by_name(tmp_path, lite_uri):
    with pytest.raises(StoreError, match="unknown scheme"):
        connect("ftp://example.org/vectors")
    not_a_dir = tmp_path / "file.db"
    not_a_dir.write_text("x")
    with pytest.raises(StoreError, match=f"{not_a_dir}: is a file"):
        connect(str(not_a_dir))
    with pytest.raises(StoreError, match=r"must end in \.db"):
        connect(str(tmp_path / "vectors"))
    with pytest.raises(StoreError, match="cannot connect"):
        connect("http://127.0.0.1:1")
    assert split_store_uri("milvus:a/b.db#live") == ("a/b.db", "live")
    assert split_store_uri("http://h:19530") == ("http://h:19530", None)

    connect(lite_uri)  # this process holds the Lite directory ...
    code = (
        "import sys\nfrom cvr.vectorstore.client import connect, StoreError\n"
        f"try:\n    connect({lite_uri!r})\nexcept StoreError as e:\n    print(e); sys.exit(3)\n"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert other.returncode == 3, other.stderr[-2000:]  # ... so another one is refused clearly
    assert f"Milvus Lite {lite_uri}: locked by another process" in other.stdout


def test_lr_models_are_refused(tmp_path, lite_uri):
    bundle = make_random_bundle(tmp_path, "lr")[0]
    with pytest.raises(ValueError, match="cannot publish a LR model"):
        versions.publish(lite_uri, bundle)


def test_embeddings_script_publishes_and_lists(ffm_bundle, tmp_path):
    from cvr.vectorstore.client import close
    from tests.helpers import run_script

    uri = str(tmp_path / "cli.db")
    versions.publish(uri, ffm_bundle)
    close(uri)  # release the Lite directory for the script's process

    def run(*args):
        return run_script(["scripts/embeddings.py", *args], timeout=300)

    done = run("publish", str(ffm_bundle.parent), "--uri", uri)  # a run folder with bundle/
    assert done.returncode == 0, done.stderr[-2000:]
    assert "alias cvr_ffm_live -> cvr_ffm_live_v0002 (was cvr_ffm_live_v0001)" in done.stdout
    listed = run("list", "--uri", uri)
    assert listed.stdout.count("cvr_ffm_live_v000") == 2 and "*" in listed.stdout
    bad = run("list", "--uri", "ftp://nowhere")
    assert bad.returncode == 1 and "error: store URI 'ftp://nowhere': unknown scheme" in bad.stderr
