"""Backup and disaster recovery of published collections through snapshots (Milvus Lite)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cvr.ops.manifest import ManifestError
from cvr.ops.snapshot import COLLECTION_DIR, create_snapshot, restore_snapshot, verify_snapshot
from cvr.serving.predictor import Predictor
from cvr.vectorstore import collection as col
from cvr.vectorstore import versions
from cvr.vectorstore.client import StoreError, close, connect
from cvr.vectorstore.export import (
    MANIFEST,
    ROWS,
    import_collection,
    read_export,
    restore_snapshot_collections,
)
from tests.helpers import run_script
from tests.vectorstore.conftest import make_random_bundle


def store_probabilities(bundle, uri, ids, records):
    predictor = Predictor.load(bundle, embeddings=f"milvus:{uri}", cache_bytes=1 << 16)
    return np.concatenate([predictor.predict_ids(ids), predictor.predict(records)])


@pytest.fixture(scope="module")
def drill_bundle(tmp_path_factory):
    return make_random_bundle(tmp_path_factory.mktemp("drill"), "ffm")


def test_drill_publish_snapshot_delete_restore_gives_bit_identical_predictions(
    drill_bundle, tmp_path
):
    bundle, store = drill_bundle
    uri, fresh = str(tmp_path / "live.db"), str(tmp_path / "fresh.db")
    versions.publish(uri, bundle)
    second = versions.publish(uri, bundle)  # the alias points at v0002
    ids = np.asarray(store.ids("test"))[:300]
    records = Predictor.load(bundle).example_records(40, seed=1)
    before = store_probabilities(bundle, uri, ids, records)

    snapshot = create_snapshot(tmp_path / "snaps", bundle, collections=[f"{uri}#cvr_ffm_live"])
    manifest = verify_snapshot(snapshot)
    (record,) = [c for c in manifest["contents"] if c["kind"] == "vectorstore_export"]
    assert record["collection"] == second.collection and record["alias"] == "cvr_ffm_live"
    assert f"{COLLECTION_DIR}/{second.collection}/{ROWS}" in manifest["files"]
    export = read_export(snapshot / COLLECTION_DIR / second.collection)
    assert export["meta"]["checksum"] == second.checksum
    assert export["index"]["index_type"] == "FLAT"

    close(uri)
    shutil.rmtree(uri)  # the disaster: the database is gone
    restored = restore_snapshot(snapshot, tmp_path / "restored")
    assert restore_snapshot_collections(snapshot, fresh) == [second.collection]
    client = connect(fresh)
    assert col.alias_target(client, "cvr_ffm_live") == second.collection
    after = store_probabilities(restored / "bundle", fresh, ids, records)
    assert after.tobytes() == before.tobytes()  # bit-identical

    # The restored database is complete: publishing there continues the numbering.
    assert versions.publish(fresh, bundle).collection == "cvr_ffm_live_v0003"
    with pytest.raises(StoreError, match="already exists"):
        import_collection(snapshot / COLLECTION_DIR / second.collection, fresh)


def test_verify_and_restore_catch_a_changed_byte_of_the_export(drill_bundle, tmp_path):
    bundle, _ = drill_bundle
    uri = str(tmp_path / "live.db")
    result = versions.publish(uri, bundle)
    snapshot = create_snapshot(tmp_path / "snaps", bundle, collections=[f"{uri}#{result.alias}"])
    rows = snapshot / COLLECTION_DIR / result.collection / ROWS
    data = bytearray(rows.read_bytes())
    data[len(data) // 2] ^= 1
    rows.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=f"changed file {rows}"):
        verify_snapshot(snapshot)
    with pytest.raises(ManifestError, match=f"changed file {rows}"):
        restore_snapshot_collections(snapshot, str(tmp_path / "fresh.db"))
    with pytest.raises(ManifestError, match=f"changed file {rows}"):
        import_collection(rows.parent, str(tmp_path / "fresh.db"))
    assert not connect(str(tmp_path / "fresh.db")).list_collections()  # nothing half-written


def test_an_export_is_refused_from_a_damaged_collection_and_needs_a_name(drill_bundle, tmp_path):
    bundle, _ = drill_bundle
    uri = str(tmp_path / "live.db")
    result = versions.publish(uri, bundle)
    client = connect(uri)
    client.delete(result.collection, ids=[0])
    with pytest.raises(StoreError, match="refusing to export a damaged collection"):
        create_snapshot(tmp_path / "snaps", bundle, collections=[f"{uri}#{result.alias}"])
    assert not (tmp_path / "snaps").exists() or not any((tmp_path / "snaps").iterdir())
    with pytest.raises(StoreError, match="name the collection or alias"):
        create_snapshot(tmp_path / "snaps", bundle, collections=[uri])


@pytest.mark.slow
def test_snapshot_script_drill(drill_bundle, tmp_path):
    """The drill through the command line, each step its own process (as an operator runs it)."""
    bundle, _ = drill_bundle
    uri, fresh = str(tmp_path / "live.db"), str(tmp_path / "fresh.db")
    versions.publish(uri, bundle)
    close(uri)

    def run(*args):
        done = run_script(["scripts/snapshot.py", *args], timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    created = run("create", "--bundle", str(bundle), "--root", str(tmp_path / "snaps"),
                  "--collection", f"{uri}#cvr_ffm_live")  # fmt: skip
    snapshot = created.split()[1]
    shutil.rmtree(uri)
    restored = run("restore", snapshot, str(tmp_path / "restored"), "--uri", fresh)
    assert "restored collection cvr_ffm_live_v0001 into" in restored
    contents = json.loads((tmp_path / "restored" / "snapshot.json").read_text())["contents"]
    assert any(c.get("collection") == "cvr_ffm_live_v0001" for c in contents)
    assert (tmp_path / "restored" / COLLECTION_DIR / "cvr_ffm_live_v0001" / MANIFEST).is_file()
    predictor = Predictor.load(tmp_path / "restored" / "bundle", embeddings=fresh)
    local = Predictor.load(bundle)
    records = local.example_records(20)
    np.testing.assert_allclose(predictor.predict(records), local.predict(records), atol=1e-6)
