"""Build an EncodedStore from data files: fingerprint, then one pass that fits and encodes.

The store is cached under `cache_root` by a fingerprint of everything that decides its contents:
the sha256 of each source file's bytes, the schema, the preprocess config, the format and its
options, and on_error (not the engine: every engine builds the same store). A second build with
the same inputs opens the cached store.

Otherwise the files are streamed once, one chunk in memory at a time (`cvr.data.encode`): each
row is encoded to provisional ids and written in file order; the vocabulary is then fitted on the
train rows' counts, the ids remapped and every row appended to its split. The fitted preprocessor
is saved as `preprocessor.json` inside the store (checksummed in meta.json's `files`), so a
predictor can reuse exactly the same encoding. `data.engine=dask` does the same over a Dask
cluster (`cvr.data.dask_engine`).

Inputs: `data.path` is a file, a list of files or a glob (`day_*.tsv.gz`, sorted by name); each
entry of `data.paths` likewise. Compressed files are read as streams (see `readers.lines`).

Splits (`schema.split.method`):

- `random`: each row's split comes from splitmix64(seed, file index, line number) -> uniform
  [0, 1): below `test` is test, then `val`, the rest train. It depends only on the file and line,
  never on the chunk size or on which other rows were skipped.
- `time`: rows ordered by `time_column` (stable: ties keep file order; numbers when every value
  parses as one, else strings; missing times first); the last `val` + `test` fractions become
  val and test.
- `files`: `paths: {train, val, test}`. Without a val file, val is drawn from the train files
  like the random split, with fraction `split.val` and `split.seed`.
- `by_file`: `data.path` names at least three files in time order: the last is test, the one
  before it val, the rest train (the protocol of Criteo-1TB papers).
"""

from __future__ import annotations

import glob
import logging
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cvr.data.encode import OnePassEncoder
from cvr.data.errors import DataError, check_on_error, merge_counts
from cvr.data.numbers import parse_numbers
from cvr.data.prefetch import prefetch
from cvr.data.preprocess import PreprocessConfig, Preprocessor, mix64
from cvr.data.readers import (
    DEFAULT_CHUNK_ROWS,
    LINE_COLUMN,
    READERS,
    TIME_COLUMN,
    Reader,
    open_reader,
)
from cvr.data.readers.libffm import field_numbers
from cvr.data.schema import Schema, SchemaError, SplitRule
from cvr.data.store import (
    SPLITS,
    EncodedStore,
    SourceFile,
    StoreMeta,
    StoreWriter,
    open_cached,
    store_dir,
)
from cvr.data.vocab import remap_columns
from cvr.ops.manifest import fingerprint, sha256_file

log = logging.getLogger(__name__)

# Bump when the encoding of the same inputs changes, so old cached stores are not reused.
BUILD_VERSION = 1
ENGINES = ("local", "dask")
TRAIN, VAL, TEST = 0, 1, 2
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_FILE_STRIDE = np.uint64(0xD1B54A32D192ED03)
PREPROCESSOR = "preprocessor.json"


@dataclass
class Source:
    """One input file: its split role (None: split per row), the config key naming it, and its
    index among the files whose rows are split per row (it seeds the random split)."""

    role: str | None
    path: Path
    key: str
    index: int = 0
    sha256: str = ""


@dataclass
class BuildPlan:
    """Everything a build needs, resolved and validated; `fingerprint` keys the store."""

    name: str
    format: str
    format_options: dict[str, Any]
    schema: Schema
    config: PreprocessConfig
    on_error: str
    chunk_rows: int
    sources: list[Source]
    fingerprint: str = ""
    has_val_file: bool = False
    reader_options: dict[str, Any] = field(default_factory=dict)
    warm_thread: threading.Thread | None = None

    def reader(self, src: Source, **extra: Any) -> Reader:
        options = {**self.reader_options, **extra}
        return open_reader(self.format, src.path, self.schema, config_key=src.key, **options)


