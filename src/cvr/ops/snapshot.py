"""Snapshots: the serving state (a bundle and its faiss indexes) as one verified, restorable unit.

    <root>/<YYYYmmddTHHMMSS.ffffffZ>-<shortid>/
      snapshot.json          what it holds, created time, source fingerprints, sha256 and size
                             of every other file
      bundle/                a serving bundle (cvr.serving.bundle), with its own manifest
      indexes/<name>/        faiss index folders (cvr.retrieval.index), with their manifests

A snapshot is copied into a temporary sibling and renamed into place, and every copied file is
checked against its source's own manifest first, so a snapshot never holds a half-written or
already-corrupt artifact. `verify` names every changed, truncated, missing or extra file.
`restore` verifies, copies to a new place and verifies the copy. `push`/`pull` move a snapshot
to and from the MLflow artifacts of a run (a remote artifact store is the off-machine backup);
`pull` verifies before the snapshot appears under its name.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvr.ops.manifest import (
    ManifestError,
    atomic_directory,
    file_checksums,
    read_manifest_file,
    sha256_file,
    verify_checksums,
    write_json_atomic,
)
from cvr.ops.temporaries import Temporary, remove_abandoned, temporaries

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
KIND = "snapshot"
MANIFEST = "snapshot.json"
BUNDLE_DIR = "bundle"
INDEX_DIR = "indexes"
COLLECTION_DIR = "collections"  # logical exports of vector-store collections (vectorstore.export)
REMOTE_DIR = "snapshots"  # artifact folder of a run that holds pushed snapshots


@dataclass(frozen=True)
class SnapshotInfo:
    """One snapshot under a root, as `list_snapshots` reports it."""

    path: Path
    created_unix: float
    contents: list[dict[str, Any]]
    files: int
    bytes: int

    @property
    def name(self) -> str:
        return self.path.name


# --- create --------------------------------------------------------------------------------------


def create_snapshot(
    root: str | Path,
    bundle: str | Path,
    indexes: Mapping[str, str | Path] | Sequence[str | Path] = (),
    note: str = "",
    collections: Sequence[str] = (),
) -> Path:
    """Copy a bundle and index folders into a new snapshot under `root`; returns its path.

    `collections`: published vector-store collections as `URI#alias_or_collection`, exported
    (verified rows to Parquet, schema, alias) into `collections/<collection>/`.

    `indexes`: {name: folder} or folders (named by their folder name). Each source is verified
    against its own manifest before it is copied (ManifestError otherwise), and each copy
    against the same checksums, so a snapshot is only ever made of intact artifacts.
    """
    root = Path(root)
    index_dirs = _named_indexes(indexes)
    sources: list[tuple[str, Path, dict[str, Any], dict[str, str]]] = []
    bundle_manifest, bundle_files = _bundle_source(Path(bundle))
    sources.append((BUNDLE_DIR, Path(bundle), bundle_manifest, bundle_files))
    for name, folder in index_dirs.items():
        manifest, files = _index_source(folder)
        sources.append((f"{INDEX_DIR}/{name}", folder, manifest, files))

    created = time.time()
    # Microseconds in the name: names sort by creation time, also remotely where only names are.
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(created)) + f".{int(created % 1 * 1e6):06d}Z"
    final = root / f"{stamp}-{uuid.uuid4().hex[:8]}"
    with atomic_directory(final) as tmp:
        contents = []
        for rel, src, manifest, expected in sources:
            dest = tmp / rel
            shutil.copytree(src, dest)
            # The copy must be what the source's manifest promises (catches a source changing
            # between its check and the copy, and a bad copy).
            verify_checksums(dest, expected)
            contents.append(_content_record(rel, src, manifest))
        if collections:
            from cvr.vectorstore.export import export_collection

            for ref in collections:
                record = export_collection(ref, tmp / COLLECTION_DIR)
                contents.append({**record, "path": f"{COLLECTION_DIR}/{record['path']}"})
        files = file_checksums(tmp)
        write_json_atomic(
            tmp / MANIFEST,
            {
                "format_version": FORMAT_VERSION,
                "kind": KIND,
                "name": final.name,
                "created_unix": created,
                "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
                "note": note,
                "contents": contents,
                "files": files,
                "sizes": {rel: (tmp / rel).stat().st_size for rel in files},
            },
        )
    log.info("created snapshot %s", final)
    return final


def _named_indexes(
    indexes: Mapping[str, str | Path] | Sequence[str | Path],
) -> dict[str, Path]:
    named = (
        {str(k): Path(v) for k, v in indexes.items()}
        if isinstance(indexes, Mapping)
        else {Path(p).name: Path(p) for p in indexes}
    )
    for name in named:
        if not name or name.startswith(".") or "/" in name or os.sep in name:
            raise ValueError(f"index name {name!r}: expected a plain folder name")
    if len(named) != len(indexes):
        raise ValueError(f"index names must be unique, got {list(indexes)}")
    return named


def _bundle_source(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    from cvr.serving.bundle import MANIFEST as BUNDLE_MANIFEST
    from cvr.serving.bundle import verify_bundle

    manifest = verify_bundle(path)
    files = dict(manifest["files"])
    files[BUNDLE_MANIFEST] = sha256_file(path / BUNDLE_MANIFEST)
    return manifest, files


def _index_source(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """An index folder's manifest and the checksums its files must have (manifest included)."""
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise ManifestError(f"{manifest_path}: missing; {path} is not a saved index folder")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("kind") != "faiss_index":
        raise ManifestError(f"{manifest_path}: not a faiss index manifest")
    files = dict(manifest.get("files", {}))
    verify_checksums(path, files, exclude=("manifest.json",))
    files["manifest.json"] = sha256_file(manifest_path)
    return manifest, files


