"""The line splitter: a text file (plain or compressed) as blocks of lines, numbered from 1.

Terminators are LF, CRLF or a lone CR (as `bytes.splitlines`); each line is exactly one record,
so a line number is exact and rows read + rows skipped always equals the number of lines. Lines
are found with numpy over whole blocks of bytes: the cost per line is a few vector operations.

Compressed files are read as streams by their suffix: `.gz`, `.bz2`, `.zst`/`.zstd` through
pyarrow's compressed input streams, `.xz` through `lzma`, decompressed one block ahead in a thread
of their own; `.gz` through ISA-L (`isal.isal_zlib`) when the `isal` package is installed: it
inflates about 2.5-4x faster than zlib (0.65 -> 0.16-0.26 CPU-s for the 141 MB of the 0.5M-row
bench file), the same bytes. Memory is bounded by the block size
plus `max_line_bytes`: a line longer than that (terminator included) is never held whole; its
bytes are dropped as they stream past and it comes out as an empty line flagged `too_long`, so
the reader can refuse it (`on_error=raise`) or count it (`skip`) under `line_too_long`.
"""

from __future__ import annotations

import functools
import io
import itertools
import lzma
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cvr.data.errors import DataError
from cvr.data.prefetch import prefetch

# 4 MiB: ~15k Criteo lines per chunk, so the memory of a chunk in flight is tens of MiB.
DEFAULT_BLOCK_BYTES = 1 << 22
# Far above any real record (Criteo lines are ~250 bytes), far below what exhausts memory.
DEFAULT_MAX_LINE_BYTES = 1 << 23
# Suffix -> pyarrow codec; `.xz` is not an Arrow codec and goes through lzma.
ARROW_CODECS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".zstd": "zstd"}
COMPRESSED_SUFFIXES = (*ARROW_CODECS, ".xz")


class Digest(Protocol):
    def update(self, block: bytes) -> None: ...


