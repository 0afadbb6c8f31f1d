"""EncodedStore: field-local int32 ids and labels per split, memory-mapped, with meta.json.

Layout of a store directory:

    meta.json                 cardinalities, rows, label rates, fingerprint, sha256 of each array
    {split}.ids.npy           int32 (rows, F), field-local ids (0 = the field's OOV/missing bucket)
    {split}.labels.npy        float32 (rows, L), one column per label in `meta["labels"]`
    {split}.oracle.npy        float32 (rows, L), true probabilities (synthetic data only)

A store is written through `StoreWriter` into a temporary directory and renamed into place.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from cvr.data.prefetch import prefetch
from cvr.data.store_meta import SourceFile, StoreMeta
from cvr.ops.manifest import ManifestError, atomic_directory, sha256_file, write_json_atomic

__all__ = [
    "SPLITS",
    "EncodedStore",
    "SourceFile",
    "StoreMeta",
    "StoreWriter",
]  # StoreMeta's old home

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
_ARRAYS = ("ids", "labels", "oracle")
_DTYPES = {"ids": np.int32, "labels": np.float32, "oracle": np.float32}


class StoreWriter:
    """Accumulates chunks per split into raw files, then finishes them as .npy + meta.json.

    Appending streams to disk, so peak memory stays at one chunk whatever the input size.
    """

    def __init__(self, final_path: str | Path, num_fields: int, num_labels: int) -> None:
        self.final_path = Path(final_path)
        self.num_fields = num_fields
        self.num_labels = num_labels
        self._ctx = atomic_directory(self.final_path)
        self.tmp = self._ctx.__enter__()
        self._rows: dict[str, int] = {}
        self._label_sums: dict[str, np.ndarray] = {}
        self._handles: dict[tuple[str, str], Any] = {}
        self._expected: dict[str, int] = {}
        self._digests: dict[tuple[str, str], Any] = {}

    def expect_rows(self, rows: Mapping[str, int]) -> None:
        """Say, before the first append, how many rows each split will get: the files are then
        written with their final headers and hashed as they are written, not read again."""
        if self._handles:
            raise ValueError("expect_rows: call it before the first append")
        self._expected = {s: int(n) for s, n in rows.items()}

    def append(
        self,
        split: str,
        ids: np.ndarray,
        labels: np.ndarray,
        oracle: np.ndarray | None = None,
    ) -> None:
        """ids int (n, F); labels (n, L) or (n,); oracle like labels or None."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        labels = labels.reshape(len(labels), -1)
        if ids.shape[1:] != (self.num_fields,) or labels.shape[1] != self.num_labels:
            raise ValueError(
                f"chunk shapes ids {ids.shape}, labels {labels.shape} do not match "
                f"{self.num_fields} fields and {self.num_labels} labels"
            )
        arrays = {"ids": ids, "labels": labels}
        if oracle is not None:
            arrays["oracle"] = oracle.reshape(len(oracle), -1)
        for name, arr in arrays.items():
            key = (split, name)
            if key not in self._handles:
                # The .npy itself, behind a header for 0 rows of the same width; finishing
                # rewrites the header in place (same length), so the data is written once.
                fh = open(self.tmp / f"{split}.{name}.npy", "wb")
                width = self.num_fields if name == "ids" else self.num_labels
                header = _npy_header(self._expected.get(split, 0), width, _DTYPES[name])
                fh.write(header)
                self._handles[key] = fh
                if split in self._expected:
                    self._digests[key] = hashlib.sha256(header)
            arr = np.ascontiguousarray(arr, dtype=_DTYPES[name])
            arr.tofile(self._handles[key])
            if key in self._digests:
                self._digests[key].update(arr)
        self._rows[split] = self._rows.get(split, 0) + len(ids)
        sums = labels.astype(np.float64).sum(axis=0)
        self._label_sums[split] = self._label_sums.get(split, 0) + sums

    def rewrite(
        self,
        split: str,
        name: str,
        transform: Callable[[np.ndarray, int], None],
        chunk_rows: int = 1 << 17,
    ) -> None:
        """After the last append of `split`: `transform(rows, start)` changes the array's rows
        in place, chunk by chunk (rows start..start+len), on disk; the array gets its final
        header and is hashed as it is rewritten.

        Overwriting pages already in the page cache costs a fraction of writing a new file
        (a provisional copy plus the final one). A thread reads and transforms a chunk ahead
        of the writing and hashing, through three buffers reused for the whole array.
        """
        key = (split, name)
        if key not in self._handles or key in self._digests:
            raise ValueError(f"rewrite: {split}.{name} has no appended rows to rewrite")
        self._handles[key].close()
        rows = self._rows[split]
        width = self.num_fields if name == "ids" else self.num_labels
        dtype = _DTYPES[name]
        header = _npy_header(rows, width, dtype)
        if len(header) != len(_npy_header(self._expected.get(split, 0), width, dtype)):
            raise ValueError(f"rewrite: the header of {rows} rows outgrew its placeholder")
        path = self.tmp / f"{split}.{name}.npy"
        chunk_rows = max(1, min(chunk_rows, rows))
        buffers = [np.empty((chunk_rows, width), dtype=dtype) for _ in range(3)]

        def transformed(src: BinaryIO) -> Iterator[np.ndarray]:
            for k, start in enumerate(range(0, rows, chunk_rows)):
                view = buffers[k % 3][: min(chunk_rows, rows - start)]
                if src.readinto(memoryview(view).cast("B")) != view.nbytes:
                    raise OSError(f"{path}: shorter than its {rows} rows")
                transform(view, start)
                yield view

        digest = hashlib.sha256(header)
        with open(path, "rb") as src, open(path, "r+b") as dst:
            src.seek(len(header))
            dst.write(header)
            # depth 1 with 3 buffers: the thread never refills the buffer being written
            for view in prefetch(transformed(src), depth=1, name="cvr-rewrite"):
                dst.write(memoryview(view).cast("B"))
                digest.update(view)
        self._digests[key] = digest
        self._expected[split] = rows

    def _finish_array(self, split: str, name: str, rows: int) -> str:
        width = {"ids": self.num_fields}.get(name, self.num_labels)
        out = self.tmp / f"{split}.{name}.npy"
        header = _npy_header(rows, width, _DTYPES[name])
        if not out.exists():
            out.write_bytes(header)
        elif len(header) == len(_npy_header(0, width, _DTYPES[name])):
            with open(out, "r+b") as fh:
                fh.write(header)
        else:  # a header that outgrew the placeholder (not for any real row count): copy
            tmp = out.with_suffix(".tmp")
            with open(out, "rb") as src, open(tmp, "wb") as dst:
                src.seek(len(_npy_header(0, width, _DTYPES[name])))
                dst.write(header)
                shutil.copyfileobj(src, dst, 1 << 22)
            tmp.replace(out)
        return out.name

    def finish(
        self,
        meta: StoreMeta | dict[str, Any],
        files: Mapping[str, str] | None = None,
        final_path: str | Path | None = None,
    ) -> EncodedStore:
        """Write the arrays and meta.json (merged with `meta`) and rename into place.

        `files` may list extra files already written into `self.tmp` ({name: sha256}, e.g. the
        fitted preprocessor); they are kept in meta.json's `files` next to the arrays, so opening
        the store verifies them too. `final_path`: the place, when the writer was opened at a
        `pending_store_dir` (a store whose fingerprint was known only after its pass); if a
        store is there already (a concurrent build), this copy is discarded.
        """
        for fh in self._handles.values():
            fh.close()
        if isinstance(meta, StoreMeta):
            meta = meta.to_dict()
        try:
            files = dict(files or {})
            files.update(meta.get("files", {}))
            splits = {}
            for split in SPLITS:
                rows = self._rows.get(split, 0)
                names = {n for s, n in self._handles if s == split} | {"ids", "labels"}
                for name in sorted(names):
                    digest = self._digests.get((split, name))
                    if digest is not None and rows == self._expected[split]:
                        files[f"{split}.{name}.npy"] = digest.hexdigest()  # header was final
                        continue
                    fname = self._finish_array(split, name, rows)
                    files[fname] = sha256_file(self.tmp / fname)
                sums = self._label_sums.get(split, np.zeros(self.num_labels))
                splits[split] = {
                    "rows": rows,
                    "label_rates": [float(s / rows) if rows else None for s in sums],
                }
            full_meta = {
                "format_version": FORMAT_VERSION,
                "created_unix": time.time(),
                **meta,
                "splits": splits,
                "files": files,
            }
            write_json_atomic(self.tmp / "meta.json", full_meta)
        except BaseException as exc:
            self._ctx.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self._ctx.__exit__(None, None, None)
        if final_path is not None and Path(final_path) != self.final_path:
            _move_into_place(self.final_path, Path(final_path))
            self.final_path = Path(final_path)
        return EncodedStore.open(self.final_path, verify=False)

    def abort(self) -> None:
        """Discard everything written so far."""
        for fh in self._handles.values():
            fh.close()
        err = RuntimeError("store write aborted")
        try:
            self._ctx.__exit__(RuntimeError, err, None)
        except RuntimeError:
            pass