def _content_record(rel: str, src: Path, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """What a snapshot records about one artifact: kind, source and the fingerprints it has."""
    record: dict[str, Any] = {
        "path": rel,
        "kind": manifest.get("kind"),
        "source": str(src.resolve()),
        "manifest_sha256": sha256_file(src / "manifest.json"),
    }
    if manifest.get("kind") == "serving_bundle":
        record["store_fingerprint"] = (manifest.get("store") or {}).get("fingerprint")
        checkpoint = manifest.get("source_checkpoint") or {}
        record["checkpoint_sha256"] = checkpoint.get("sha256")
        record["model_class"] = manifest.get("model_class")
    else:
        record["factory"] = manifest.get("factory")
        record["provenance"] = manifest.get("provenance", {})
    return record


# --- verify, restore, list, prune ----------------------------------------------------------------


def read_snapshot_manifest(path: str | Path) -> dict[str, Any]:
    """snapshot.json of a snapshot folder; ManifestError if missing, unreadable or not one."""
    return read_manifest_file(Path(path) / MANIFEST, KIND, FORMAT_VERSION, "snapshot")


def verify_snapshot(path: str | Path) -> dict[str, Any]:
    """Check every file of a snapshot; returns its manifest.

    Raises ManifestError naming each changed, truncated (size differs), missing or extra file.
    """
    manifest = read_snapshot_manifest(path)
    verify_checksums(path, manifest["files"], exclude=(MANIFEST,), sizes=manifest.get("sizes"))
    return manifest


def restore_snapshot(snapshot: str | Path, dest: str | Path) -> Path:
    """Verify `snapshot`, copy it to `dest` (which must not exist), verify the copy.

    The copy is a snapshot folder itself (snapshot.json, bundle/, indexes/); load its bundle
    with `Predictor.load(dest / "bundle")`. Returns `dest`.
    """
    snapshot, dest = Path(snapshot), Path(dest)
    verify_snapshot(snapshot)
    if dest.exists():
        raise FileExistsError(f"{dest}: already exists; restore into a new folder")
    with atomic_directory(dest) as tmp:
        shutil.copytree(snapshot, tmp, dirs_exist_ok=True)
        verify_snapshot(tmp)
    log.info("restored snapshot %s to %s", snapshot, dest)
    return dest


def list_snapshots(root: str | Path) -> list[SnapshotInfo]:
    """Snapshots under `root`, oldest first (temporary and foreign folders are skipped)."""
    root = Path(root)
    found = []
    if not root.is_dir():
        return found
    for path in root.iterdir():
        if not path.is_dir() or path.name.startswith("."):
            continue
        try:
            manifest = read_snapshot_manifest(path)
        except ManifestError as exc:
            log.warning("skipping %s: %s", path, exc)
            continue
        found.append(
            SnapshotInfo(
                path=path,
                created_unix=float(manifest["created_unix"]),
                contents=list(manifest.get("contents", [])),
                files=len(manifest["files"]),
                bytes=int(sum(manifest.get("sizes", {}).values())),
            )
        )
    return sorted(found, key=lambda s: (s.created_unix, s.name))


def incomplete_snapshots(root: str | Path) -> list[Temporary]:
    """Temporary folders under `root`: snapshots being written, abandoned, or half-deleted."""
    return temporaries(root)


def prune_snapshots(root: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` snapshots under `root`, and the temporaries whose
    writer is gone; returns the deleted paths. A snapshot being written is never touched."""
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    removed = remove_abandoned(root)
    snapshots = list_snapshots(root)
    doomed = snapshots[: max(len(snapshots) - keep, 0)]
    for info in doomed:
        # Rename first so that a crash mid-delete leaves a hidden folder, not a broken snapshot.
        trash = info.path.with_name(f".{info.name}.deleting-{uuid.uuid4().hex[:8]}")
        try:
            os.replace(info.path, trash)
        except FileNotFoundError:  # another prune took it
            continue
        shutil.rmtree(trash, ignore_errors=True)
        log.info("pruned snapshot %s", info.path)
        removed.append(info.path)
    return removed


# --- off-machine copies through MLflow artifacts -------------------------------------------------


def push_snapshot(snapshot: str | Path, tracking_uri: str, run_id: str) -> str:
    """Verify a snapshot and upload it to the run's artifacts under `snapshots/<name>/`.

    Returns the artifact path.
    """
    from mlflow.tracking import MlflowClient

    snapshot = Path(snapshot)
    verify_snapshot(snapshot)
    artifact_path = f"{REMOTE_DIR}/{snapshot.name}"
    MlflowClient(tracking_uri).log_artifacts(run_id, str(snapshot), artifact_path)
    log.info("pushed snapshot %s to run %s (%s)", snapshot, run_id, artifact_path)
    return artifact_path


def remote_snapshots(tracking_uri: str, run_id: str) -> list[str]:
    """Names of the snapshots pushed to a run, oldest first (names start with their time)."""
    from mlflow.tracking import MlflowClient

    entries = MlflowClient(tracking_uri).list_artifacts(run_id, REMOTE_DIR)
    return sorted(Path(e.path).name for e in entries if e.is_dir)


def pull_snapshot(
    tracking_uri: str, run_id: str, root: str | Path, name: str | None = None
) -> Path:
    """Download a pushed snapshot (default: the newest) into `root/<name>`, verified.

    The download lands in a temporary folder and is renamed into place only after it verifies,
    so a corrupt remote copy never appears under `root` (ManifestError names the bad file).
    """
    from mlflow.tracking import MlflowClient

    if name is None:
        names = remote_snapshots(tracking_uri, run_id)
        if not names:
            raise FileNotFoundError(f"run {run_id}: no snapshots under artifacts/{REMOTE_DIR}/")
        name = names[-1]
    final = Path(root) / name
    if final.exists():
        raise FileExistsError(f"{final}: already exists")
    client = MlflowClient(tracking_uri)
    with atomic_directory(final) as tmp, tempfile.TemporaryDirectory(dir=final.parent) as scratch:
        local = Path(client.download_artifacts(run_id, f"{REMOTE_DIR}/{name}", scratch))
        if not (local / MANIFEST).is_file():
            raise FileNotFoundError(f"run {run_id}: no snapshot {name!r} in its artifacts")
        for item in local.iterdir():
            os.replace(item, tmp / item.name)
        verify_snapshot(tmp)
    log.info("pulled snapshot %s from run %s into %s", name, run_id, final)
    return final
