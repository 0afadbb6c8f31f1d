"""Predictor: raw records in, conversion probabilities out, through the training preprocessing.

    predictor = Predictor.load("outputs/bundles/ffm")      # verifies the bundle's checksums
    predictor.predict({"C1": "68fd1e64", "I1": 3})         # float64 (1,)
    predictor.predict([record, record, ...])               # float64 (n,)
    predictor.predict(dataframe)                           # one column per field name
    predictor.predict("day_0.tsv")                         # a file in the dataset's format

Raw values become ids through the bundle's fitted `Preprocessor` only (`transform_record` for
dicts, `transform_records` for DataFrames, `transform` for files): there is no second encoding
here. An unseen category maps to its field's OOV id 0, a missing field or None to the missing id
0; keys that are not field names are ignored. A value the preprocessing cannot take raises a
`DataError` that names the field (and the record's position in a list).

Scoring goes through the backend `cvr.backends.select_backend` picks (the fused numba kernels
for FM/FFM models with plain tables, else the model's forward pass under `torch.inference_mode`),
the same choice the training run's efficiency profile timed. The fused kernels reuse scratch
buffers: use one Predictor per thread.
"""

from __future__ import annotations

import logging
import os
import reprlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from cvr.backends import select_backend
from cvr.data.errors import DataError
from cvr.data.readers import open_reader
from cvr.funnel_metrics import HEADS
from cvr.models.esmm import ESMM, ctcvr_logit
from cvr.serving.bundle import Bundle, load_bundle

log = logging.getLogger(__name__)

BACKENDS = ("auto", "fused", "torch")
# What pyarrow and pandas raise for values they cannot convert; turned into DataErrors that name
# the field, so callers only ever see DataError (a ValueError) for bad input.
_CONVERSION_ERRORS = (pa.ArrowException, ArithmeticError, TypeError, ValueError)
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60  # values in messages are cut to a readable length

#: Lists at least this long are encoded as one frame (below, a record at a time is faster).
_VECTORIZE_FROM = 64
_EXACT_FLOAT_INT = 2**53
#: Rows per forward pass when the tables come from a vector store (see `logits`).
_STORE_CHUNK = 128

Records = Mapping[str, Any] | Sequence[Mapping[str, Any]] | pd.DataFrame | str | os.PathLike


