"""Snapshots: create/verify/restore round trips, named corruption, retention, MLflow push/pull,
and the CLI as the issue note shows it."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cvr.ops.manifest import ManifestError
from cvr.ops.snapshot import (
    create_snapshot,
    list_snapshots,
    prune_snapshots,
    pull_snapshot,
    push_snapshot,
    remote_snapshots,
    restore_snapshot,
    verify_snapshot,
)
from cvr.retrieval.index import build_index, read_index, write_index
from cvr.serving.predictor import Predictor
from cvr.tracking import mlflow_runs
from tests.helpers import REPO
from tests.serving.test_bundle import make_file_bundle


@pytest.fixture(scope="module")
def serving(tmp_path_factory):
    """(bundle dir, {index name: dir}, csv of raw records) of one tiny serving state."""
    tmp = tmp_path_factory.mktemp("serving")
    bundle, _, csv = make_file_bundle(tmp)
    vectors = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    indexes = {
        "flat": write_index(build_index(vectors, "Flat"), tmp / "flat", {"source": "test"}),
        "hnsw": write_index(build_index(vectors, "HNSW8"), tmp / "hnsw"),
    }
    return bundle, indexes, csv


def corrupt_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_create_verify_restore_reproduces_predictions_bit_exactly(serving, tmp_path):
    bundle, indexes, csv = serving
    snapshot = create_snapshot(tmp_path / "snaps", bundle, indexes, note="nightly")
    manifest = verify_snapshot(snapshot)
    assert [c["path"] for c in manifest["contents"]] == ["bundle", "indexes/flat", "indexes/hnsw"]
    bundle_record = manifest["contents"][0]
    bundle_manifest = json.loads((bundle / "manifest.json").read_text())
    assert bundle_record["store_fingerprint"] == bundle_manifest["store"]["fingerprint"]
    assert manifest["contents"][1]["provenance"] == {"source": "test"}
    assert (
        "bundle/model.pt" in manifest["files"] and "indexes/hnsw/index.faiss" in manifest["files"]
    )
    assert [p.name for p in (tmp_path / "snaps").iterdir()] == [snapshot.name]  # no temp left

    restored = restore_snapshot(snapshot, tmp_path / "live")
    verify_snapshot(restored)
    want = Predictor.load(bundle).predict(csv)
    got = Predictor.load(restored / "bundle").predict(csv)
    assert got.tobytes() == want.tobytes()
    queries = np.ones((2, 8), np.float32)
    np.testing.assert_array_equal(
        read_index(restored / "indexes" / "hnsw").search(queries, 5)[1],
        read_index(indexes["hnsw"]).search(queries, 5)[1],
    )


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("flip", r"changed file .*bundle/model\.pt: sha256"),
        ("truncate", r"truncated file .*indexes/flat/index\.faiss: \d+ bytes, expected \d+"),
        ("delete", r"missing file .*bundle/schema\.json"),
        ("extra", r"extra file .*indexes/stray\.txt"),
    ],
)
def test_verify_names_the_damaged_file(serving, tmp_path, damage, message):
    bundle, indexes, _ = serving
    snapshot = create_snapshot(tmp_path / "snaps", bundle, indexes)
    if damage == "flip":
        corrupt_one_byte(snapshot / "bundle" / "model.pt")
    elif damage == "truncate":
        target = snapshot / "indexes" / "flat" / "index.faiss"
        target.write_bytes(target.read_bytes()[:-10])
    elif damage == "delete":
        (snapshot / "bundle" / "schema.json").unlink()
    else:
        (snapshot / "indexes" / "stray.txt").write_text("?")
    with pytest.raises(ManifestError, match=message):
        verify_snapshot(snapshot)
    with pytest.raises(ManifestError, match=message):
        restore_snapshot(snapshot, tmp_path / "live")
    assert not (tmp_path / "live").exists()


def test_create_refuses_a_corrupt_source_and_leaves_nothing(serving, tmp_path):
    bundle, indexes, _ = serving
    bad_index = shutil.copytree(indexes["flat"], tmp_path / "flat")
    corrupt_one_byte(bad_index / "index.faiss")
    with pytest.raises(ManifestError, match=r"flat/index\.faiss"):
        create_snapshot(tmp_path / "snaps", bundle, {"flat": bad_index})
    assert list((tmp_path / "snaps").glob("*")) == []
    with pytest.raises(ManifestError, match="not a serving bundle"):
        create_snapshot(tmp_path / "snaps", indexes["flat"])


def test_restore_refuses_an_existing_destination(serving, tmp_path):
    snapshot = create_snapshot(tmp_path / "snaps", serving[0])
    (tmp_path / "live").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        restore_snapshot(snapshot, tmp_path / "live")


def test_prune_keeps_the_newest(serving, tmp_path):
    root = tmp_path / "snaps"
    made = [create_snapshot(root, serving[0]) for _ in range(4)]
    (root / "not-a-snapshot").mkdir()  # foreign folders are never touched
    assert [s.path for s in list_snapshots(root)] == made
    removed = prune_snapshots(root, keep=2)
    assert removed == made[:2]
    assert [s.path for s in list_snapshots(root)] == made[2:]
    assert (root / "not-a-snapshot").is_dir()
    assert prune_snapshots(root, keep=5) == []


def test_push_and_pull_through_mlflow_artifacts(serving, tmp_path):
    bundle, indexes, csv = serving
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = mlflow_runs.start_run(uri, "backup", "snapshots", artifact_root=str(tmp_path / "art"))
    first = create_snapshot(tmp_path / "snaps", bundle, {"flat": indexes["flat"]})
    second = create_snapshot(tmp_path / "snaps", bundle)
    push_snapshot(first, uri, run_id)
    push_snapshot(second, uri, run_id)
    assert remote_snapshots(uri, run_id) == [first.name, second.name]

    pulled = pull_snapshot(uri, run_id, tmp_path / "elsewhere", name=first.name)
    assert pulled == tmp_path / "elsewhere" / first.name
    assert verify_snapshot(pulled)["files"] == verify_snapshot(first)["files"]
    want = Predictor.load(bundle).predict(csv)
    assert Predictor.load(pulled / "bundle").predict(csv).tobytes() == want.tobytes()
    assert pull_snapshot(uri, run_id, tmp_path / "newest").name == second.name

    # A remote copy that went bad is refused, and nothing appears under the root.
    remote = next((tmp_path / "art").rglob(f"snapshots/{second.name}/bundle/model.pt"))
    corrupt_one_byte(remote)
    with pytest.raises(ManifestError, match=r"bundle/model\.pt"):
        pull_snapshot(uri, run_id, tmp_path / "again", name=second.name)
    assert not (tmp_path / "again" / second.name).exists()


def load_cli():
    spec = importlib.util.spec_from_file_location("snapshot_cli", REPO / "scripts" / "snapshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_demo_create_corrupt_verify_restore_predict(serving, tmp_path, capsys):
    bundle, _, csv = serving
    cli = load_cli()
    root = tmp_path / "snaps"
    assert cli.main(["create", "--bundle", str(bundle), "--root", str(root)]) == 0
    good = list_snapshots(root)[0].path
    assert cli.main(["create", "--bundle", str(bundle), "--root", str(root)]) == 0
    bad = list_snapshots(root)[-1].path
    assert cli.main(["verify", str(bad)]) == 0
    capsys.readouterr()

    corrupt_one_byte(bad / "bundle" / "model.pt")
    assert cli.main(["verify", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: changed file") and f"{bad}/bundle/model.pt" in err

    assert cli.main(["restore", str(good), str(tmp_path / "live")]) == 0
    assert cli.main(["predict", str(bundle), str(csv)]) == 0
    original = capsys.readouterr().out.splitlines()[-2:]
    assert cli.main(["predict", str(tmp_path / "live"), str(csv)]) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == original
    assert cli.main(["list", "--root", str(root)]) == 0
    assert good.name in capsys.readouterr().out
