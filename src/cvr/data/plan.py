"""A build's plan: the inputs resolved, the config validated, the fingerprint (step 1).

`plan_build` resolves `data.path` / `data.paths` (`cvr.data.sources`), checks the schema,
preprocess config and reader options before anything is read, and (unless told not to) hashes
the inputs into the store fingerprint (`cvr.data.fingerprint`).
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from cvr.data.arrow_numpy import to_numpy
from cvr.data.encode import OnePassEncoder
from cvr.data.errors import check_on_error
from cvr.data.fingerprint import DigestCache, file_key, sha256_of, store_fingerprint
from cvr.data.preprocess import PreprocessConfig, Preprocessor
from cvr.data.readers import DEFAULT_CHUNK_ROWS, LINE_COLUMN, READERS, Reader, open_reader
from cvr.data.remap import remap_in_place, remap_split_rows, remap_table
from cvr.data.schema import Schema, SchemaError
from cvr.data.sources import Source, libffm_schema, plain, resolve_sources, split_rule
from cvr.data.splits import source_split_codes
from cvr.data.store import SPLITS

log = logging.getLogger(__name__)


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


def split_codes(plan: BuildPlan, src: Source, batch: pa.RecordBatch) -> np.ndarray | None:
    """Split codes of a batch of `src`, or None for a time split (known only at the end)."""
    lines = to_numpy(batch.column(LINE_COLUMN))
    return source_split_codes(plan.schema.split, plan.has_val_file, src, lines)


def plan_build(
    name: str,
    format: str,
    path: Any = None,
    paths: Mapping[str, Any] | None = None,
    schema: Schema | Mapping[str, Any] | None = None,
    preprocess: PreprocessConfig | Mapping[str, Any] | None = None,
    on_error: str = "raise",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    hash_inputs: bool = True,
    **format_options: Any,
) -> BuildPlan:
    """Resolve the inputs, validate the config and (`hash_inputs`) hash the files: the
    fingerprint step. Without `hash_inputs`, `hash_sources` or the pass fills them in."""
    if schema is None:
        raise SchemaError("data.schema: missing")
    check_on_error(on_error)
    format_options = plain(format_options)
    schema_cfg = schema if isinstance(schema, Schema) else plain(schema)
    rule = schema_cfg.split if isinstance(schema_cfg, Schema) else split_rule(schema_cfg)
    sources = resolve_sources(rule, plain(path), plain(paths))
    if format == "libffm":
        schema_cfg = libffm_schema(schema_cfg, sources, format_options.get("max_line_bytes"))
    elif not isinstance(schema_cfg, Schema) and schema_cfg.get("fields") == "auto":
        raise SchemaError("data.schema.fields: `auto` is only for format libffm")
    schema = schema_cfg if isinstance(schema_cfg, Schema) else Schema.from_dict(schema_cfg)
    config = (
        preprocess
        if isinstance(preprocess, PreprocessConfig)
        else PreprocessConfig.from_dict(plain(preprocess))
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
    if hash_inputs:
        hash_sources(plan)
    return plan


def hash_sources(plan: BuildPlan, digests: DigestCache | None = None, warm: bool = False) -> None:
    """Hash the sources whose sha256 is not known yet (remembered in `digests`) and set the
    plan's fingerprint. `warm`: meanwhile, `warm_up` runs in a thread (`plan.warm_thread`)."""
    missing = [src for src in plan.sources if not src.sha256]
    if warm and missing:
        plan.warm_thread = threading.Thread(target=warm_up, args=(plan,), daemon=True)
        plan.warm_thread.start()
    for src in missing:
        key = file_key(src.path)
        src.sha256 = sha256_of(src.path)
        if digests is not None:
            digests.put(src.path, src.sha256, key)
    plan.fingerprint = plan_fingerprint(plan)


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
            one = np.zeros((1, 1), dtype=np.int32)
            remap_split_rows(one, one.astype(np.float32), one[0], {0: one[0]}, len(SPLITS))
            remap_in_place(one.copy(), remap_table(1, {0: one[0]}))
    except Exception:  # a warm-up only: the build itself reports any problem
        log.debug("warm-up failed", exc_info=True)


def plan_fingerprint(plan: BuildPlan) -> str:
    """The store fingerprint of a plan whose sources' sha256 are known."""
    by_key: dict[str, list[str]] = {}
    for src in plan.sources:
        by_key.setdefault(src.role or "data", []).append(src.sha256)
    return store_fingerprint(
        plan.format,
        plan.format_options,
        by_key,
        plan.schema.to_dict(),
        plan.config.to_dict(),
        plan.on_error,
    )