class Predictor:
    """Scores raw records with a loaded bundle; see the module docstring."""

    def __init__(self, bundle: Bundle, backend: str = "auto") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.bundle = bundle
        self.model = bundle.model.eval()
        self.preprocessor = bundle.preprocessor
        self.field_names = bundle.schema.field_names
        self._cardinalities = np.asarray(self.preprocessor.cardinalities, dtype=np.int64)
        # The same choice training's profiler makes (cvr.backends), so logged latency is ours.
        requested = "autograd" if backend == "torch" else backend
        self._scorer, reason = select_backend(self.model, requested, device="cpu")
        log.debug("scoring backend: %s", reason)
        self.backend = "fused" if self._scorer.name == "fused" else "torch"
        self.store_tables = None  # the vector-store tables, when loaded with embeddings=

    @classmethod
    def load(
        cls,
        bundle_dir: str | Path,
        verify: bool = True,
        backend: str = "auto",
        embeddings: str | None = None,
        cache_bytes: int = 0,
        hot_ids: np.ndarray | None = None,
    ) -> Predictor:
        """Load and verify a bundle directory (ManifestError if any file differs).

        `embeddings="milvus:URI[#alias]"` reads the tables from a published collection instead
        (a hot-row cache of `cache_bytes`; with `hot_ids`, global feature ids hottest first,
        e.g. `cvr.vectorstore.table.hot_ids_by_count`, the cache is filled with the hottest
        rows that fit and kept fixed); see `cvr.vectorstore.table`.
        """
        if embeddings is None:
            return cls(load_bundle(bundle_dir, verify=verify), backend=backend)
        if backend == "fused":
            raise ValueError("backend=fused: the fused kernels need in-process tables")
        from cvr.vectorstore.table import attach_store_tables

        # The tables come from the store: the bundle's are never materialised in this process.
        bundle = load_bundle(bundle_dir, verify=verify, tables=False)
        tables = attach_store_tables(bundle, embeddings, cache_bytes=cache_bytes, hot_ids=hot_ids)
        predictor = cls(bundle, backend="torch")  # the model's forward over the fetched rows
        predictor.store_tables = tables
        return predictor

    # --- scoring --------------------------------------------------------------------------------
    def predict(self, records: Records) -> np.ndarray:
        """Probabilities float64 (n,), one per record, in input order (n = 0 gives (0,))."""
        ids = self.encode(records)
        probs = self.predict_ids(ids, check=False)
        if len(probs) != len(ids):  # a guard on the kernels' contract: never a silent mismatch
            raise RuntimeError(f"scored {len(probs)} rows for {len(ids)} records")
        return probs

    def predict_ids(self, ids: np.ndarray, check: bool = True) -> np.ndarray:
        """Probabilities float64 (n,) of field-local ids int (n, F): the model alone.

        An ESMM bundle's probability is pCTCVR (that an impression is clicked and converts);
        `predict_heads` gives its pCTR, pCVR and pCTCVR.
        """
        probs = _sigmoid(self.logits(ids, check=check))
        return probs[:, 1] if probs.ndim == 2 else probs  # ESMM: [pCTR, pCTCVR] columns

    @property
    def heads(self) -> tuple[str, ...]:
        """The columns of `predict_heads`: pctr, pcvr, pctcvr for ESMM, else probability."""
        return HEADS if isinstance(self.model, ESMM) else ("probability",)

    def predict_heads(self, records: Records) -> dict[str, np.ndarray]:
        """{head: float64 (n,)} per record, in input order (see `heads`). ESMM scores its towers
        on the model's forward path (it has no fused kernels); each head is its own number, so
        ranking or retrieval by one head is a choice of that head."""
        ids = self.encode(records)
        if not isinstance(self.model, ESMM):
            return {"probability": self.predict_ids(ids, check=False)}
        with torch.inference_mode():
            heads = self.model.head_logits(torch.from_numpy(np.ascontiguousarray(ids)))
        ctr, cvr = heads[:, 0], heads[:, 1]
        logits = {"pctr": ctr, "pcvr": cvr, "pctcvr": ctcvr_logit(ctr, cvr)}
        return {name: _sigmoid(logits[name].numpy()) for name in HEADS}

    def logits(self, ids: np.ndarray, check: bool = True) -> np.ndarray:
        """Logits float32 (n,) of field-local ids int (n, F); `check` validates shape and range."""
        ids = np.ascontiguousarray(ids, dtype=np.int32)
        if not ids.flags.writeable:  # a memory-mapped store: torch.from_numpy warns on those
            ids = ids.copy()
        if check:
            self._check_ids(ids)
        if len(ids) == 0:
            return np.zeros(0, dtype=np.float32)
        if self.store_tables is not None and len(ids) > _STORE_CHUNK:
            # One lookup of the batch's rows, then the forward pass in chunks: its (B, F, F*k)
            # gathers stay small (the fused kernels need no chunks: they never build them).
            with self.store_tables.prefetched(ids):
                parts = [
                    self._scorer.logits(torch.from_numpy(ids[lo : lo + _STORE_CHUNK])).numpy()
                    for lo in range(0, len(ids), _STORE_CHUNK)
                ]
            return np.concatenate(parts)
        return self._scorer.logits(torch.from_numpy(ids)).numpy()

    def _check_ids(self, ids: np.ndarray) -> None:
        if ids.ndim != 2 or ids.shape[1] != len(self._cardinalities):
            expected = f"(n, {len(self._cardinalities)})"
            raise ValueError(f"ids: expected shape {expected}, got {ids.shape}")
        bad = (ids < 0) | (ids >= self._cardinalities)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(
                f"ids: field {self.field_names[col]!r} has id {ids[row, col]} in row {row}, "
                f"outside [0, {self._cardinalities[col]})"
            )

    # --- encoding -------------------------------------------------------------------------------
    def encode(self, records: Records) -> np.ndarray:
        """Field-local ids int32 (n, F) of raw records (any input `predict` takes)."""
        if isinstance(records, pd.DataFrame):
            return self._encode_frame(records)
        if isinstance(records, str | os.PathLike):
            return self._encode_file(Path(records))
        if isinstance(records, Mapping):
            return self._encode_dicts([records], numbered=False)
        if isinstance(records, list | tuple):
            return self._encode_dicts(records, numbered=True)
        raise DataError(
            "records: expected a dict, a list of dicts, a DataFrame or a file path, got "
            f"{type(records).__name__}"
        )

    def _encode_dicts(self, records: Sequence[Any], numbered: bool) -> np.ndarray:
        if len(records) >= _VECTORIZE_FROM and all(isinstance(r, Mapping) for r in records):
            # One DataFrame, encoded column-wise: building it is most of the cost (100k rows,
            # 6 fields: 0.35 s against 1.28 s a record at a time; scripts/bench_predictor.py).
            frame = _exact_frame(records, self.field_names)
            try:
                return self.preprocessor.transform_records(frame)
            except (DataError, *_CONVERSION_ERRORS):
                pass  # mixed types in a column, or a bad value: per record, naming it
        return self._encode_each(records, numbered)

    def _encode_each(self, records: Sequence[Any], numbered: bool) -> np.ndarray:
        out = np.empty((len(records), len(self.field_names)), dtype=np.int32)
        for i, record in enumerate(records):
            where = f"record {i}: " if numbered else ""
            if not isinstance(record, Mapping):
                raise DataError(
                    f"{where}expected a dict of field name -> value, got {type(record).__name__}"
                )
            try:
                out[i] = self.preprocessor.transform_record(record)
            except DataError as exc:
                raise DataError(f"{where}{exc}") from None
            except _CONVERSION_ERRORS as exc:
                error = _field_error(exc, record, self.field_names, self._encode_one_value)
                raise DataError(f"{where}{error}") from None
        return out

    def _encode_frame(self, frame: pd.DataFrame) -> np.ndarray:
        if len(frame) == 0:
            return np.zeros((0, len(self.field_names)), dtype=np.int32)
        duplicated = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
        if duplicated:
            raise DataError(f"records: duplicate columns {duplicated}")
        try:
            return self.preprocessor.transform_records(frame)
        except DataError:
            raise
        except _CONVERSION_ERRORS as exc:
            columns = {name: frame[name] for name in self.field_names if name in frame.columns}
            raise _field_error(exc, columns, self.field_names, self._encode_one_column) from None

    def _encode_one_value(self, name: str, value: Any) -> np.ndarray:
        return self.preprocessor.transform_record({name: value})

    def _encode_one_column(self, name: str, column: pd.Series) -> np.ndarray:
        return self.preprocessor.transform_records(column.to_frame(name))

    def _encode_file(self, path: Path) -> np.ndarray:
        """Ids of every row of a file read by the dataset's reader (labels are read, unused)."""
        if not path.is_file():  # the reader's message names a config key, meaningless here
            raise FileNotFoundError(f"{path}: no such file to score")
        reader = self.bundle.reader
        rows = open_reader(
            reader["format"], path, self.bundle.schema, on_error="raise", **reader["options"]
        )
        parts = [self.preprocessor.transform(batch) for batch in rows]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.field_names)), np.int32)

    # --- examples -------------------------------------------------------------------------------
    def example_records(self, n: int = 3, seed: int = 0) -> list[dict[str, Any]]:
        """n raw records drawn from the fitted encoders (for input examples and benchmarks).

        Categories come from each field's vocabulary (the most frequent 1000), hashed fields get
        made-up strings, numbers are log-normal integers; about one value in ten is missing.
        """
        rng = np.random.default_rng(seed)
        out: list[dict[str, Any]] = [{} for _ in range(n)]
        for enc in self.preprocessor.encoders or []:
            for record in out:
                if rng.random() < 0.1:
                    record[enc.name] = None
                elif enc.kind == "numeric":
                    record[enc.name] = float(np.floor(rng.lognormal(1.0, 2.0)))
                elif enc.vocab:
                    record[enc.name] = enc.vocab[int(rng.integers(min(len(enc.vocab), 1000)))]
                else:
                    record[enc.name] = f"v{int(rng.integers(1 << 20)):x}"
        return out