def random_split_codes(
    lines: np.ndarray, seed: int, val: float, test: float, file_index: int = 0
) -> np.ndarray:
    """int8 split codes (0 train, 1 val, 2 test) from a seeded hash of each (file, line)."""
    state = np.uint64(int(seed) % (1 << 64)) + np.asarray(lines, dtype=np.uint64) * _GOLDEN
    if file_index:
        state = state + np.uint64((file_index * int(_FILE_STRIDE)) % (1 << 64))
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


def split_codes(plan: BuildPlan, src: Source, batch: pa.RecordBatch) -> np.ndarray | None:
    """Split codes of a batch of `src`, or None for a time split (known only at the end)."""
    rule = plan.schema.split
    lines = batch.column(LINE_COLUMN).to_numpy()
    if rule.method == "time":
        return None
    if rule.method == "random":
        return random_split_codes(lines, rule.seed, rule.val, rule.test, src.index)
    if src.role == "train" and not plan.has_val_file:
        return random_split_codes(lines, rule.seed, rule.val, 0.0, src.index)
    return np.full(batch.num_rows, SPLITS.index(src.role), dtype=np.int8)


# --- step 1: resolve and fingerprint ------------------------------------------------------------


def plan_build(
    name: str,
    format: str,
    path: Any = None,
    paths: Mapping[str, Any] | None = None,
    schema: Schema | Mapping[str, Any] | None = None,
    preprocess: PreprocessConfig | Mapping[str, Any] | None = None,
    on_error: str = "raise",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    warm: bool = False,
    **format_options: Any,
) -> BuildPlan:
    """Resolve the inputs, validate the config, hash the files: the fingerprint step.

    `warm`: meanwhile, `warm_up` runs in a thread (`plan.warm_thread`).
    """
    if schema is None:
        raise SchemaError("data.schema: missing")
    check_on_error(on_error)
    format_options = _plain(format_options)
    schema_cfg = schema if isinstance(schema, Schema) else _plain(schema)
    rule = schema_cfg.split if isinstance(schema_cfg, Schema) else _split_rule(schema_cfg)
    sources = resolve_sources(rule, _plain(path), _plain(paths))
    if format == "libffm":
        schema_cfg = libffm_schema(schema_cfg, sources, format_options.get("max_line_bytes"))
    elif not isinstance(schema_cfg, Schema) and schema_cfg.get("fields") == "auto":
        raise SchemaError("data.schema.fields: `auto` is only for format libffm")
    schema = schema_cfg if isinstance(schema_cfg, Schema) else Schema.from_dict(schema_cfg)
    config = (
        preprocess
        if isinstance(preprocess, PreprocessConfig)
        else PreprocessConfig.from_dict(_plain(preprocess))
    )
    config.check(schema)
    time_column = rule.time_column if rule.method == "time" else None
    plan = BuildPlan(
        name=name,
        format=format,
        format_options=format_options,
        schema=schema,
        config=config,
        on_error=on_error,
        chunk_rows=chunk_rows,
        sources=sources,
        has_val_file=any(s.role == "val" for s in sources),
        reader_options={
            "on_error": on_error,
            "chunk_rows": chunk_rows,
            "time_column": time_column,
            **format_options,
        },
    )
    for src in sources:
        plan.reader(src)  # options are checked before any hashing
    if warm:
        plan.warm_thread = threading.Thread(target=warm_up, args=(plan,), daemon=True)
        plan.warm_thread.start()
    for src in sources:
        src.sha256 = sha256_file(src.path)
    plan.fingerprint = store_fingerprint(plan)
    return plan


