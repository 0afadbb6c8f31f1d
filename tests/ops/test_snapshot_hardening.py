"""Snapshots and bundles under faults: leftover temporaries reclaimed, symlinks refused by every
reader, manifests with a bad `files` entry named."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from cvr.ops import snapshot as snapshot_module
from cvr.ops.manifest import ManifestError
from cvr.ops.snapshot import (
    create_snapshot,
    incomplete_snapshots,
    list_snapshots,
    prune_snapshots,
    restore_snapshot,
    verify_snapshot,
)
from cvr.ops.temporaries import remove_abandoned
from cvr.serving.bundle import load_bundle
from tests.serving.test_bundle import make_file_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    folder, _, _ = make_file_bundle(tmp_path_factory.mktemp("hardening"))
    return folder


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_list_shows_and_prune_reclaims_temporaries_whose_writer_is_gone(bundle, tmp_path):
    root = tmp_path / "snaps"
    create_snapshot(root, bundle)
    abandoned = root / f".20260101T000000.000000Z-deadbeef.tmp-{_dead_pid()}-0123abcd"
    live = root / f".20260101T000000.000001Z-cafecafe.tmp-{os.getpid()}-4567abcd"
    for folder in (abandoned, live):
        (folder / "bundle").mkdir(parents=True)
    states = {t.path.name: t.state for t in incomplete_snapshots(root)}
    assert states[abandoned.name].startswith("abandoned")
    assert states[live.name].startswith("being written")
    removed = prune_snapshots(root, keep=5)
    assert removed == [abandoned] and not abandoned.exists() and live.exists()
    assert len(list_snapshots(root)) == 1


def test_gc_reclaims_abandoned_bundle_and_checkpoint_temporaries(tmp_path):
    run = tmp_path / "runs" / "r1"
    (run / "checkpoints").mkdir(parents=True)
    dead = _dead_pid()
    (run / f".bundle.tmp-{dead}-89abcdef").mkdir()
    (run / "checkpoints" / f"last.ckpt.tmp-{dead}-01234567").write_bytes(b"half")
    (run / "checkpoints" / f"last.ckpt.tmp-{os.getpid()}-76543210").write_bytes(b"mine")
    (run / "checkpoints" / "last.ckpt").write_bytes(b"kept")
    removed = remove_abandoned(tmp_path, recursive=True)
    assert sorted(p.name for p in removed) == [
        f".bundle.tmp-{dead}-89abcdef",
        f"last.ckpt.tmp-{dead}-01234567",
    ]
    left = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert left == ["last.ckpt", f"last.ckpt.tmp-{os.getpid()}-76543210"]


def test_a_create_racing_a_prune_still_finishes(bundle, tmp_path, monkeypatch):
    root = tmp_path / "snaps"
    real_copytree = shutil.copytree
    pruned = []

    def copy_then_prune(src, dst, *args, **kwargs):
        out = real_copytree(src, dst, *args, **kwargs)
        pruned.extend(prune_snapshots(root, keep=0))  # runs while the snapshot is a temporary
        return out

    monkeypatch.setattr(snapshot_module.shutil, "copytree", copy_then_prune)
    snapshot = create_snapshot(root, bundle)
    assert pruned == [] and verify_snapshot(snapshot)


@pytest.mark.parametrize("kind", ["directory", "outside_file"])
def test_verify_and_restore_both_refuse_symlinks(bundle, tmp_path, kind):
    snapshot = create_snapshot(tmp_path / "snaps", bundle)
    if kind == "directory":
        shutil.move(snapshot / "bundle", tmp_path / "moved")
        os.symlink(tmp_path / "moved", snapshot / "bundle")
    else:
        target = snapshot / "bundle" / "metrics.json"
        outside = tmp_path / "outside.json"
        shutil.copyfile(target, outside)
        target.unlink()
        os.symlink(outside, target)  # same bytes: only the link itself is wrong
    with pytest.raises(ManifestError, match="symlinks are refused"):
        verify_snapshot(snapshot)
    with pytest.raises(ManifestError, match="symlinks are refused"):
        restore_snapshot(snapshot, tmp_path / "restored")
    assert not (tmp_path / "restored").exists()


@pytest.mark.parametrize(
    ("files", "got"), [(None, "none"), ([], "list"), ({"model.pt": 3}, "dict")]
)
def test_a_manifest_without_a_proper_files_mapping_is_named(bundle, tmp_path, files, got):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    if files is None:
        del manifest["files"]
    else:
        manifest["files"] = files
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=rf"manifest\.json: 'files' must be a mapping.*{got}"):
        load_bundle(copy)
