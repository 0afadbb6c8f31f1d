"""Input fingerprints: the digest cache, hashing during the pass, the pending store's place."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os

import numpy as np
import pyarrow as pa
import pytest

import cvr.data.build as build
import cvr.data.plan as plan
from cvr.data.build import build_file_store, plan_build
from cvr.data.fingerprint import DigestCache, StreamDigest, file_key, sha256_of
from cvr.data.readers.lines import iter_line_blocks
from cvr.data.store import EncodedStore, _move_into_place

SCHEMA = {"fields": [{"name": "n1", "kind": "numeric"}, {"name": "c1"}], "labels": ["click"]}


def _text(n: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    lines = [
        f"{int(rng.random() < 0.3)},{int(rng.integers(50))},v{rng.zipf(1.3) % 97}" for _ in range(n)
    ]
    return ("click,n1,c1\n" + "\n".join(lines) + "\n").encode()


def _build(path, cache, **kw):
    return build_file_store("t", "csv", path=str(path), schema=SCHEMA, cache_root=cache, **kw)


def _count_hashes(monkeypatch) -> list:
    """Record every file the build hashes apart from its pass."""
    calls: list = []
    for module in (build, plan):
        monkeypatch.setattr(module, "sha256_of", lambda p: calls.append(p) or sha256_of(p))
    return calls


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_digest_cache_notices_a_rewrite_of_equal_size_and_mtime(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(b"abc\n")
    cache = DigestCache(tmp_path)
    cache.put(path, _sha(path), file_key(path))
    cache.save()
    assert DigestCache(tmp_path).get(path) == _sha(path)
    # Same size, other bytes, mtime put back: ctime still moves, so the entry no longer holds.
    st = os.stat(path)
    path.write_bytes(b"abd\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime_ns == st.st_mtime_ns
    assert DigestCache(tmp_path).get(path) is None
    # Same size, changed mtime: also unknown.
    cache = DigestCache(tmp_path)
    cache.put(path, _sha(path), file_key(path))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache.get(path) is None
    # A key taken before a change is not recorded.
    key = file_key(path)
    path.write_bytes(b"abe\n")
    cache.put(path, "0" * 64, key)
    assert cache.get(path) is None


def test_digest_cache_survives_a_corrupt_file(tmp_path):
    (tmp_path / "input_sha256.json").write_text("{not json")
    assert DigestCache(tmp_path).get(tmp_path / "input_sha256.json") is None


def test_stream_digest_equals_sha256_of_the_blocks():
    blocks = [os.urandom(n) for n in (0, 1, 70_000, 3, 1 << 20)]
    digest = StreamDigest(depth=2)
    for b in blocks:
        digest.update(b)
    assert digest.hexdigest() == hashlib.sha256(b"".join(blocks)).hexdigest()
    assert digest.bytes == sum(map(len, blocks))
    with pytest.raises(ValueError):
        digest.update(b"x")


def _zstd(data: bytes, path) -> None:
    with pa.output_stream(str(path), compression="zstd") as out:
        out.write(data)


@pytest.mark.parametrize(
    "suffix, compress",
    [
        ("", None),
        (".gz", gzip.compress),
        (".bz2", bz2.compress),
        (".xz", lzma.compress),
        (".zst", "zstd"),
    ],
)
def test_line_blocks_feed_the_digest_every_byte_of_the_file(tmp_path, suffix, compress, inflate):
    data = _text(3000)
    path = tmp_path / f"a.csv{suffix}"
    if compress == "zstd":
        _zstd(data, path)
    else:
        path.write_bytes(compress(data) if compress else data)
    digest = StreamDigest()
    blocks = list(iter_line_blocks(path, 500, block_bytes=4096, digest=digest))
    assert sum(len(b) for b in blocks) == 3001
    assert b"".join(b.buf[b.bounds[0] : b.bounds[-1]].tobytes() for b in blocks) == data
    assert digest.hexdigest() == _sha(path) == sha256_of(path)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_hashing_in_the_pass_gives_the_up_front_fingerprint(tmp_path, suffix, monkeypatch):
    path = tmp_path / f"a.csv{suffix}"
    path.write_bytes(gzip.compress(_text(5000)) if suffix else _text(5000))
    up_front = plan_build("t", "csv", path=str(path), schema=SCHEMA)
    calls = _count_hashes(monkeypatch)
    store = _build(path, tmp_path / "cache")
    assert calls == []  # a first build of the name: hashed while read
    assert store.fingerprint == up_front.fingerprint
    assert store.path.name == f"t-{up_front.fingerprint[:16]}"
    assert store.info.sources[0].sha256 == _sha(path)
    EncodedStore.open(store.path, verify=True)
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()] == [store.path.name]


def test_a_rebuild_reuses_the_digest_and_notices_a_changed_file(tmp_path, monkeypatch):
    path = tmp_path / "a.csv"
    path.write_bytes(_text(2000, seed=1))
    cache = tmp_path / "cache"
    first = _build(path, cache)

    def no_hash(p):
        raise AssertionError(f"{p} hashed again")

    for module in (build, plan):
        monkeypatch.setattr(module, "sha256_of", no_hash)
    assert _build(path, cache).path == first.path  # reused, nothing rehashed
    other = _build(path, cache, preprocess={"min_count": 2})  # another store, same digest
    assert other.fingerprint != first.fingerprint
    # Same size and mtime, other bytes: the digest is stale, so the file is hashed first (a
    # store of this name exists, and might be the one to reuse).
    st = os.stat(path)
    data = bytearray(path.read_bytes())
    data[-2:-1] = b"8" if data[-2:-1] != b"8" else b"9"
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    calls = _count_hashes(monkeypatch)
    changed = _build(path, cache)
    assert calls == [path]
    assert changed.fingerprint != first.fingerprint
    assert changed.info.sources[0].sha256 == _sha(path)


def test_a_finished_store_never_replaces_one_already_in_place(tmp_path):
    done, final = tmp_path / ".t.pending.tmp-1-00000000", tmp_path / "t-abc"
    done.mkdir()
    (done / "meta.json").write_text("new")
    final.mkdir()
    (final / "meta.json").write_text("old")
    _move_into_place(done, final)
    assert not done.exists() and (final / "meta.json").read_text() == "old"
    done.mkdir()
    _move_into_place(done, tmp_path / "t-def")
    assert not done.exists() and (tmp_path / "t-def").is_dir()