def warm_up(plan: BuildPlan) -> None:
    """Encode a few rows of the first input into a throwaway encoder, so that the compiled
    kernels are loaded (numba's start-up: about a second of CPU) while the caller hashes the
    inputs, which releases the GIL. Errors are left to the build itself."""
    try:
        with tempfile.TemporaryDirectory(prefix="cvr-warm-") as tmp:
            pre = Preprocessor(plan.schema, plan.config)
            encoder = OnePassEncoder(pre, Path(tmp), len(plan.schema.labels))
            src = plan.sources[0]
            tables = READERS[plan.format].accepts_vocab_tables
            extra = {"vocab_tables": encoder.vocab_tables} if tables else {}
            batches = iter(plan.reader(src, chunk_rows=64, **extra))
            try:
                batch = next(batches)
            finally:
                batches.close()
            encoder.add(batch, split_codes(plan, src, batch))
            encoder.abort()
            remap_columns(np.zeros((1, 1), dtype=np.int32), {0: np.zeros(2, dtype=np.int32)})
    except Exception:  # a warm-up only: the build itself reports any problem
        log.debug("warm-up failed", exc_info=True)


def store_fingerprint(plan: BuildPlan) -> str:
    """The hash of everything that decides a store's contents (unchanged for one-file inputs)."""
    by_key: dict[str, list[str]] = {}
    for src in plan.sources:
        by_key.setdefault(src.role or "data", []).append(src.sha256)
    return fingerprint(
        {
            "builder": BUILD_VERSION,
            "format": plan.format,
            "format_options": plan.format_options,
            "sources": {k: v[0] if len(v) == 1 else v for k, v in by_key.items()},
            "schema": plan.schema.to_dict(),
            "preprocess": plan.config.to_dict(),
            "on_error": plan.on_error,
        }
    )


def _split_rule(schema_cfg: Mapping[str, Any]) -> SplitRule:
    split = schema_cfg.get("split") or {}
    return split if isinstance(split, SplitRule) else SplitRule(**dict(split))


def expand_paths(value: Any, key: str) -> list[Path]:
    """A file, a list of files, or globs (sorted by name) as paths; a glob must match."""
    items = value if isinstance(value, list | tuple) else [value]
    out: list[Path] = []
    for item in items:
        text = str(item)
        if glob.has_magic(text):
            matches = sorted(Path(p) for p in glob.glob(text))
            if not matches:
                raise FileNotFoundError(f"{text}: no file matches (config key {key})")
            out.extend(matches)
        else:
            out.append(Path(text))
    if not out:
        raise SchemaError(f"{key}: expected a file, a list of files or a glob, got {value!r}")
    for p in out:
        if not p.is_file():
            raise FileNotFoundError(f"{p}: data file not found (config key {key})")
    return out


def resolve_sources(rule: SplitRule, path: Any, paths: Any) -> list[Source]:
    """The input files with their split roles (see the module docstring)."""
    if rule.method == "files":
        if not isinstance(paths, Mapping) or not paths.get("train"):
            raise SchemaError("data.paths: split method files needs paths {train, val, test}")
        unknown = sorted(set(paths) - set(SPLITS))
        if unknown:
            raise SchemaError(f"data.paths: unknown splits {unknown}; expected some of {SPLITS}")
        sources = []
        for role in SPLITS:
            if paths.get(role):
                files = expand_paths(paths[role], f"data.paths.{role}")
                sources += [
                    Source(role, p, _key(f"data.paths.{role}", i, len(files)), i)
                    for i, p in enumerate(files)
                ]
        return sources
    if paths is not None and any(paths.values() if isinstance(paths, Mapping) else [paths]):
        raise SchemaError("data.paths: only for split method files; use data.path")
    if path is None:
        raise SchemaError(f"data.path: required for split method {rule.method}")
    files = expand_paths(path, "data.path")
    if rule.method == "by_file":
        if len(files) < 3:
            raise SchemaError(
                f"data.path: split method by_file needs at least 3 files (train.., val, test), "
                f"got {len(files)}"
            )
        roles = ["train"] * (len(files) - 2) + ["val", "test"]
        return [
            Source(role, p, _key("data.path", i, len(files)), i)
            for i, (role, p) in enumerate(zip(roles, files, strict=True))
        ]
    return [Source(None, p, _key("data.path", i, len(files)), i) for i, p in enumerate(files)]