def open_bytes(path: str | Path, digest: Digest | None = None) -> BinaryIO:
    """A binary stream of the file's bytes, decompressed when its suffix names a codec.

    `digest`: each block of the file's own bytes (compressed, for a compressed file) is also
    given to `digest.update`, in order, as it is read.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in COMPRESSED_SUFFIXES:
        return open(path, "rb")
    source: Any = str(path) if digest is None else _TeeFile(open(path, "rb", buffering=0), digest)
    if suffix == ".xz":
        return lzma.open(source, "rb")
    if suffix == ".gz" and _isal() is not None:
        return _IsalGzip(open(source, "rb", buffering=0) if isinstance(source, str) else source)
    return pa.input_stream(source, compression=ARROW_CODECS[suffix])


_READ_ERRORS = (OSError, pa.ArrowException, lzma.LZMAError, EOFError)
_GZ_READ = 1 << 20  # compressed bytes per read of the ISA-L path


@functools.cache
def _isal() -> Any:
    """The optional `isal` package (ISA-L's gzip), or None; imported on the first `.gz`."""
    try:
        import isal.isal_zlib
    except ImportError:
        return None
    return isal


def _isal_errors() -> tuple[type[BaseException], ...]:
    isal = _isal()
    return (isal.isal_zlib.error,) if isal is not None else ()


class _IsalGzip:
    """The inflated bytes of a gzip stream (members one after another), by ISA-L. Its own
    loop, not `isal.igzip.open`: with that, peak RSS grew 17% from the 2M- to the 8M-row bench
    file (509 -> 597 MiB); with this one 4% (530 -> 550), as pyarrow's stream (529 -> 541)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._inflate = _isal().isal_zlib.decompressobj(31)
        self._pending = b""
        self._done = False

    def read(self, n: int) -> bytes:
        out: list[bytes] = []
        size = 0
        while size < n and not self._done:
            if self._inflate.eof:  # a member ended: another may follow
                rest = self._inflate.unused_data or self._raw.read(_GZ_READ)
                if not rest:
                    self._done = True
                    break
                self._inflate = _isal().isal_zlib.decompressobj(31)
                self._pending = rest
            if not self._pending:
                self._pending = self._raw.read(_GZ_READ)
                if not self._pending:
                    raise EOFError("the gzip stream ended before its end-of-stream marker")
            chunk = self._inflate.decompress(self._pending, n - size)
            self._pending = self._inflate.unconsumed_tail
            out.append(chunk)
            size += len(chunk)
        return b"".join(out)

    def __enter__(self) -> _IsalGzip:
        return self

    def __exit__(self, *exc: object) -> None:
        self._raw.close()


class _TeeFile(io.RawIOBase):
    """A raw file whose bytes also go to a digest as they are read."""

    def __init__(self, raw: BinaryIO, digest: Digest) -> None:
        self._raw = raw
        self._digest = digest

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = self._raw.readinto(buf)
        if n:
            self._digest.update(bytes(memoryview(buf)[:n]))
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


@dataclass
class LineBlock:
    """Consecutive lines of one file over one buffer of bytes.

    `bounds` (n + 1,) are the byte offsets of the lines (terminators included); `ends` (n,) are
    where each line's content ends (terminator excluded); `too_long` marks lines whose content
    was dropped for exceeding max_line_bytes; `first` is the number of the first line.
    """

    buf: np.ndarray
    bounds: np.ndarray
    ends: np.ndarray
    too_long: np.ndarray
    first: int

    def __len__(self) -> int:
        return len(self.ends)

    @property
    def starts(self) -> np.ndarray:
        return self.bounds[:-1]

    @property
    def numbers(self) -> np.ndarray:
        """int64 (n,) line numbers."""
        return np.arange(self.first, self.first + len(self), dtype=np.int64)

    def slice(self, start: int, stop: int) -> LineBlock:
        return LineBlock(
            self.buf,
            self.bounds[start : stop + 1],
            self.ends[start:stop],
            self.too_long[start:stop],
            self.first + start,
        )

    def binary(self) -> pa.Array:
        """`large_binary` lines with their terminators, zero-copy over the buffer."""
        offsets = np.ascontiguousarray(self.bounds, dtype=np.int64)
        return pa.Array.from_buffers(
            pa.large_binary(), len(self), [None, pa.py_buffer(offsets), pa.py_buffer(self.buf)]
        )

    def line_bytes(self, i: int) -> bytes:
        """Line i without its terminator."""
        return self.buf[self.bounds[i] : self.ends[i]].tobytes()


def iter_line_blocks(
    path: str | Path,
    chunk_rows: int,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    byte_range: tuple[int, int] | None = None,
    first_line: int = 1,
    digest: Digest | None = None,
) -> Iterator[LineBlock]:
    """Yield LineBlocks of at most `chunk_rows` lines each, in file order.

    `byte_range` (start, stop) reads only those bytes of an uncompressed file (both must be
    line starts, see `line_aligned_ranges`); its first line is numbered `first_line`.
    `digest` gets every byte of the file as it is read (a whole file only, see `open_bytes`).
    """
    if digest is not None and byte_range is not None:
        raise ValueError("a digest needs the whole file, not a byte range")
    if max_line_bytes < 1:
        raise ValueError(f"data.max_line_bytes: expected a positive integer, got {max_line_bytes}")
    first = first_line
    carry = b""
    skipping = False  # inside an over-long line whose bytes are being dropped
    long_head = False  # the first line of the next segment is the end of an over-long line
    path = Path(path)
    left = None
    compressed = path.suffix.lower() in COMPRESSED_SUFFIXES
    with open_bytes(path, digest) as fh:
        if byte_range is not None:
            fh.seek(byte_range[0])
            left = byte_range[1] - byte_range[0]
        reads = _reads(fh, block_bytes, left, None if compressed else digest)
        if compressed:
            reads = prefetch(reads, depth=2, name="cvr-decompress")  # on another core
        try:
            while True:
                try:
                    block = next(reads)
                except _READ_ERRORS + _isal_errors() as exc:
                    raise DataError(
                        f"{path}: cannot read past line {first - 1} ({type(exc).__name__}: {exc})"
                    ) from None
                eof = not block
                if skipping:
                    if eof:
                        seg, long_head = b"", True
                    else:
                        end = _first_terminator(block)
                        if end < 0:
                            continue
                        block, long_head, skipping = b"\n" + block[end:], True, False
                if not (skipping and eof):
                    buf = carry + block
                    cut = len(buf) if eof else _last_cut(buf)
                    seg, carry = buf[:cut], buf[cut:]
                    if len(carry) > max_line_bytes:
                        carry, skipping = b"", True
                if seg or (skipping and eof):
                    lines = _split(seg, max_line_bytes, long_head)
                    long_head = False
                    for start in range(0, len(lines), chunk_rows):
                        piece = lines.slice(start, min(start + chunk_rows, len(lines)))
                        piece.first = first
                        yield piece
                        first += len(piece)
                if eof:
                    return
        finally:
            reads.close()  # stops the decompressing thread before the file closes


def _reads(
    fh: BinaryIO, block_bytes: int, left: int | None, digest: Digest | None = None
) -> Iterator[bytes]:
    """Blocks of at most `block_bytes` (and `left` in all) bytes, the last one b""."""
    while True:
        block = fh.read(block_bytes if left is None else min(block_bytes, left))
        if left is not None:
            left -= len(block)
        if digest is not None:
            digest.update(block)
        yield block
        if not block:
            return


def line_aligned_ranges(path: str | Path, target_bytes: int) -> list[tuple[int, int]]:
    """Byte ranges of about `target_bytes` covering an uncompressed file, each starting just
    after an LF (an LF always ends a line, so every range starts a line)."""
    path = Path(path)
    size = path.stat().st_size
    cuts = [0]
    with open(path, "rb") as fh:
        pos = target_bytes
        while pos < size:
            fh.seek(pos)
            probe = fh.read(1 << 20)
            lf = probe.find(b"\n")
            if lf < 0:  # no LF within 1 MiB: do not cut here
                pos += len(probe) or 1
                continue
            cut = pos + lf + 1
            if cut < size:
                cuts.append(cut)
            pos = cut + target_bytes
    cuts.append(size)
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]


def _first_terminator(block: bytes) -> int:
    """Index just past the first line terminator in `block` (a CRLF counts whole), or -1."""
    lf, cr = block.find(b"\n"), block.find(b"\r")
    if cr >= 0 and (lf < 0 or cr < lf):
        return cr + 2 if block[cr + 1 : cr + 2] == b"\n" else cr + 1
    return lf + 1 if lf >= 0 else -1


def _last_cut(buf: bytes) -> int:
    """Where the complete lines of `buf` end: after its last LF, or after a CR that is not the
    final byte (a final CR may be the first half of a CRLF)."""
    return max(buf.rfind(b"\n"), buf.rfind(b"\r", 0, len(buf) - 1)) + 1


def _split(seg: bytes, max_line_bytes: int, long_head: bool) -> LineBlock:
    block = _split_lines(seg)
    long = (np.diff(block.bounds) > max_line_bytes) | np.zeros(len(block), dtype=bool)
    if long_head:
        long[0] = True
    if long.any() and (np.diff(block.bounds)[long] > 2).any():
        # Keep only the terminator of each over-long line (rare: a Python loop over those lines).
        pieces, pos = [], 0
        for i in np.flatnonzero(long).tolist():
            pieces.append(seg[pos : block.bounds[i]])
            pos = int(block.ends[i])
        pieces.append(seg[pos:])
        block = _split_lines(b"".join(pieces))
    block.too_long = long
    return block


def _split_lines(seg: bytes) -> LineBlock:
    """The lines of `seg` (a LineBlock numbered from 1) without copying its bytes."""
    a = np.frombuffer(seg, dtype=np.uint8)
    lf = a == 0x0A
    if seg.find(b"\r") < 0:  # the usual case, checked at memchr speed
        ends = np.flatnonzero(lf) + 1
    else:
        # A CR ends a line unless it is the first half of a CRLF; an LF always ends one.
        cr_alone = a == 0x0D
        cr_alone[:-1] &= ~lf[1:]
        ends = np.flatnonzero(lf | cr_alone) + 1
    if len(ends) == 0 or ends[-1] != len(a):
        ends = np.append(ends, len(a))  # a last line without a terminator
    bounds = np.concatenate([[0], ends]).astype(np.int64)
    content = ends.astype(np.int64)
    if len(a):
        # Strip the terminator: an LF, then a CR before it (or a lone CR).
        has = content > bounds[:-1]
        content -= has & (a[np.maximum(content - 1, 0)] == 0x0A)
        has = content > bounds[:-1]
        content -= has & (a[np.maximum(content - 1, 0)] == 0x0D)
    return LineBlock(a, bounds, content, np.zeros(len(content), dtype=bool), 1)


def decode_lines(lines: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(text, bad): `string` lines without terminators; bad[i] marks a line that is not UTF-8."""
    text, bad = decode(lines)
    return pc.utf8_rtrim(text, characters="\r\n"), bad


def decode(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(text, bad): `binary` values as `large_string`; a value that is not UTF-8 becomes empty.

    Checking value by value happens only when the whole array fails to decode.
    """
    try:
        return values.cast(pa.large_string()), np.zeros(len(values), dtype=bool)
    except pa.ArrowInvalid:
        pass
    items = values.to_pylist()
    bad = np.array([v is not None and not is_utf8(v) for v in items], dtype=bool)
    fixed = pa.array([b"" if b else v for v, b in zip(items, bad, strict=True)], pa.large_binary())
    return fixed.cast(pa.large_string()), bad


def is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
