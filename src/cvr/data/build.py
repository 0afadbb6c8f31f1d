"""Build an EncodedStore from data files: fingerprint, then one pass that fits and encodes.

The store is cached under `cache_root` by a fingerprint of everything that decides its contents
(`cvr.data.fingerprint`): the sha256 of each source file's bytes, the schema, the preprocess
config, the format and its options, and on_error (not the engine: every engine builds the same
store). A second build with the same inputs opens the cached store. Input digests are cached by
file path, size, mtime and ctime; a file not seen before is hashed first only when a store of
this name exists that could be reused, otherwise while the pass reads it (one read, not two).

Otherwise the files are streamed once, one chunk in memory at a time (`cvr.data.encode`): each
row is encoded to provisional ids and written in file order; the vocabulary is then fitted on the
train rows' counts, the ids remapped and every row appended to its split (`cvr.data.splits`).
The fitted preprocessor is saved as `preprocessor.json` inside the store (checksummed in
meta.json's `files`), so a predictor can reuse exactly the same encoding. `data.engine=dask`
does the same over a Dask cluster (`cvr.data.dask_engine`). Inputs and split roles:
`cvr.data.sources`.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from cvr.data.encode import OnePassEncoder
from cvr.data.errors import DataError, merge_counts
from cvr.data.fingerprint import (
    BUILD_VERSION,
    DigestCache,
    StreamDigest,
    file_key,
    sha256_of,
)
from cvr.data.plan import (
    BuildPlan,
    hash_sources,
    plan_build,
    plan_fingerprint,
    split_codes,
)
from cvr.data.prefetch import prefetch
from cvr.data.preprocess import PreprocessConfig, Preprocessor
from cvr.data.readers import (
    DEFAULT_CHUNK_ROWS,
    READERS,
    TIME_COLUMN,
    Reader,
)
from cvr.data.schema import Schema, SchemaError
from cvr.data.sources import (
    Source,
    expand_paths,
    plain,
)
from cvr.data.splits import (
    TEST,
    TRAIN,
    VAL,
    random_split_codes,
    time_split_codes,
)
from cvr.data.store import (
    SPLITS,
    EncodedStore,
    SourceFile,
    StoreMeta,
    StoreWriter,
    open_cached,
    pending_store_dir,
    store_dir,
)
from cvr.ops.manifest import sha256_file

__all__ = [  # the build's pieces, re-exported for callers of the one-module build
    "BUILD_VERSION",
    "SPLITS",
    "TEST",
    "TIME_COLUMN",
    "TRAIN",
    "VAL",
    "BuildPlan",
    "Source",
    "build_file_store",
    "expand_paths",
    "plan_build",
    "random_split_codes",
    "split_codes",
    "time_split_codes",
]

log = logging.getLogger(__name__)

ENGINES = ("local", "dask")
PREPROCESSOR = "preprocessor.json"


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
        name, format, path, paths, schema, preprocess, on_error, chunk_rows, False, **format_options
    )
    digests = DigestCache(cache_root)
    for src in plan.sources:
        src.sha256 = digests.get(src.path) or ""
    # A file not hashed before is hashed while the pass reads it, unless a store of this name
    # might be the one to reuse (then its fingerprint is needed first).
    in_pass = (
        local
        and READERS[plan.format].accepts_digest
        and not all(src.sha256 for src in plan.sources)
        and not has_stores(cache_root, name)
    )
    final = None
    if not in_pass:
        hash_sources(plan, digests, warm=local)
        digests.save()
        final = store_dir(cache_root, name, plan.fingerprint)
        cached = open_cached(final, plan.fingerprint)
        if cached is not None:
            log.info("store %s: reusing %s", name, final)
            return cached
        if plan.warm_thread is not None:
            plan.warm_thread.join()
    if engine == "dask":
        from cvr.data.dask_engine import build_with_dask

        return build_with_dask(plan, final, plain(dask) or {})
    writer = StoreWriter(
        final or pending_store_dir(cache_root, name),
        plan.schema.num_fields,
        len(plan.schema.labels),
    )
    # Rows whose split is known as they are read go straight into the store (time split: not).
    direct = writer if plan.schema.split.method != "time" else None
    encoder = OnePassEncoder(
        Preprocessor(plan.schema, plan.config), writer.tmp, len(plan.schema.labels), direct
    )
    streams = {}
    if in_pass:
        streams = {i: (StreamDigest(), file_key(s.path)) for i, s in enumerate(plan.sources)}
    try:
        readers = encode_sources(plan, encoder, streams)
        if in_pass:
            take_stream_digests(plan, streams, digests)
            digests.save()
            final = store_dir(cache_root, name, plan.fingerprint)
        pre = encoder.fit()
        check_train_rows(plan, encoder.train_rows, readers)
        encoder.write(writer)
        store = finish_store(plan, writer, pre, readers, final)
    except BaseException:
        for stream, _ in streams.values():
            stream.hexdigest()  # ends its thread
        encoder.abort()
        writer.abort()
        raise
    log_summary(store)
    return store


def has_stores(cache_root: str | Path, name: str) -> bool:
    """Whether `cache_root` holds any store named `name` (of any fingerprint)."""
    pattern = glob.escape(str(store_dir(cache_root, name, ""))) + "*"
    return any(Path(p, "meta.json").is_file() for p in glob.glob(pattern))


def take_stream_digests(
    plan: BuildPlan,
    streams: Mapping[int, tuple[StreamDigest, dict[str, int]]],
    digests: DigestCache,
) -> None:
    """Sources' sha256 from the digests of the pass (rehashed if a file changed size meanwhile),
    and the plan's fingerprint."""
    for i, (stream, key) in streams.items():
        src = plan.sources[i]
        sha = stream.hexdigest()
        if stream.bytes != key["size"]:  # not read whole or changed: hash what is there now
            log.warning(
                "%s: read %d of %d bytes; hashing it again", src.path, stream.bytes, key["size"]
            )
            key, sha = file_key(src.path), sha256_of(src.path)
        src.sha256 = sha
        digests.put(src.path, sha, key)
    plan.fingerprint = plan_fingerprint(plan)


def encode_sources(
    plan: BuildPlan,
    encoder: OnePassEncoder,
    streams: Mapping[int, tuple[StreamDigest, Any]] | None = None,
) -> list[tuple[Source, Reader]]:
    """Step 2: one pass over every file, encoding each batch (time split: codes at the end);
    `streams[i]` gets the bytes of source i as they are read."""
    # Formats that can look categorical bytes up in the encoder's tables skip building strings.
    extra = (
        {"vocab_tables": encoder.vocab_tables} if READERS[plan.format].accepts_vocab_tables else {}
    )
    streams = streams or {}
    readers = []
    for i, src in enumerate(plan.sources):
        digest = {"digest": streams[i][0]} if i in streams else {}
        readers.append((src, plan.reader(src, **extra, **digest)))
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
    plan: BuildPlan,
    writer: StoreWriter,
    pre: Preprocessor,
    readers: Sequence[tuple[Source, Any]],
    final: Path | None = None,
) -> EncodedStore:
    """Step 3: save the preprocessor next to the arrays and write meta.json (then the store
    moves to `final`, when its place was not known before the pass)."""
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
    return writer.finish(meta, files={PREPROCESSOR: sha256_file(pre_path)}, final_path=final)


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