def _key(key: str, i: int, n: int) -> str:
    return key if n == 1 else f"{key}[{i}]"


def libffm_schema(
    schema_cfg: Schema | dict[str, Any], sources: Sequence[Source], max_line_bytes: int | None
) -> Schema | dict[str, Any]:
    """The schema of libffm files: fields `auto` become f0..f{max}; declared fields must match
    the field numbers the files use (a SchemaError names both otherwise)."""
    numbers = np.zeros(0, dtype=np.int64)
    for src in sources:
        numbers = np.union1d(numbers, field_numbers(src.path, max_line_bytes))
    used = sorted(int(n) for n in numbers)
    where = ", ".join(str(s.path) for s in sources)
    if not isinstance(schema_cfg, Schema) and schema_cfg.get("fields") in ("auto", None):
        if not used:
            raise DataError(f"{where}: no field:feature:value token found to infer fields from")
        return {**schema_cfg, "fields": [f"f{n}" for n in range(used[-1] + 1)]}
    schema = schema_cfg if isinstance(schema_cfg, Schema) else Schema.from_dict(schema_cfg)
    declared = []
    for f in schema.fields:
        if f.source.startswith("f") and f.source[1:].isdigit():
            declared.append(int(f.source[1:]))
    extra = sorted(set(used) - set(declared))
    never = sorted(set(declared) - set(used))
    if extra or never:
        raise SchemaError(
            f"data.schema.fields: {len(declared)} fields declared, but {where} uses field "
            f"numbers {_ranges(used)}"
            + (f"; not declared: {_ranges(extra)}" if extra else "")
            + (f"; never used: {_ranges(never)}" if never else "")
            + " (set data.schema.fields=auto to infer them)"
        )
    return schema_cfg


def _ranges(numbers: Sequence[int]) -> str:
    if not numbers:
        return "none"
    parts, start, prev = [], numbers[0], numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(str(start) if start == prev else f"{start}..{prev}")
        if n is not None:
            start = prev = n
    return ", ".join(parts)


