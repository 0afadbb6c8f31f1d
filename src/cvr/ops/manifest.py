"""Checksums, fingerprints and atomic writes shared by every artifact that outlives a process.

Artifacts (stores, bundles, indexes, snapshots) are built in a temporary sibling directory and
renamed into place, so a crash never leaves a half-written artifact under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


class ManifestError(RuntimeError):
    """An artifact does not match its manifest; the message names the file and what differs."""


def sha256_file(path: str | os.PathLike, block_bytes: int = _CHUNK) -> str:
    """sha256 of a file's bytes, read in blocks of `block_bytes` into one reused buffer."""
    digest = hashlib.sha256()
    buf = bytearray(block_bytes)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def fingerprint(*parts: Any) -> str:
    """sha256 of JSON-serializable parts in canonical form (sorted keys)."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes `final` when the block exits cleanly.

    On an exception the temporary directory is removed and `final` is untouched. If `final`
    appears meanwhile (a concurrent writer) and `overwrite` is false, the new copy is discarded.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            return
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def file_checksums(root: str | os.PathLike, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every regular file under `root`, keyed by POSIX relative path."""
    root = Path(root)
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel not in exclude:
            out[rel] = sha256_file(path)
    return out


def verify_checksums(
    root: str | os.PathLike,
    expected: dict[str, str],
    exclude: tuple[str, ...] = (),
    sizes: dict[str, int] | None = None,
) -> None:
    """Raise ManifestError naming each missing, extra or changed file under `root`.

    With `sizes` ({path: bytes}), a file whose size differs is reported as truncated (shorter)
    or grown (longer) before its sha256 is computed.
    """
    root = Path(root)
    links = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_symlink())
    if links:
        # One rule for every reader (verify, load, restore): a link could point anywhere.
        raise ManifestError(f"{root}: symlinks are refused: {', '.join(links)}")
    problems = []
    present = {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).as_posix() not in exclude
    }
    for rel in sorted(set(expected) - present):
        problems.append(f"missing file {root / rel}")
    for rel in sorted(present - set(expected)):
        problems.append(f"extra file {root / rel} (not in the manifest)")
    for rel in sorted(present & set(expected)):
        size, want = (root / rel).stat().st_size, (sizes or {}).get(rel)
        if want is not None and size != want:
            how = "truncated" if size < want else "grown"
            problems.append(f"{how} file {root / rel}: {size} bytes, expected {want}")
            continue
        actual = sha256_file(root / rel)
        if actual != expected[rel]:
            problems.append(
                f"changed file {root / rel}: sha256 {actual[:12]}… expected {expected[rel][:12]}…"
            )
    if problems:
        raise ManifestError("; ".join(problems))


def read_manifest_file(path: str | os.PathLike, kind: str, format_version: int, what: str) -> dict:
    """Load `path` (a manifest JSON) and check its `kind` and `format_version`.

    Raises ManifestError naming the file when it is missing, not JSON, of another kind
    (`what` says which artifact was expected) or of another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: missing; {path.parent} is not a {what}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != kind:
        raise ManifestError(f"{path}: not a {what} manifest")
    if manifest.get("format_version") != format_version:
        raise ManifestError(
            f"{path}: format_version {manifest.get('format_version')!r}, this cvr reads "
            f"{format_version}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in files.items()
    ):
        got = "none" if files is None else type(files).__name__
        raise ManifestError(
            f"{path}: 'files' must be a mapping of relative path -> sha256, got {got}"
        )
    for name in files:
        if name.startswith("/") or ".." in Path(name).parts:
            raise ManifestError(f"{path}: file name {name!r} is not a path inside {path.parent}")
    return manifest
