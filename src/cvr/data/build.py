"""Build an EncodedStore from data files: read, split, fit the preprocessor on train, encode.

The store is cached under `cache_root` by a fingerprint of everything that decides its contents:
the sha256 of each source file's bytes, the schema, the preprocess config, the format and its
options, and on_error. A second build with the same inputs opens the cached store.

Otherwise the files are streamed twice (three times for a time split), one chunk in memory at a
time: pass 1 fits the Preprocessor on the train rows, pass 2 encodes every row and appends it to
its split. The fitted preprocessor is saved as `preprocessor.json` inside the store (checksummed
in meta.json's `files`), so a predictor can reuse exactly the same encoding.

Splits (`schema.split.method`):

- `random`: each row's split comes from splitmix64(seed, line number) -> uniform [0, 1):
  below `test` is test, then `val`, the rest train. It depends only on the line, never on the chunk
  size or on which other rows were skipped.
- `time`: rows ordered by `time_column` (stable: ties keep file order; numbers when every value
  parses as one, else strings; missing times first); the last `val` + `test` fractions become
  val and test. A first pass collects the column.
- `files`: `paths: {train, val, test}`. Without a val file, val is drawn from the train file
  like the random split, with fraction `split.val` and `split.seed`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cvr.data.errors import DataError, check_on_error, merge_counts
from cvr.data.preprocess import PreprocessConfig, Preprocessor, mix64
from cvr.data.readers import (
    DEFAULT_CHUNK_ROWS,
    LINE_COLUMN,
    TIME_COLUMN,
    Reader,
    open_reader,
    parse_numbers,
)
from cvr.data.schema import Schema, SchemaError, SplitRule
from cvr.data.store import SPLITS, EncodedStore, StoreWriter, field_meta, open_cached, store_dir
from cvr.ops.manifest import fingerprint, sha256_file

log = logging.getLogger(__name__)

# Bump when the encoding of the same inputs changes, so old cached stores are not reused.
BUILD_VERSION = 1
TRAIN, VAL, TEST = 0, 1, 2
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@dataclass
class _Source:
    role: str | None  # "train"/"val"/"test" for split method files, else None (split per row)
    path: Path
    key: str  # the config key that names the file
    reader: Reader | None = None


def random_split_codes(lines: np.ndarray, seed: int, val: float, test: float) -> np.ndarray:
    """int8 split codes (0 train, 1 val, 2 test) from a seeded hash of each line number."""
    state = np.uint64(int(seed) % (1 << 64)) + np.asarray(lines, dtype=np.uint64) * _GOLDEN
    u = (mix64(state) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return np.where(u < test, TEST, np.where(u < test + val, VAL, TRAIN)).astype(np.int8)


def time_split_codes(times: pa.Array, val: float, test: float) -> np.ndarray:
    """int8 split codes by rank of `times` (string column, null = earliest): last rows are test."""
    n = len(times)
    values, missing, bad = parse_numbers(times)
    if not bad.any():
        order = np.argsort(np.where(missing, -np.inf, values), kind="stable")
    else:
        order = pc.sort_indices(times, null_placement="at_start").to_numpy()
    n_test = round(test * n)
    n_val = round(val * n)
    codes = np.full(n, TRAIN, dtype=np.int8)
    codes[order[n - n_test - n_val : n - n_test]] = VAL
    codes[order[n - n_test :]] = TEST
    return codes


def _plain(obj: Any) -> Any:
    """Mappings and sequences (e.g. OmegaConf containers) as plain dicts and lists."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, Sequence) and not isinstance(obj, str | bytes):
        return [_plain(v) for v in obj]
    return obj


def _sources(rule: SplitRule, path: Any, paths: Any) -> list[_Source]:
    if rule.method == "files":
        if not isinstance(paths, Mapping) or "train" not in paths:
            raise SchemaError("data.paths: split method files needs paths {train, val, test}")
        unknown = sorted(set(paths) - set(SPLITS))
        if unknown:
            raise SchemaError(f"data.paths: unknown splits {unknown}; expected some of {SPLITS}")
        return [
            _Source(role, Path(paths[role]), f"data.paths.{role}")
            for role in SPLITS
            if paths.get(role)
        ]
    if path is None:
        raise SchemaError(f"data.path: required for split method {rule.method}")
    if paths is not None:
        raise SchemaError("data.paths: only for split method files; use data.path")
    return [_Source(None, Path(path), "data.path")]


