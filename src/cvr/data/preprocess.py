"""Preprocessor: raw field values -> field-local int32 ids, fitted on the train split only.

Every field has its own id space, and id 0 is that field's OOV-or-missing bucket: a missing
value, a value unseen in training, and a value seen fewer than `min_count` times all map to 0.

How a field becomes ids (`encoders` in the saved JSON):

- categorical fields: a vocabulary of the train values seen at least `min_count` times, with ids
  1..n ordered by descending count, then by value (byte order), so a refit gives the same ids.
- numeric fields turn into categories first, by their rule (`numeric_rule`):
  - `criteo_log` (the Criteo winners' rule): v > 2 becomes category `L{floor(log(v)^2)}`;
    v <= 2 keeps its own integer value `V{floor(v)}` (distinct prefixes, so the two kinds never
    collide); the categories then go through a vocabulary like a categorical field.
  - `quantile`: `buckets` buckets with boundaries b at the train quantiles (ties merge buckets);
    bucket k holds (b[k-1], b[k]] (right-closed, so a heavy minimum such as many zeros fills
    bucket 0); ids are 1 + k, in the order of the values. No vocabulary, no min_count.
- `hash_buckets`: a field with a bucket count skips the vocabulary: its category string is hashed
  (64-bit FNV-1a over the UTF-8 bytes, then the splitmix64 finalizer; stable across processes and
  platforms) into ids 1..buckets. Applies to categorical and criteo_log fields; min_count is unused.

Settings `min_count`, `numeric_rule`, `buckets` and `hash_buckets` take one value for every field
or a mapping {field name: value} (fields not in the mapping get the default).

Input batches are what `cvr.data.readers` yields: categorical columns as strings, numeric columns
as float64, named by the field's source column; null is missing. Raw serving records (dicts,
DataFrames) are coerced into such batches by `cvr.data.records`. The rules themselves (the
stable hash, criteo_log, quantile buckets) are `cvr.data.value_rules`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cvr.data.errors import DataError
from cvr.data.records import plain_category, plain_number, records_batch
from cvr.data.schema import Schema, SchemaError
from cvr.data.value_rules import (
    QUANTILE_SAMPLE,
    StrideSample,
    criteo_log_categories,
    criteo_log_keys,
    criteo_log_name,
    numbers_of,
    quantile_boundaries,
    quantile_ids,
    stable_hash,
    stable_hash_one,
)

if TYPE_CHECKING:
    import pandas as pd

FORMAT_VERSION = 1
NUMERIC_RULES = ("criteo_log", "quantile")
_DEFAULTS: dict[str, Any] = {
    "min_count": 1,
    "numeric_rule": "criteo_log",
    "buckets": 10,
    "hash_buckets": None,
}
# Pending (value, count) pairs per field before they are merged by a group-by.
_COMPACT_AT = 1 << 22

# --- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PreprocessConfig:
    """`data.preprocess`: each setting is one value or a mapping {field name: value}."""

    min_count: int | Mapping[str, int] = 1
    numeric_rule: str | Mapping[str, str] = "criteo_log"
    buckets: int | Mapping[str, int] = 10
    hash_buckets: int | Mapping[str, int] | None = None

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | None) -> PreprocessConfig:
        cfg = dict(cfg or {})
        unknown = sorted(set(cfg) - set(_DEFAULTS))
        if unknown:
            raise SchemaError(
                f"data.preprocess: unknown keys {unknown}; expected some of {sorted(_DEFAULTS)}"
            )
        plain = {k: dict(v) if isinstance(v, Mapping) else v for k, v in cfg.items()}
        return cls(**plain)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def get(self, key: str, name: str) -> Any:
        """The setting `key` for field `name`."""
        value = getattr(self, key)
        if isinstance(value, Mapping):
            return value.get(name, _DEFAULTS[key])
        return value

    def check(self, schema: Schema) -> None:
        """Raise SchemaError naming the config key of the first impossible setting."""
        names = set(schema.field_names)
        for key in _DEFAULTS:
            value = getattr(self, key)
            if isinstance(value, Mapping) and not set(value) <= names:
                raise SchemaError(
                    f"data.preprocess.{key}: unknown fields {sorted(set(value) - names)}"
                )
        for f in schema.fields:
            min_count, rule = self.get("min_count", f.name), self.get("numeric_rule", f.name)
            buckets, hashed = self.get("buckets", f.name), self.get("hash_buckets", f.name)
            if not _is_int(min_count) or min_count < 1:
                raise SchemaError(f"data.preprocess.min_count: expected >= 1, got {min_count!r}")
            if rule not in NUMERIC_RULES:
                raise SchemaError(
                    f"data.preprocess.numeric_rule: expected one of {NUMERIC_RULES}, got {rule!r}"
                )
            if not _is_int(buckets) or buckets < 1:
                raise SchemaError(f"data.preprocess.buckets: expected >= 1, got {buckets!r}")
            if hashed is not None and (not _is_int(hashed) or hashed < 1):
                raise SchemaError(
                    f"data.preprocess.hash_buckets: expected null or >= 1, got {hashed!r}"
                )


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


# --- per-field encoders ----------------------------------------------------------------------


@dataclass
class FieldEncoder:
    """How one field becomes ids; `rule` is "vocab", "hash" or "quantile"."""

    name: str
    source: str
    kind: str
    rule: str
    numeric_rule: str | None = None
    min_count: int = 1
    hash_buckets: int | None = None
    boundaries: list[float] | None = None
    vocab: list[str] = field(default_factory=list)

    @property
    def cardinality(self) -> int:
        """Number of ids including 0."""
        if self.rule == "hash":
            return int(self.hash_buckets) + 1
        if self.rule == "quantile":
            return len(self.boundaries or []) + 2
        return len(self.vocab) + 1


class _Counts:
    """Running value counts of one field, merged in Arrow (no Python loop over values)."""

    def __init__(self) -> None:
        self.parts: list[pa.Table] = []
        self.pending = 0

    def add(self, strings: pa.Array) -> None:
        vc = pc.value_counts(strings.drop_null() if strings.null_count else strings)
        table = pa.table({"v": vc.field("values").cast(pa.large_string()), "c": vc.field("counts")})
        self.parts.append(table)
        self.pending += len(table)
        if self.pending > _COMPACT_AT:
            self.parts = [self._merged()]
            self.pending = len(self.parts[0])

    def _merged(self) -> pa.Table:
        if not self.parts:
            return pa.table({"v": pa.array([], pa.large_string()), "c": pa.array([], pa.int64())})
        table = pa.concat_tables(self.parts)
        return table.group_by("v").aggregate([("c", "sum")]).rename_columns(["v", "c"])

    def vocab(self, min_count: int) -> list[str]:
        table = self._merged()
        table = table.filter(pc.greater_equal(table["c"], min_count))
        table = table.sort_by([("c", "descending"), ("v", "ascending")])
        return table["v"].to_pylist()


# --- the preprocessor --------------------------------------------------------------------------


class Preprocessor:
    """Fit on train batches, then map any batch to field-local ids (int32, 0 = OOV/missing)."""

    def __init__(self, schema: Schema, config: PreprocessConfig | Mapping | None = None) -> None:
        self.schema = schema
        self.config = (
            config if isinstance(config, PreprocessConfig) else PreprocessConfig.from_dict(config)
        )
        self.config.check(schema)
        self.encoders: list[FieldEncoder] | None = None
        self._index: dict[int, pd.Index] | None = None
        self._record_plan: list[tuple[str, str, str, Any]] | None = None

    # --- fitting ---------------------------------------------------------------------------
    def blank_encoders(self) -> list[FieldEncoder]:
        """One unfitted encoder per schema field: the rule each field follows, no vocabulary."""
        out = []
        for f in self.schema.fields:
            numeric_rule = self.config.get("numeric_rule", f.name) if f.kind == "numeric" else None
            hashed = self.config.get("hash_buckets", f.name)
            if numeric_rule == "quantile":
                rule = "quantile"
            else:
                rule = "hash" if hashed is not None else "vocab"
            out.append(
                FieldEncoder(
                    name=f.name,
                    source=f.source,
                    kind=f.kind,
                    rule=rule,
                    numeric_rule=numeric_rule,
                    min_count=int(self.config.get("min_count", f.name)),
                    hash_buckets=int(hashed) if rule == "hash" else None,
                )
            )
        return out

    def fit(self, batches: Iterable[pa.RecordBatch]) -> Preprocessor:
        """Fit vocabularies and quantile boundaries on `batches` (the train rows only)."""
        encoders = self.blank_encoders()
        counts = {j: _Counts() for j, e in enumerate(encoders) if e.rule == "vocab"}
        samples = {
            j: StrideSample(QUANTILE_SAMPLE) for j, e in enumerate(encoders) if e.rule == "quantile"
        }
        for batch in batches:
            for j, counter in counts.items():
                counter.add(self._categories(batch, encoders[j]))
            for j, sample in samples.items():
                values = numbers_of(_column(batch, encoders[j].source))
                sample.add(values[~np.isnan(values)])
        for j, counter in counts.items():
            encoders[j].vocab = counter.vocab(encoders[j].min_count)
        for j, sample in samples.items():
            encoders[j].boundaries = quantile_boundaries(
                sample.values, int(self.config.get("buckets", encoders[j].name))
            )
        self._set_encoders(encoders)
        return self

    @classmethod
    def from_encoders(
        cls,
        schema: Schema,
        config: PreprocessConfig | Mapping | None,
        encoders: Iterable[FieldEncoder],
    ) -> Preprocessor:
        """A fitted Preprocessor from its encoders (one per schema field, in schema order)."""
        pre = cls(schema, config)
        encoders = list(encoders)
        names = [e.name for e in encoders]
        if names != schema.field_names:
            raise ValueError(
                f"encoders {names} do not match the schema fields {schema.field_names}"
            )
        pre._set_encoders(encoders)
        return pre

    def _set_encoders(self, encoders: list[FieldEncoder]) -> None:
        self.encoders = encoders
        self._record_plan = None
        self._index = None  # built on the first transform (a store build never needs it)

    def _vocab_index(self, j: int) -> pd.Index:
        if self._index is None:
            import pandas as pd

            self._index = {
                i: pd.Index(e.vocab, dtype=object)
                for i, e in enumerate(self._require_fitted())
                if e.rule == "vocab"
            }
        return self._index[j]

    @property
    def fitted(self) -> bool:
        return self.encoders is not None

    def _require_fitted(self) -> list[FieldEncoder]:
        if self.encoders is None:
            raise RuntimeError("Preprocessor is not fitted: call fit() or load() first")
        return self.encoders

    @property
    def cardinalities(self) -> list[int]:
        """Ids per field including 0 (vocabulary size + 1, buckets + 1, ...)."""
        return [e.cardinality for e in self._require_fitted()]

    # --- transforming ----------------------------------------------------------------------
    @staticmethod
    def _categories(batch: pa.RecordBatch | pa.Table, enc: FieldEncoder) -> pa.Array:
        """Category strings of one field (null = missing)."""
        col = _column(batch, enc.source)
        if enc.kind == "numeric":
            return criteo_log_categories(numbers_of(col))
        return col.cast(pa.large_string())

    def transform(self, batch: pa.RecordBatch | pa.Table) -> np.ndarray:
        """int32 (rows, F) field-local ids for a batch with the reader's columns."""
        encoders = self._require_fitted()
        out = np.zeros((batch.num_rows, len(encoders)), dtype=np.int32)
        for j, enc in enumerate(encoders):
            if enc.rule == "quantile":
                out[:, j] = quantile_ids(enc.boundaries, numbers_of(_column(batch, enc.source)))
                continue
            # Encode the distinct values once per batch, then spread their ids to the rows.
            encoded = pc.dictionary_encode(self._categories(batch, enc))
            uniques = encoded.dictionary
            if enc.rule == "hash":
                unique_ids = 1 + (stable_hash(uniques) % np.uint64(enc.hash_buckets))
            else:
                found = self._vocab_index(j).get_indexer(uniques.to_numpy(zero_copy_only=False))
                unique_ids = found + 1  # not found (-1) -> 0
            unique_ids = np.append(unique_ids.astype(np.int64), 0)  # slot for null (missing)
            idx = pc.fill_null(encoded.indices, len(uniques)).to_numpy(zero_copy_only=False)
            out[:, j] = unique_ids[idx]
        return out

    def transform_records(self, df: pd.DataFrame) -> np.ndarray:
        """int32 (rows, F) ids for raw values in a DataFrame with one column per field name.

        A missing column means missing values. Categorical columns hold strings or integers;
        numeric columns hold numbers (or number strings). Anything else raises a DataError that
        names the field. The result is exactly what `transform` gives the same values.
        """
        return self.transform(records_batch(self._require_fitted(), df))

    # --- one record at a time (serving) ----------------------------------------------------
    def transform_record(self, record: Mapping[str, Any]) -> np.ndarray:
        """int32 (F,) ids of one record {field name: raw value}.

        Always what `transform_records` gives a one-row DataFrame of the same values (tested),
        but the common values are looked up directly, in microseconds instead of the
        milliseconds of a DataFrame round trip: None, a str or int category, an int or float
        number. Any other value (number strings, bools, containers, ...) sends the record
        through `transform_records`, so the rules for odd values and their errors live there.
        """
        plan = self._record_plan if self._record_plan is not None else self._build_record_plan()
        out = np.zeros(len(plan), dtype=np.int32)
        criteo_log: list[tuple[int, float]] = []  # named together: one vectorized rule call
        for j, (key, kind, rule, table) in enumerate(plan):
            value = record.get(key)
            if value is None:
                continue  # missing: id 0
            if kind == "numeric":
                number = plain_number(value)
                if number is None:
                    return self._transform_record_in_frame(record)
                if number != number:  # NaN is missing, as in a DataFrame
                    continue
                if rule == "quantile":
                    out[j] = quantile_ids(table, np.array([number]))[0]
                else:
                    criteo_log.append((j, number))
                continue
            category = plain_category(value)
            if category is None:
                return self._transform_record_in_frame(record)
            out[j] = _lookup(rule, table, category)
        if criteo_log:
            keys = criteo_log_keys(np.array([number for _, number in criteo_log]))
            for (j, _), key in zip(criteo_log, keys.tolist(), strict=True):
                out[j] = _lookup(plan[j][2], plan[j][3], criteo_log_name(key))
        return out

    def _build_record_plan(self) -> list[tuple[str, str, str, Any]]:
        """Per field: (record key, kind, rule, table); the table is the vocabulary as a dict
        {category: id}, the hash bucket count, or the quantile boundaries."""
        first_name: dict[str, str] = {}
        plan = []
        for enc in self._require_fitted():
            # transform_records reads a shared source column under its first field's name.
            key = first_name.setdefault(enc.source, enc.name)
            if enc.rule == "vocab":
                table: Any = {value: i + 1 for i, value in enumerate(enc.vocab)}
            elif enc.rule == "hash":
                table = int(enc.hash_buckets)
            else:
                table = list(enc.boundaries or [])
            plan.append((key, enc.kind, enc.rule, table))
        self._record_plan = plan
        return plan

    def _transform_record_in_frame(self, record: Mapping[str, Any]) -> np.ndarray:
        keys = dict.fromkeys(key for key, _, _, _ in self._record_plan or [])
        import pandas as pd

        frame = pd.DataFrame({key: [record[key]] for key in keys if key in record}, index=[0])
        return self.transform_records(frame)[0]

    # --- persistence -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            # Through JSON, so that the dict equals what load() reads back (tuples -> lists).
            "schema": json.loads(json.dumps(self.schema.to_dict())),
            "config": self.config.to_dict(),
            # Shallow dicts (asdict would deep-copy every vocabulary string).
            "encoders": [_encoder_dict(e) for e in self._require_fitted()],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessor:
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"preprocessor format_version {data.get('format_version')!r} != {FORMAT_VERSION}"
            )
        return cls.from_encoders(
            Schema.from_dict(data["schema"]),
            PreprocessConfig.from_dict(data["config"]),
            [FieldEncoder(**e) for e in data["encoders"]],
        )

    def save(self, path: str | Path) -> None:
        """Write the fitted preprocessor as JSON (atomically: a temporary file, then rename).

        Compact, not indented: json's C encoder then writes a vocabulary of millions of values
        in seconds instead of minutes.
        """
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), sort_keys=True) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> Preprocessor:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _encoder_dict(enc: FieldEncoder) -> dict[str, Any]:
    out = {f.name: getattr(enc, f.name) for f in fields(enc)}
    out["vocab"] = list(enc.vocab)
    out["boundaries"] = None if enc.boundaries is None else list(enc.boundaries)
    return out


def _column(batch: pa.RecordBatch | pa.Table, name: str) -> pa.Array:
    try:
        col = batch.column(name)
    except KeyError:
        raise DataError(f"column {name!r} missing from the batch") from None
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _lookup(rule: str, table: Any, category: str) -> int:
    """The id of a category string: vocabulary lookup (0 = OOV) or hash bucket."""
    if rule == "hash":
        return 1 + stable_hash_one(category) % table
    return table.get(category, 0)