def _exact_frame(records: Sequence[Mapping[str, Any]], names: Sequence[str]) -> pd.DataFrame:
    """The records as a DataFrame (one column per field name) that lost no value.

    pandas stores integers beside None as float64, exact only up to 2**53; such columns are
    rebuilt as Python objects so a large integer category keeps its exact value.
    """
    frame = pd.DataFrame(records, columns=list(names))
    for name in names:
        column = frame[name]
        if column.dtype.kind == "f" and bool((column.abs() > _EXACT_FLOAT_INT).any()):
            frame[name] = pd.Series([r.get(name) for r in records], dtype=object)
    return frame


def _field_error(
    exc: Exception,
    values: Mapping[str, Any],
    field_names: Sequence[str],
    encode_field: Callable[[str, Any], Any],
) -> DataError:
    """A DataError naming the first field whose values alone reproduce a conversion error."""
    for name in field_names:
        if name not in values:
            continue
        try:
            encode_field(name, values[name])
        except DataError as field_exc:
            return DataError(str(field_exc))
        except _CONVERSION_ERRORS as field_exc:
            return DataError(
                f"field {name!r}: cannot encode {_REPR.repr(values[name])} "
                f"({type(field_exc).__name__}: {field_exc})"
            )
    return DataError(f"records: cannot encode ({type(exc).__name__}: {exc})")


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    """float64 logistic of float logits, without overflow for any finite or infinite input."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