def pending_store_dir(cache_root: str | Path, name: str) -> Path:
    """A unique hidden place for a store whose fingerprint is not known yet (its name ends like
    a temporary's, so an abandoned one is found by `cvr.ops.temporaries`)."""
    return Path(cache_root) / f".{name}.pending.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _move_into_place(done: Path, final: Path) -> None:
    """Rename the finished store `done` to `final`, or drop it if `final` exists already."""
    try:
        if not final.exists():
            os.replace(done, final)
            return
    except OSError:  # a concurrent build renamed its copy there first
        if not final.exists():
            raise
    shutil.rmtree(done, ignore_errors=True)


def _npy_header(rows: int, width: int, dtype: Any) -> bytes:
    """The .npy (format 1.0) header of a C-order (rows, width) array of `dtype`."""
    header = np.lib.format.header_data_from_array_1_0(np.empty((0, width), dtype))
    header["shape"] = (rows, width)
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue()


class EncodedStore:
    """Read side of a store directory: memory-mapped arrays plus meta.json."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.meta = meta

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> EncodedStore:
        """Open a store; with `verify`, refuse it if any array's sha256 differs from meta.json."""
        path = Path(path)
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: not an encoded store (meta.json missing)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ManifestError(
                f"{meta_path}: format_version {meta.get('format_version')} != {FORMAT_VERSION}"
            )
        for fname, expected in meta["files"].items():
            fpath = path / fname
            if not fpath.is_file():
                raise ManifestError(f"{fpath}: listed in meta.json but missing")
            if verify and sha256_file(fpath) != expected:
                raise ManifestError(f"{fpath}: sha256 differs from meta.json (file changed)")
        return cls(path, meta)

    # --- metadata -------------------------------------------------------------------------
    @property
    def info(self) -> StoreMeta:
        """meta.json as a typed StoreMeta (the one place that reads its keys)."""
        return StoreMeta.from_dict(self.meta)

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def cardinalities(self) -> list[int]:
        return [int(c) for c in self.meta["cardinalities"]]

    @property
    def field_names(self) -> list[str]:
        return [f["name"] for f in self.meta["fields"]]

    @property
    def sides(self) -> list[str]:
        return [f.get("side", "context") for f in self.meta["fields"]]

    @property
    def label_names(self) -> list[str]:
        return list(self.meta["labels"])

    def rows(self, split: str) -> int:
        return int(self.meta["splits"][split]["rows"])

    # --- arrays ---------------------------------------------------------------------------
    def _load(self, split: str, name: str) -> np.ndarray | None:
        fpath = self.path / f"{split}.{name}.npy"
        if not fpath.is_file():
            return None
        return np.load(fpath, mmap_mode="r")

    def ids(self, split: str) -> np.ndarray:
        """int32 (rows, F), memory-mapped."""
        return self._load(split, "ids")

    def labels(self, split: str, label: str | None = None) -> np.ndarray:
        """float32 (rows,) for `label` (default: the first label column), memory-mapped."""
        col = self._label_column(label)
        return self._load(split, "labels")[:, col]

    def oracle(self, split: str, label: str | None = None) -> np.ndarray | None:
        """True probabilities float32 (rows,) where the data are synthetic, else None."""
        arr = self._load(split, "oracle")
        return None if arr is None else arr[:, self._label_column(label)]

    def _label_column(self, label: str | None) -> int:
        names = self.label_names
        if label is None:
            return 0
        if label not in names:
            raise KeyError(f"label {label!r} not in store {self.path}; it has {names}")
        return names.index(label)


def store_dir(cache_root: str | Path, name: str, fingerprint: str) -> Path:
    """Where a store with this fingerprint lives under the cache root."""
    return Path(cache_root) / f"{name}-{fingerprint[:16]}"


def open_cached(path: Path, fingerprint: str) -> EncodedStore | None:
    """The store at `path` if it exists, is intact and has this fingerprint; else None."""
    if not (path / "meta.json").is_file():
        return None
    try:
        store = EncodedStore.open(path, verify=True)
    except (ManifestError, ValueError, KeyError, json.JSONDecodeError):
        return None
    return store if store.fingerprint == fingerprint else None


def field_meta(names: Sequence[str], kinds: Sequence[str], sides: Sequence[str]) -> list[dict]:
    return [{"name": n, "kind": k, "side": s} for n, k, s in zip(names, kinds, sides, strict=True)]
