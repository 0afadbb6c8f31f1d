"""One pass over the data: every row encoded to provisional ids, the vocabulary fitted at the end.

Fitting the vocabulary on train and then encoding every split would read the files twice. Here
each field's values get provisional ids in first-seen order (`cvr.data.vocab` tables) while the
rows are written. The train counts of each provisional id give the vocabulary exactly as
`Preprocessor.fit` would (count >= min_count, descending count, then value), and quantile fields
keep their float values until the boundaries are known. Then:

- where a batch's split codes come with it (random and per-file splits) and the encoder has the
  store's writer, its rows go straight into their split's array, labels final, and a last pass
  remaps each ids array in place (`StoreWriter.rewrite`): every id is written to a new file once;
- otherwise (a time split: codes known at the end) the rows wait in raw files inside the store's
  temporary directory, in file order, with their labels and codes, and a last streaming pass
  remaps the ids and appends each row to its split.

Tests hold the result equal to `Preprocessor.fit` + `transform` on the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from cvr.data.arrow_numpy import from_numpy, from_strings, to_numpy
from cvr.data.log_table import LogTable
from cvr.data.prefetch import prefetch
from cvr.data.preprocess import FieldEncoder, Preprocessor
from cvr.data.remap import remap_in_place, remap_split_rows, remap_table
from cvr.data.store import SPLITS, StoreWriter
from cvr.data.value_rules import (
    QUANTILE_SAMPLE,
    StrideSample,
    criteo_log_keys,
    criteo_log_name,
    numbers_of,
    quantile_boundaries,
    quantile_ids,
    stable_hash,
)
from cvr.data.vocab import StringTable, count_ids, hash_strings

TRAIN = 0
_SCATTER_ROWS = 1 << 17


class OnePassEncoder:
    """Encode batches as they stream past; `fit()` then `write(writer)` (see module docstring)."""

    def __init__(
        self, pre: Preprocessor, tmp: Path, num_labels: int, writer: StoreWriter | None = None
    ) -> None:
        """`writer`: the store's, for batches that come with their split codes (see the module
        docstring); `write` must then be given the same writer."""
        self.pre = pre
        self.writer = writer
        self.encoders = pre.blank_encoders()
        self.tmp = Path(tmp)
        self.num_labels = num_labels
        # One StringTable per categorical source column (readers that take `vocab_tables` fill
        # them as they read), one LogTable per criteo_log field; counts[j]: train rows per
        # provisional id of field j.
        self.string_tables: dict[str, StringTable] = {}
        self.tables: dict[int, StringTable | LogTable] = {}
        self.counts: dict[int, np.ndarray] = {}
        self.quantile: dict[int, int] = {}  # field -> column of the quantile values file
        for j, enc in enumerate(self.encoders):
            if enc.rule == "quantile":
                self.quantile[j] = len(self.quantile)
            elif enc.rule == "vocab":
                if enc.kind == "categorical":
                    self.tables[j] = self.string_tables.setdefault(enc.source, StringTable())
                else:
                    self.tables[j] = LogTable()
                self.counts[j] = np.zeros(1 << 10, dtype=np.int64)
        # A reader hands back provisional ids instead of strings, so only columns that no
        # other rule reads (a hash field on the same column needs its strings) go to readers.
        other = {e.source for e in self.encoders if (e.rule, e.kind) != ("vocab", "categorical")}
        self.vocab_tables = {c: t for c, t in self.string_tables.items() if c not in other}
        self.samples = {j: StrideSample(QUANTILE_SAMPLE) for j in self.quantile}
        self.rows = 0
        self.train_rows = 0
        self.split_rows = np.zeros(len(SPLITS), dtype=np.int64)
        names = ("ids", "labels", "codes", "quantile") if writer is None else ()
        if writer is not None and self.quantile:
            names = tuple(f"quantile.{split}" for split in SPLITS)
        self._files = {name: open(self.tmp / f"encode.{name}.raw", "wb") for name in names}
        self._remaps: dict[int, np.ndarray] = {}
        self.fitted: Preprocessor | None = None

    # --- the pass -------------------------------------------------------------------------------
    def add(self, batch: pa.RecordBatch, codes: np.ndarray | None) -> None:
        """Encode one reader batch; `codes` are its split codes, or None until `set_codes`."""
        n = batch.num_rows
        # Column by column into column-major memory (each column one contiguous write); rows
        # become C order where they are grouped by split or written.
        ids = np.empty((len(self.encoders), n), dtype=np.int32).T
        qvalues = np.empty((n, len(self.quantile)), dtype=np.float64)
        for j, enc in enumerate(self.encoders):
            col = batch.column(enc.source)
            if enc.rule == "quantile":
                qvalues[:, self.quantile[j]] = numbers_of(col)
            elif enc.rule == "hash":
                ids[:, j] = self._hash_ids(enc, col)
            elif enc.kind == "numeric":
                ids[:, j] = self.tables[j].encode(numbers_of(col))
            elif pa.types.is_int32(col.type):  # provisional ids: looked up by the reader
                ids[:, j] = to_numpy(col)
            else:
                ids[:, j] = self.tables[j].encode(col)
        labels = np.column_stack(
            [to_numpy(batch.column(lbl)) for lbl in self.pre.schema.labels]
        ).astype(np.float32)
        if self.writer is not None:
            if codes is None:
                raise ValueError("an encoder given the store's writer needs each batch's codes")
            self._fit_rows(ids, qvalues, np.asarray(codes) == TRAIN)
            self._append_by_split(ids, labels, qvalues, np.asarray(codes, dtype=np.int8))
            self.rows += n
            return
        ids.tofile(self._files["ids"])
        labels.tofile(self._files["labels"])
        if self.quantile:
            qvalues.tofile(self._files["quantile"])
        if codes is not None:
            np.asarray(codes, dtype=np.int8).tofile(self._files["codes"])
            self.split_rows += np.bincount(codes, minlength=len(SPLITS))[: len(SPLITS)]
            self._fit_rows(ids, qvalues, np.asarray(codes) == TRAIN)
        self.rows += n

    def _append_by_split(
        self, ids: np.ndarray, labels: np.ndarray, qvalues: np.ndarray, codes: np.ndarray
    ) -> None:
        """The batch's rows appended to their splits' arrays (provisional ids), file order kept;
        quantile values to their split's raw file in the same order."""
        grouped, grouped_labels, bounds = remap_split_rows(ids, labels, codes, {}, len(SPLITS))
        self.split_rows += np.diff(bounds)
        order = np.argsort(codes, kind="stable") if self.quantile else None
        for c, split in enumerate(SPLITS):
            a, b = int(bounds[c]), int(bounds[c + 1])
            if b > a:
                self.writer.append(split, grouped[a:b], grouped_labels[a:b])
                if order is not None:
                    qvalues[order[a:b]].tofile(self._files[f"quantile.{split}"])

    @staticmethod
    def _hash_ids(enc: FieldEncoder, col: pa.Array) -> np.ndarray:
        if enc.kind == "categorical":
            h = hash_strings(col)
            ids = 1 + (h % np.uint64(enc.hash_buckets))
            return np.where(to_numpy(col.is_null()), 0, ids)
        values = numbers_of(col)
        keys, inverse = np.unique(criteo_log_keys(values), return_inverse=True)
        names = from_strings([criteo_log_name(k) for k in keys.tolist()])
        unique_ids = 1 + (stable_hash(names) % np.uint64(enc.hash_buckets))
        return np.where(np.isnan(values), 0, unique_ids[inverse.reshape(-1)])

    def _fit_rows(self, ids: np.ndarray, qvalues: np.ndarray, train: np.ndarray) -> None:
        """Count the train rows' provisional ids and sample their quantile values."""
        if not train.any():
            return
        self.train_rows += int(train.sum())
        for j, table in self.tables.items():
            # len(table) bounds these rows' ids (a reader thread may be adding more already).
            need = len(table) + 1
            if len(self.counts[j]) < need:
                grown = np.zeros(max(need, 2 * len(self.counts[j])), dtype=np.int64)
                grown[: len(self.counts[j])] = self.counts[j]
                self.counts[j] = grown
            count_ids(ids, j, train, self.counts[j])
        for j, q in self.quantile.items():
            values = qvalues[train, q]
            self.samples[j].add(values[~np.isnan(values)])

    def set_codes(self, codes: np.ndarray) -> None:
        """Split codes of every row, known only after the pass (time split): fit from the files."""
        if self.writer is not None:
            raise ValueError("set_codes: this encoder's rows went to their splits as they came")
        if len(codes) != self.rows:
            raise ValueError(f"{len(codes)} split codes for {self.rows} rows")
        np.asarray(codes, dtype=np.int8).tofile(self._files["codes"])
        self.split_rows += np.bincount(codes, minlength=len(SPLITS))[: len(SPLITS)]
        self._close()
        for ids, _, qvalues, chunk_codes in self._chunks():
            self._fit_rows(ids, qvalues, chunk_codes == TRAIN)

    # --- the end --------------------------------------------------------------------------------
    def fit(self) -> Preprocessor:
        """The fitted Preprocessor, from the train counts and samples gathered."""
        self._close()
        encoders = self.encoders
        for j, table in self.tables.items():
            counts = np.zeros(len(table) + 1, dtype=np.int64)
            seen = self.counts[j][: len(counts)]
            counts[: len(seen)] = seen
            if isinstance(table, StringTable):
                values = table.values()
            else:
                values = from_strings([criteo_log_name(k) for k in table.values().tolist()])
            vocab, remap = final_ids(values, counts[1:], encoders[j].min_count)
            encoders[j].vocab = vocab
            self._remaps[j] = remap
        for j, sample in self.samples.items():
            buckets = int(self.pre.config.get("buckets", encoders[j].name))
            encoders[j].boundaries = quantile_boundaries(sample.values, buckets)
        self.fitted = Preprocessor.from_encoders(self.pre.schema, self.pre.config, encoders)
        return self.fitted

    def write(self, writer: StoreWriter) -> None:
        """Remap the provisional ids and append every row to its split, in file order: the
        remapping runs a chunk ahead in a thread of its own, the writing (and hashing) here.
        With the store's writer (see `__init__`): each split's ids remapped in place."""
        if self.writer is not None:
            if writer is not self.writer:
                raise ValueError("write: not the writer this encoder appended to")
            self._rewrite_in_place()
            return
        writer.expect_rows(dict(zip(SPLITS, self.split_rows.tolist(), strict=True)))
        for parts in prefetch(self._remapped(), depth=1, name="cvr-remap"):
            for split, ids, labels in parts:
                writer.append(split, ids, labels)
        for name in self._files:
            (self.tmp / f"encode.{name}.raw").unlink(missing_ok=True)

    def _rewrite_in_place(self) -> None:
        """Each split's provisional ids remapped (and quantile ids filled in) in place."""
        table = remap_table(len(self.encoders), self._remaps)
        for c, split in enumerate(SPLITS):
            if not self.split_rows[c]:
                continue
            qfile = None
            if self.quantile:
                qfile = open(self.tmp / f"encode.quantile.{split}.raw", "rb")

            def transform(ids: np.ndarray, start: int, qfile=qfile) -> None:
                if qfile is not None:
                    width = len(self.quantile)
                    qvalues = np.fromfile(qfile, dtype=np.float64, count=len(ids) * width)
                    qvalues = qvalues.reshape(len(ids), width)
                    for j, q in self.quantile.items():
                        ids[:, j] = quantile_ids(self.encoders[j].boundaries, qvalues[:, q])
                remap_in_place(ids, table)

            try:
                self.writer.rewrite(split, "ids", transform, _SCATTER_ROWS)
            finally:
                if qfile is not None:
                    qfile.close()
        for name in self._files:
            (self.tmp / f"encode.{name}.raw").unlink(missing_ok=True)

    def _remapped(self) -> Iterator[list[tuple[str, np.ndarray, np.ndarray]]]:
        """Per chunk of the raw files: (split, final ids, labels) of its rows, split by split."""
        for ids, labels, qvalues, codes in self._chunks():
            for j, q in self.quantile.items():
                ids[:, j] = quantile_ids(self.encoders[j].boundaries, qvalues[:, q])
            out, out_labels, bounds = remap_split_rows(
                ids, labels, codes, self._remaps, len(SPLITS)
            )
            yield [
                (split, out[a:b], out_labels[a:b])
                for split, a, b in zip(SPLITS, bounds[:-1], bounds[1:], strict=True)
                if b > a
            ]

    def _chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """The raw files back in chunks of rows, read (not memory-mapped: mapped pages would
        count as resident and grow with the input)."""
        widths = {
            "ids": (np.int32, len(self.encoders)),
            "labels": (np.float32, self.num_labels),
            "quantile": (np.float64, len(self.quantile)),
            "codes": (np.int8, 1),
        }
        handles = {name: open(self.tmp / f"encode.{name}.raw", "rb") for name in widths}
        try:
            for start in range(0, self.rows, _SCATTER_ROWS):
                n = min(_SCATTER_ROWS, self.rows - start)
                out = {}
                for name, (dtype, width) in widths.items():
                    arr = np.fromfile(handles[name], dtype=dtype, count=n * width)
                    out[name] = arr.reshape(n, width) if name != "codes" else arr
                yield out["ids"], out["labels"], out["quantile"], out["codes"]
        finally:
            for fh in handles.values():
                fh.close()

    def _close(self) -> None:
        for fh in self._files.values():
            fh.close()

    def abort(self) -> None:
        self._close()


def final_ids(values: pa.Array, counts: np.ndarray, min_count: int) -> tuple[list[str], np.ndarray]:
    """(vocabulary, remap) from provisional values and their train counts.

    The vocabulary is the values counted at least `min_count` times, by descending count then by
    value (byte order), as `Preprocessor.fit` orders it; remap[provisional id] is the final id
    (0 for dropped values and for the missing id 0).
    """
    kept = np.flatnonzero(counts >= max(int(min_count), 1))
    kept_ids = from_numpy(kept)
    table = pa.table({"v": values.take(kept_ids), "c": from_numpy(counts[kept]), "i": kept_ids})
    table = table.sort_by([("c", "descending"), ("v", "ascending")])
    remap = np.zeros(len(counts) + 1, dtype=np.int32)
    remap[to_numpy(table["i"]) + 1] = np.arange(1, len(kept) + 1, dtype=np.int32)
    return table["v"].to_pylist(), remap
