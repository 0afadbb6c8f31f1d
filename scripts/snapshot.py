"""Snapshots of the serving state: create, verify, restore, list, prune, push, pull; predict.

    python scripts/snapshot.py create --bundle outputs/bundles/ffm --root outputs/snapshots \\
        [--index outputs/indexes/hnsw ...]
    python scripts/snapshot.py verify outputs/snapshots/20250101T120000.123456Z-1a2b3c4d
    python scripts/snapshot.py restore outputs/snapshots/<snapshot> /srv/cvr/live
    python scripts/snapshot.py list --root outputs/snapshots
    python scripts/snapshot.py prune --root outputs/snapshots --keep 5
    python scripts/snapshot.py gc outputs/runs outputs/snapshots     # abandoned temporaries
    python scripts/snapshot.py push <snapshot> --tracking-uri sqlite:///outputs/mlflow.db \\
        --run-id ID
    python scripts/snapshot.py pull --tracking-uri URI --run-id ID --root outputs/snapshots
    python scripts/snapshot.py predict <bundle or snapshot> <data file> [--out probs.txt]

Exit code 0 on success, 1 with the reason on stderr when an artifact fails verification or an
input is wrong (the message names the file). `predict` prints the row count, the sha256 of the
float64 probabilities (equal hashes = bit-identical predictions) and the first few values.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
from pathlib import Path

import numpy as np

from cvr.data.errors import DataError
from cvr.ops.manifest import ManifestError
from cvr.ops.snapshot import (
    BUNDLE_DIR,
    MANIFEST,
    create_snapshot,
    incomplete_snapshots,
    list_snapshots,
    prune_snapshots,
    pull_snapshot,
    push_snapshot,
    restore_snapshot,
    verify_snapshot,
)
from cvr.ops.temporaries import remove_abandoned
from cvr.vectorstore.client import StoreError

# Failures that are the input's fault: reported in one line, exit code 1.
_EXPECTED = (
    ManifestError,
    DataError,
    FileNotFoundError,
    FileExistsError,
    ValueError,
    StoreError,
)


def _index_arg(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    return (name, path) if sep else (Path(text).name, text)


def cmd_create(args: argparse.Namespace) -> int:
    path = create_snapshot(
        args.root,
        args.bundle,
        dict(args.index or []),
        note=args.note,
        collections=args.collection or (),
    )
    manifest = verify_snapshot(path)
    print(f"created {path} ({len(manifest['files'])} files)")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    manifest = verify_snapshot(args.snapshot)
    total = sum(manifest.get("sizes", {}).values())
    print(f"ok {args.snapshot}: {len(manifest['files'])} files, {total} bytes verified")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    if args.dest is None and args.uri is None:
        raise ValueError("restore: give DEST (files), --uri NEW_URI (collections), or both")
    if args.dest is not None:
        dest = restore_snapshot(args.snapshot, args.dest)
        print(f"restored {args.snapshot} -> {dest} (verified)")
    if args.uri is not None:
        from cvr.vectorstore.export import restore_snapshot_collections

        for name in restore_snapshot_collections(args.snapshot, args.uri):
            print(f"restored collection {name} into {args.uri} (verified)")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    snapshots = list_snapshots(args.root)
    print(f"{'snapshot':<41}{'created (UTC)':<22}{'files':>6}{'bytes':>12}  contents")
    for info in snapshots:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(info.created_unix))
        contents = ", ".join(c["path"] for c in info.contents)
        print(f"{info.name:<41}{created:<22}{info.files:>6}{info.bytes:>12}  {contents}")
    for tmp in incomplete_snapshots(args.root):
        print(f"{tmp.path.name:<41}incomplete: {tmp.state}")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    """Remove the temporaries a dead writer left anywhere under the folders (bundles, runs)."""
    removed = [p for folder in args.folders for p in remove_abandoned(folder, recursive=True)]
    for path in removed:
        print(f"removed {path}")
    print(f"removed {len(removed)} abandoned temporary file(s)/folder(s)")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    removed = prune_snapshots(args.root, args.keep)
    for path in removed:
        print(f"removed {path}")
    print(f"kept {len(list_snapshots(args.root))} snapshot(s)")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    artifact_path = push_snapshot(args.snapshot, args.tracking_uri, args.run_id)
    print(f"pushed {args.snapshot} -> run {args.run_id} artifacts/{artifact_path}")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    path = pull_snapshot(args.tracking_uri, args.run_id, args.root, args.name)
    print(f"pulled {path} (verified)")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from cvr.serving.predictor import Predictor

    bundle = Path(args.bundle)
    if (bundle / MANIFEST).is_file():  # a snapshot: score with the bundle inside it
        verify_snapshot(bundle)
        bundle = bundle / BUNDLE_DIR
    probs = Predictor.load(bundle).predict(Path(args.data))
    digest = hashlib.sha256(np.ascontiguousarray(probs, dtype=np.float64).tobytes()).hexdigest()
    print(f"rows {len(probs)}  sha256(float64) {digest[:16]}  mean {probs.mean():.6f}")
    print("first: " + " ".join(f"{p:.9f}" for p in probs[:5]))
    if args.out:
        np.savetxt(args.out, probs, fmt="%.17g")
        print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("create", help="snapshot a bundle (and index folders) under --root")
    p.add_argument("--bundle", required=True, help="serving bundle folder")
    p.add_argument("--root", required=True, help="folder that holds the snapshots")
    p.add_argument(
        "--index",
        action="append",
        type=_index_arg,
        help="faiss index folder, as NAME=DIR or DIR (repeatable)",
    )
    p.add_argument("--note", default="", help="free text stored in snapshot.json")
    p.add_argument(
        "--collection",
        action="append",
        help="published collection to export, as URI#ALIAS_OR_COLLECTION (repeatable)",
    )
    p.set_defaults(func=cmd_create)

    p = sub.add_parser("verify", help="check every file of a snapshot")
    p.add_argument("snapshot")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("restore", help="verify a snapshot and copy it to a new folder")
    p.add_argument("snapshot")
    p.add_argument("dest", nargs="?", default=None, help="new folder for the snapshot's files")
    p.add_argument(
        "--uri", default=None, help="recreate the snapshot's collections in this (empty) store"
    )
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("list", help="snapshots under a root, oldest first")
    p.add_argument("--root", required=True)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("gc", help="remove temporaries whose writer is gone, under folders")
    p.add_argument("folders", nargs="+", help="e.g. outputs/runs outputs/snapshots")
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser("prune", help="keep the newest N snapshots; drop abandoned temporaries")
    p.add_argument("--root", required=True)
    p.add_argument("--keep", type=int, required=True)
    p.set_defaults(func=cmd_prune)

    for name, func, text in (
        ("push", cmd_push, "upload a snapshot to a run's MLflow artifacts"),
        ("pull", cmd_pull, "download a pushed snapshot into --root, verified"),
    ):
        p = sub.add_parser(name, help=text)
        if name == "push":
            p.add_argument("snapshot")
        else:
            p.add_argument("--root", required=True)
            p.add_argument("--name", default=None, help="snapshot name (default: the newest)")
        p.add_argument("--tracking-uri", required=True)
        p.add_argument("--run-id", required=True)
        p.set_defaults(func=func)

    p = sub.add_parser("predict", help="score a data file with a bundle (or a snapshot's)")
    p.add_argument("bundle", help="bundle folder, or snapshot folder")
    p.add_argument("data", help="file in the dataset's format")
    p.add_argument("--out", default=None, help="write every probability here, one per line")
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _EXPECTED as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
