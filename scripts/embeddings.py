"""Publish a trained model's tables to a vector database, and manage the published versions.

    python scripts/embeddings.py publish RUN_OR_BUNDLE --uri outputs/vectors.db [--alias A]
    python scripts/embeddings.py list --uri outputs/vectors.db [--alias A]
    python scripts/embeddings.py rollback --uri outputs/vectors.db --alias A [--to COLLECTION]
    python scripts/embeddings.py prune --uri outputs/vectors.db --alias A --keep N

The URI is a local path (Milvus Lite, embedded) or http://host:19530 (a Milvus server). The
default alias is `cvr_<kind>_live` (kind: ffm, fm, fwfm). Exit code 0 on success, 1 with the
reason on stderr for a bad input (the message names the store, collection or file).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from tqdm import tqdm

from cvr.ops.manifest import ManifestError
from cvr.vectorstore.client import StoreError
from cvr.vectorstore.versions import list_versions, prune, publish, rollback

_EXPECTED = (StoreError, ManifestError, FileNotFoundError, ValueError)


def tqdm_progress(label: str, total: int):
    """A progress bar per publish phase; returns its advance function."""
    bar = tqdm(total=total, desc=label, unit="row", unit_scale=True, leave=True)

    def advance(n: int) -> None:
        bar.update(n)
        if bar.n >= total:
            bar.close()

    return advance


def cmd_publish(args: argparse.Namespace) -> int:
    progress = None if args.quiet else tqdm_progress
    result = publish(args.uri, args.bundle, alias=args.alias, progress=progress)
    print(
        f"published {result.collection}: {result.rows} rows, checksum {result.checksum[:16]}, "
        f"insert {result.insert_s:.1f} s + verify {result.verify_s:.1f} s "
        f"({result.rows_per_s:,.0f} rows/s); alias {result.alias} -> {result.collection}"
        + (f" (was {result.previous})" if result.previous else "")
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    found = list_versions(args.uri, args.alias)
    print(f"{'collection':<32}{'live':<6}{'model':<7}{'rows':>10}  {'created (UTC)':<20}  bundle")
    for v in found:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v.meta["created_unix"]))
        print(
            f"{v.collection:<32}{'*' if v.live else '':<6}{v.meta['model']:<7}"
            f"{v.meta['rows']:>10}  {created:<20}  {v.meta['bundle'][:12]} {v.meta['bundle_path']}"
        )
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    before, after = rollback(args.uri, args.alias, args.to)
    print(f"alias {args.alias}: {before} -> {after}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    for name in prune(args.uri, args.alias, args.keep):
        print(f"dropped {name}")
    print(f"kept {len(list_versions(args.uri, args.alias))} version(s) of {args.alias}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    uri_help = "local path (Milvus Lite) or http://host:port (server)"

    p = sub.add_parser("publish", help="write a bundle's tables to a new version, move alias")
    p.add_argument("bundle", help="serving bundle folder, or a run folder with bundle/")
    p.add_argument("--uri", default="outputs/vectors.db", help=uri_help)
    p.add_argument("--alias", default=None, help="alias to move (default cvr_<kind>_live)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("list", help="published versions, their bundles and row counts")
    p.add_argument("--uri", default="outputs/vectors.db", help=uri_help)
    p.add_argument("--alias", default=None)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("rollback", help="move the alias back to the previous version")
    p.add_argument("--uri", default="outputs/vectors.db", help=uri_help)
    p.add_argument("--alias", required=True)
    p.add_argument("--to", default=None, help="collection to point at (default: the previous)")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("prune", help="drop all but the newest N versions (never the live one)")
    p.add_argument("--uri", default="outputs/vectors.db", help=uri_help)
    p.add_argument("--alias", required=True)
    p.add_argument("--keep", type=int, required=True)
    p.set_defaults(func=cmd_prune)
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