def _plain(obj: Any) -> Any:
    """Mappings and sequences (e.g. OmegaConf containers) as plain dicts and lists."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, Sequence) and not isinstance(obj, str | bytes):
        return [_plain(v) for v in obj]
    return obj


# --- the build ------------------------------------------------------------------------------------


def build_file_store(
    name: str,
    format: str,
    path: Any = None,
    paths: Mapping[str, Any] | None = None,
    schema: Schema | Mapping[str, Any] | None = None,
    preprocess: PreprocessConfig | Mapping[str, Any] | None = None,
    on_error: str = "raise",
    cache_root: str | Path = "cache/stores",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    engine: str = "local",
    dask: Mapping[str, Any] | None = None,
    **format_options: Any,
) -> EncodedStore:
    """Build (or reuse) the encoded store of data files; see the module docstring.

    `format` is a reader format (`csv`, `criteo_tsv`, `libffm`, `parquet`); `format_options` are
    that reader's options (delimiter, header, columns, label_columns, max_line_bytes, ...).
    `engine` is `local` or `dask` (`dask: {address, workers, ...}`, see cvr.data.dask_engine).
    Raises FileNotFoundError for a missing file (naming data.path / data.paths.<split>),
    DataError for bad data, SchemaError for an impossible config. A failure leaves no store
    directory behind.
    """
    if engine not in ENGINES:
        raise SchemaError(f"data.engine: expected one of {ENGINES}, got {engine!r}")
    local = engine == "local"
    plan = plan_build(
        name, format, path, paths, schema, preprocess, on_error, chunk_rows, local, **format_options
    )
    final = store_dir(cache_root, name, plan.fingerprint)
    cached = open_cached(final, plan.fingerprint)
    if cached is not None:
        log.info("store %s: reusing %s", name, final)
        return cached
    if plan.warm_thread is not None:
        plan.warm_thread.join()
    if engine == "dask":
        from cvr.data.dask_engine import build_with_dask

        return build_with_dask(plan, final, _plain(dask) or {})
    writer = StoreWriter(final, plan.schema.num_fields, len(plan.schema.labels))
    encoder = OnePassEncoder(
        Preprocessor(plan.schema, plan.config), writer.tmp, len(plan.schema.labels)
    )
    try:
        readers = encode_sources(plan, encoder)
        pre = encoder.fit()
        check_train_rows(plan, encoder.train_rows, readers)
        encoder.write(writer)
        store = finish_store(plan, writer, pre, readers)
    except BaseException:
        encoder.abort()
        writer.abort()
        raise
    log_summary(store)
    return store


def encode_sources(plan: BuildPlan, encoder: OnePassEncoder) -> list[tuple[Source, Reader]]:
    """Step 2: one pass over every file, encoding each batch (time split: codes at the end)."""
    # Formats that can look categorical bytes up in the encoder's tables skip building strings.
    extra = (
        {"vocab_tables": encoder.vocab_tables} if READERS[plan.format].accepts_vocab_tables else {}
    )
    readers = [(src, plan.reader(src, **extra)) for src in plan.sources]
    times: list[pa.Array] = []
    for src, reader in readers:
        for batch in prefetch(reader, depth=1):
            if plan.schema.split.method == "time":
                times.append(batch.column(TIME_COLUMN))
            encoder.add(batch, split_codes(plan, src, batch))
    if plan.schema.split.method == "time":
        rule = plan.schema.split
        all_times = pa.concat_arrays(times) if times else pa.array([], pa.string())
        encoder.set_codes(time_split_codes(all_times, rule.val, rule.test))
    return readers


def check_train_rows(
    plan: BuildPlan, train_rows: int, readers: Sequence[tuple[Source, Any]]
) -> None:
    if train_rows:
        return
    src, reader = next((s, r) for s, r in readers if s.role in (None, "train"))
    raise DataError(
        f"{src.path}: no training rows "
        f"(skipped: {reader.skipped or 'none'}; split {plan.schema.split})"
    )


def finish_store(
    plan: BuildPlan, writer: StoreWriter, pre: Preprocessor, readers: Sequence[tuple[Source, Any]]
) -> EncodedStore:
    """Step 3: save the preprocessor next to the arrays and write meta.json."""
    pre_path = writer.tmp / PREPROCESSOR
    pre.save(pre_path)
    skipped: dict[str, int] = {}
    files = []
    for src, reader in readers:
        merge_counts(skipped, reader.skipped)
        files.append(
            SourceFile(src.role, str(src.path), src.sha256, int(reader.lines), dict(reader.skipped))
        )
    meta = StoreMeta(
        name=plan.name,
        fingerprint=plan.fingerprint,
        schema=plan.schema.to_dict(),
        cardinalities=pre.cardinalities,
        labels=list(plan.schema.labels),
        label=plan.schema.label,
        reader={"format": plan.format, "options": plan.format_options},
        preprocess=plan.config.to_dict(),
        on_error=plan.on_error,
        sources=files,
        skipped=skipped,
    )
    return writer.finish(meta, files={PREPROCESSOR: sha256_file(pre_path)})


def log_summary(store: EncodedStore) -> None:
    info = store.info
    rows = ", ".join(f"{s}={store.rows(s)}" for s in SPLITS)
    log.info(
        "store %s built at %s: rows %s; cardinalities %s",
        info.name,
        store.path,
        rows,
        dict(zip(store.field_names, store.cardinalities, strict=True)),
    )
    if info.skipped:
        log.warning("store %s: skipped rows by reason %s", info.name, info.skipped)