def build_file_store(
    name: str,
    format: str,
    path: str | Path | None = None,
    paths: Mapping[str, str | Path] | None = None,
    schema: Schema | Mapping[str, Any] | None = None,
    preprocess: PreprocessConfig | Mapping[str, Any] | None = None,
    on_error: str = "raise",
    cache_root: str | Path = "cache/stores",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    **format_options: Any,
) -> EncodedStore:
    """Build (or reuse) the encoded store of data files; see the module docstring.

    `format` is a reader format (`csv`, `criteo_tsv`, `libffm`, `parquet`); `format_options` are
    that reader's options (delimiter, header, columns, label_columns, ...). Raises
    FileNotFoundError for a missing file (naming data.path / data.paths.<split>), DataError for
    bad data, SchemaError for an impossible config. A failure leaves no store directory behind.
    """
    if schema is None:
        raise SchemaError("data.schema: missing")
    schema = schema if isinstance(schema, Schema) else Schema.from_dict(_plain(schema))
    config = (
        preprocess
        if isinstance(preprocess, PreprocessConfig)
        else PreprocessConfig.from_dict(_plain(preprocess))
    )
    config.check(schema)
    check_on_error(on_error)
    format_options = _plain(format_options)
    rule = schema.split
    sources = _sources(rule, _plain(path), _plain(paths))
    for src in sources:
        if not src.path.is_file():
            raise FileNotFoundError(f"{src.path}: data file not found (config key {src.key})")
    time_column = rule.time_column if rule.method == "time" else None
    for src in sources:
        src.reader = open_reader(
            format,
            src.path,
            schema,
            on_error=on_error,
            chunk_rows=chunk_rows,
            time_column=time_column,
            config_key=src.key,
            **format_options,
        )

    source_meta = {
        src.role or "data": {"path": str(src.path), "sha256": sha256_file(src.path)}
        for src in sources
    }
    fp = fingerprint(
        {
            "builder": BUILD_VERSION,
            "format": format,
            "format_options": format_options,
            "sources": {role: m["sha256"] for role, m in source_meta.items()},
            "schema": schema.to_dict(),
            "preprocess": config.to_dict(),
            "on_error": on_error,
        }
    )
    final = store_dir(cache_root, name, fp)
    cached = open_cached(final, fp)
    if cached is not None:
        log.info("store %s: reusing %s", name, final)
        return cached

    splitter = _Splitter(rule, has_val_file=any(s.role == "val" for s in sources))
    if rule.method == "time":
        splitter.collect_times(sources[0].reader)
    pre = Preprocessor(schema, config)
    train = _TrainRows(sources, splitter)
    pre.fit(train)
    if train.rows == 0:
        train_src = next(s for s in sources if s.role in (None, "train"))
        raise DataError(
            f"{train_src.path}: no training rows "
            f"(skipped: {train_src.reader.skipped or 'none'}; split {rule})"
        )

    writer = StoreWriter(final, schema.num_fields, len(schema.labels))
    try:
        skipped: dict[str, int] = {}
        skipped_by_file: dict[str, dict[str, int]] = {}
        lines: dict[str, int] = {}
        for src in sources:
            for batch, codes in splitter.batches(src):
                ids = pre.transform(batch)
                labels = np.column_stack(
                    [batch.column(lbl).to_numpy(zero_copy_only=False) for lbl in schema.labels]
                ).astype(np.float32)
                for code, split in enumerate(SPLITS):
                    mask = codes == code
                    if mask.any():
                        writer.append(split, ids[mask], labels[mask])
            role = src.role or "data"
            merge_counts(skipped, src.reader.skipped)
            skipped_by_file[role] = dict(src.reader.skipped)
            lines[role] = src.reader.lines
        pre_path = writer.tmp / "preprocessor.json"
        pre.save(pre_path)
        meta = {
            "name": name,
            "fingerprint": fp,
            "fields": field_meta(schema.field_names, [f.kind for f in schema.fields], schema.sides),
            "cardinalities": pre.cardinalities,
            "labels": list(schema.labels),
            "label": schema.label,
            "schema": schema.to_dict(),
            "format": format,
            "format_options": format_options,
            "sources": source_meta,
            "preprocess": config.to_dict(),
            "on_error": on_error,
            "lines": lines,
            "skipped": skipped,
            "skipped_by_file": skipped_by_file,
            "files": {"preprocessor.json": sha256_file(pre_path)},
        }
        store = writer.finish(meta)
    except BaseException:
        writer.abort()
        raise
    _log_summary(store, skipped)
    return store


class _TrainRows:
    """Iterable over the train rows of the sources that hold any (pass 1); counts them."""

    def __init__(self, sources: list[_Source], splitter: _Splitter) -> None:
        self.sources = sources
        self.splitter = splitter
        self.rows = 0

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        for src in self.sources:
            if src.role not in (None, "train"):
                continue
            for batch, codes in self.splitter.batches(src):
                train = batch.filter(pa.array(codes == TRAIN))
                self.rows += train.num_rows
                if train.num_rows:
                    yield train


class _Splitter:
    """Assigns each row of a batch its split code (0 train, 1 val, 2 test)."""

    def __init__(self, rule: SplitRule, has_val_file: bool) -> None:
        self.rule = rule
        self.has_val_file = has_val_file
        self.time_codes: np.ndarray | None = None

    def collect_times(self, reader: Reader) -> None:
        """Pass 0 of a time split: read the time column of every valid row."""
        chunks = [batch.column(TIME_COLUMN) for batch in reader]
        times = pa.concat_arrays(chunks) if chunks else pa.array([], pa.string())
        self.time_codes = time_split_codes(times, self.rule.val, self.rule.test)

    def batches(self, src: _Source) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
        """(batch, codes) over one pass of a source."""
        seen = 0
        for batch in src.reader:
            n = batch.num_rows
            lines = batch.column(LINE_COLUMN).to_numpy()
            if self.rule.method == "time":
                codes = self.time_codes[seen : seen + n]
                if len(codes) != n:
                    raise DataError(f"{src.path}: the file changed while the store was built")
            elif self.rule.method == "random":
                codes = random_split_codes(lines, self.rule.seed, self.rule.val, self.rule.test)
            elif src.role == "train" and not self.has_val_file:
                codes = random_split_codes(lines, self.rule.seed, self.rule.val, 0.0)
            else:
                codes = np.full(n, SPLITS.index(src.role), dtype=np.int8)
            seen += n
            yield batch, codes
        if self.time_codes is not None and seen != len(self.time_codes):
            raise DataError(f"{src.path}: the file changed while the store was built")


def _log_summary(store: EncodedStore, skipped: dict[str, int]) -> None:
    rows = ", ".join(f"{s}={store.rows(s)}" for s in SPLITS)
    log.info(
        "store %s built at %s: rows %s; cardinalities %s",
        store.meta["name"],
        store.path,
        rows,
        dict(zip(store.field_names, store.cardinalities, strict=True)),
    )
    if skipped:
        log.warning("store %s: skipped rows by reason %s", store.meta["name"], skipped)
