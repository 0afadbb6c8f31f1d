"""What keys a store: the sha256 of each input file's bytes, cached, or hashed during the pass.

A store's fingerprint is the hash of the sha256 of every source file and of the config that
decides its contents (`store_fingerprint`). Hashing a file costs a read and about 1 CPU-s per
GB, so the digests are remembered in `cache_root/input_sha256.json` (`DigestCache`), keyed by
the file's resolved path, size, mtime_ns, ctime_ns and inode as git's index keys its files: a
rewrite changes ctime even when size and mtime are put back. A first build of a file reads it
only once: `StreamDigest` hashes the bytes the reader reads, in a thread of its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
from pathlib import Path
from typing import Any

from cvr.ops.manifest import fingerprint, sha256_file, write_json_atomic

# Bump when the encoding of the same inputs changes, so old cached stores are not reused.
BUILD_VERSION = 1
DIGESTS = "input_sha256.json"
_HASH_BLOCK = 1 << 24  # big reads: each one gives the GIL back to a busy thread only once


def store_fingerprint(
    format: str,
    format_options: dict[str, Any],
    sources: dict[str, list[str]],
    schema: dict[str, Any],
    preprocess: dict[str, Any],
    on_error: str,
) -> str:
    """The hash of everything that decides a store's contents; `sources` maps each split role
    (`data` for rows split by the rule) to its files' sha256 (unchanged for one-file inputs)."""
    return fingerprint(
        {
            "builder": BUILD_VERSION,
            "format": format,
            "format_options": format_options,
            "sources": {k: v[0] if len(v) == 1 else v for k, v in sources.items()},
            "schema": schema,
            "preprocess": preprocess,
            "on_error": on_error,
        }
    )


def sha256_of(path: str | Path) -> str:
    """An input file's sha256 (what the build hashes outside its pass), in 16 MiB reads."""
    return sha256_file(path, _HASH_BLOCK)


def file_key(path: str | Path) -> dict[str, int]:
    """What says a file is unchanged since it was hashed."""
    st = os.stat(path)
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "ino": st.st_ino,
    }


class DigestCache:
    """Input files' sha256 remembered under a store cache root (see the module docstring).

    A lost or corrupt cache file only costs a rehash; concurrent builds may each rewrite it
    (atomically), the last one winning.
    """

    def __init__(self, cache_root: str | Path) -> None:
        self.path = Path(cache_root) / DIGESTS
        try:
            entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            entries = {}
        self.entries: dict[str, dict[str, Any]] = entries if isinstance(entries, dict) else {}
        self._dirty = False

    def get(self, path: str | Path) -> str | None:
        """The file's sha256 if it was hashed with exactly its present key, else None."""
        entry = self.entries.get(str(Path(path).resolve()))
        if not isinstance(entry, dict):
            return None
        key = file_key(path)
        if any(entry.get(k) != v for k, v in key.items()):
            return None
        sha = entry.get("sha256")
        return sha if isinstance(sha, str) else None

    def put(self, path: str | Path, sha256: str, key: dict[str, int]) -> None:
        """Remember `sha256` for `path` if the file still has `key` (taken before hashing)."""
        if file_key(path) != key:
            return  # changed while it was read: its bytes are not known
        self.entries[str(Path(path).resolve())] = {**key, "sha256": sha256}
        self._dirty = True

    def save(self) -> None:
        if self._dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, self.entries)
            self._dirty = False


class StreamDigest:
    """sha256 of the byte blocks given to `update`, in order, hashed in a thread of its own
    (hashlib releases the GIL), at most `depth` blocks behind the reader."""

    def __init__(self, depth: int = 4) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._digest = hashlib.sha256()
        self._thread = threading.Thread(target=self._run, name="cvr-sha256", daemon=True)
        self._thread.start()
        self._hex: str | None = None
        self.bytes = 0  # given so far

    def _run(self) -> None:
        while (block := self._queue.get()) is not None:
            self._digest.update(block)

    def update(self, block: bytes) -> None:
        if self._hex is not None:
            raise ValueError("StreamDigest: update after hexdigest")
        if block:
            self.bytes += len(block)
            self._queue.put(block)

    def hexdigest(self) -> str:
        """The digest of every block so far; no further updates."""
        if self._hex is None:
            self._queue.put(None)
            self._thread.join()
            self._hex = self._digest.hexdigest()
        return self._hex
