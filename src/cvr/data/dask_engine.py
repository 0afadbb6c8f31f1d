"""`data.engine=dask`: fit the vocabularies and encode the store with Dask distributed.

    data.engine=dask data.dask.address=tcp://scheduler:8786   # an existing cluster
    data.engine=dask data.dask.workers=4                      # a LocalCluster for this run

The inputs are cut into blocks: whole files, and plain (uncompressed) files larger than
`data.dask.block_bytes` into byte ranges that start after an LF. The workers must see the files
at the same paths (a shared filesystem); the store is written by the client, under its
cache_root. Three rounds of tasks, each block one task:

1. count the lines of each block (and collect the time column for a time split), so every block
   knows the number of its first line and the split of each of its rows;
2. fit: each block returns the value counts of its train rows (and the train values of quantile
   fields); the client merges them into the Preprocessor exactly as `Preprocessor.fit` does;
3. encode: each block returns its ids, labels and split codes; the client appends them in block
   order.

The result is the store the local engine builds: the same fingerprint (the engine is not part of
it), preprocessor.json and arrays (tested on a 2-worker LocalCluster).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cvr.data.build import (
    PREPROCESSOR,
    SPLITS,
    TIME_COLUMN,
    BuildPlan,
    Source,
    check_train_rows,
    finish_store,
    log_summary,
    split_codes,
    time_split_codes,
)
from cvr.data.errors import merge_counts
from cvr.data.preprocess import Preprocessor
from cvr.data.readers.lines import COMPRESSED_SUFFIXES, line_aligned_ranges
from cvr.data.schema import SchemaError
from cvr.data.store import EncodedStore, StoreWriter
from cvr.data.value_rules import QUANTILE_SAMPLE, StrideSample, numbers_of, quantile_boundaries

log = logging.getLogger(__name__)

OPTIONS = ("address", "workers", "threads_per_worker", "processes", "block_bytes", "window")
DEFAULT_BLOCK_BYTES = 64 << 20


@dataclass
class Block:
    """One task's share of the input: a source file, or a byte range of it."""

    source: int
    byte_range: tuple[int, int] | None
    first_line: int = 1
    header: list[str] | None = None  # the file's column names, for blocks after the first
    codes: np.ndarray | None = None  # split codes, for a time split


@dataclass
class _Skipped:
    lines: int
    skipped: dict[str, int]


def build_with_dask(plan: BuildPlan, final: Path, options: Mapping[str, Any]) -> EncodedStore:
    """Build the store of `plan` at `final` over a Dask cluster (see the module docstring)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise SchemaError(f"data.dask: unknown keys {unknown}; expected some of {list(OPTIONS)}")
    from dask.distributed import Client, LocalCluster

    cluster = None
    if options.get("address"):
        client = Client(options["address"])
    else:
        cluster = LocalCluster(
            n_workers=int(options.get("workers") or 2),
            threads_per_worker=int(options.get("threads_per_worker") or 1),
            processes=bool(options.get("processes", True)),
            dashboard_address=None,
        )
        client = Client(cluster)
    try:
        return _build(client, plan, final, options)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _build(client: Any, plan: BuildPlan, final: Path, options: Mapping[str, Any]) -> EncodedStore:
    window = int(options.get("window") or 2 * max(len(client.scheduler_info()["workers"]), 1))
    blocks = plan_blocks(plan, int(options.get("block_bytes") or DEFAULT_BLOCK_BYTES))
    log.info("dask: %d blocks over %s", len(blocks), client)
    time_split = plan.schema.split.method == "time"
    # Round 1: line counts (and times), so that each block knows its first line.
    counted = list(_ordered(client, _count_block, plan, blocks, window))
    times = []
    for src_index in range(len(plan.sources)):
        line = 1
        for block, (n_lines, block_times) in zip(blocks, counted, strict=True):
            if block.source == src_index:
                block.first_line = line
                line += n_lines
                times.append(block_times)
    if time_split:
        rule = plan.schema.split
        all_times = pa.concat_arrays(times) if times else pa.array([], pa.string())
        codes = time_split_codes(all_times, rule.val, rule.test)
        at = 0
        for block, t in zip(blocks, times, strict=True):
            block.codes, at = codes[at : at + len(t)], at + len(t)

    # Round 2: fit.
    pre = Preprocessor(plan.schema, plan.config)
    encoders = pre.blank_encoders()
    parts: dict[int, list[pa.Table]] = {j: [] for j, e in enumerate(encoders) if e.rule == "vocab"}
    samples = {
        j: StrideSample(QUANTILE_SAMPLE) for j, e in enumerate(encoders) if e.rule == "quantile"
    }
    train_rows = 0
    for rows, counts, values in _ordered(client, _fit_block, plan, blocks, window):
        # Value counts merge exactly; quantile values arrive in file order, as when local.
        train_rows += rows
        for j, table in counts.items():
            parts[j].append(table)
        for j, v in values.items():
            samples[j].add(v)
    fitted = _fitted(pre, encoders, parts, samples)

    # Round 3: encode, appended in block order.
    writer = StoreWriter(final, plan.schema.num_fields, len(plan.schema.labels))
    try:
        per_source = [_Skipped(0, {}) for _ in plan.sources]
        pre_dict = fitted.to_dict()
        for block, (ids, labels, codes, lines, skipped) in zip(
            blocks, _ordered(client, _encode_block, (plan, pre_dict), blocks, window), strict=True
        ):
            for code, split in enumerate(SPLITS):
                mask = codes == code
                if mask.any():
                    writer.append(split, ids[mask], labels[mask])
            per_source[block.source].lines += lines
            merge_counts(per_source[block.source].skipped, skipped)
        readers = [(src, r) for src, r in zip(plan.sources, per_source, strict=True)]
        check_train_rows(plan, train_rows, readers)
        store = finish_store(plan, writer, fitted, readers)
    except BaseException:
        writer.abort()
        raise
    log_summary(store)
    return store


def plan_blocks(plan: BuildPlan, block_bytes: int) -> list[Block]:
    """Whole files, and byte ranges of large plain text files (in file order)."""
    blocks: list[Block] = []
    for i, src in enumerate(plan.sources):
        splittable = plan.format != "parquet" and src.path.suffix.lower() not in COMPRESSED_SUFFIXES
        if not splittable or src.path.stat().st_size <= block_bytes:
            blocks.append(Block(i, None))
            continue
        header = None
        if plan.format == "csv" and plan.format_options.get("header", True):
            header = plan.reader(src).read_header()
        for k, rng in enumerate(line_aligned_ranges(src.path, block_bytes)):
            blocks.append(Block(i, rng, header=header if k else None))
    return blocks


def _ordered(
    client: Any, fn: Callable, args: Any, blocks: Sequence[Block], window: int
) -> Iterator[Any]:
    """fn(args, block) for every block on the cluster, results in block order, at most
    `window` in flight (the client holds only that many results)."""
    futures: list[Any] = []
    nxt = 0
    for i in range(len(blocks)):
        while nxt < len(blocks) and nxt < i + window:
            futures.append(client.submit(fn, args, blocks[nxt], pure=False))
            nxt += 1
        yield futures[i].result()
        futures[i] = None


def _reader(plan: BuildPlan, block: Block):
    src: Source = plan.sources[block.source]
    extra: dict[str, Any] = {}
    if block.byte_range is not None:
        extra = {"byte_range": block.byte_range, "first_line": block.first_line}
        if block.header is not None:
            extra.update(header=False, columns=plan.format_options.get("columns") or block.header)
    return src, plan.reader(src, **extra)


# --- the tasks (run on the workers) ---------------------------------------------------------------


def _count_block(plan: BuildPlan, block: Block) -> tuple[int, pa.Array]:
    """(lines, times of the valid rows) of a block. Reading validates rows like the encode round
    does, so a bad row fails here already under on_error=raise."""
    _, reader = _reader(plan, block)
    times = []
    for batch in reader:
        if TIME_COLUMN in batch.schema.names:
            times.append(batch.column(TIME_COLUMN))
    t = pa.concat_arrays(times) if times else pa.array([], pa.string())
    return reader.lines + getattr(reader, "header_lines", 0), t


def _fit_block(plan: BuildPlan, block: Block) -> tuple[int, dict[int, pa.Table], dict]:
    """(train rows, {field: value counts table}, {field: train values}) of a block."""
    encoders = Preprocessor(plan.schema, plan.config).blank_encoders()
    counts: dict[int, list[pa.Table]] = {j: [] for j, e in enumerate(encoders) if e.rule == "vocab"}
    values: dict[int, list[np.ndarray]] = {
        j: [] for j, e in enumerate(encoders) if e.rule == "quantile"
    }
    rows = 0
    src, reader = _reader(plan, block)
    at = 0
    for batch in reader:
        codes = split_codes(plan, src, batch)
        if codes is None:
            codes = block.codes[at : at + batch.num_rows]
        at += batch.num_rows
        train = batch.filter(pa.array(codes == 0))
        rows += train.num_rows
        if not train.num_rows:
            continue
        for j in counts:
            strings = Preprocessor._categories(train, encoders[j])
            vc = pc.value_counts(strings.drop_null() if strings.null_count else strings)
            counts[j].append(
                pa.table({"v": vc.field("values").cast(pa.large_string()), "c": vc.field("counts")})
            )
        for j in values:
            v = numbers_of(train.column(encoders[j].source))
            values[j].append(v[~np.isnan(v)])
    merged = {j: _merge(parts) for j, parts in counts.items()}
    return rows, merged, {j: np.concatenate(v) if v else np.zeros(0) for j, v in values.items()}


def _encode_block(args: tuple[BuildPlan, dict], block: Block) -> tuple:
    """(ids, labels, codes, lines, skipped) of a block under the fitted preprocessor."""
    plan, pre_dict = args
    pre = Preprocessor.from_dict(pre_dict)
    src, reader = _reader(plan, block)
    ids, labels, codes = [], [], []
    at = 0
    for batch in reader:
        c = split_codes(plan, src, batch)
        if c is None:
            c = block.codes[at : at + batch.num_rows]
        at += batch.num_rows
        ids.append(pre.transform(batch))
        labels.append(
            np.column_stack(
                [batch.column(lbl).to_numpy(zero_copy_only=False) for lbl in plan.schema.labels]
            ).astype(np.float32)
        )
        codes.append(np.asarray(c, dtype=np.int8))
    f, n_labels = plan.schema.num_fields, len(plan.schema.labels)
    return (
        np.concatenate(ids) if ids else np.zeros((0, f), np.int32),
        np.concatenate(labels) if labels else np.zeros((0, n_labels), np.float32),
        np.concatenate(codes) if codes else np.zeros(0, np.int8),
        reader.lines,
        dict(reader.skipped),
    )


# --- merging on the client ------------------------------------------------------------------------


def _merge(parts: Sequence[pa.Table]) -> pa.Table:
    if not parts:
        return pa.table({"v": pa.array([], pa.large_string()), "c": pa.array([], pa.int64())})
    # Copied into fresh buffers: tables unpickled from workers can be misaligned for Acero.
    table = pa.concat_tables(parts)
    table = pa.table(
        {
            name: pa.concat_arrays([*table[name].chunks, pa.array([], kind)])
            for name, kind in (("v", pa.large_string()), ("c", pa.int64()))
        }
    )
    return table.group_by("v").aggregate([("c", "sum")]).rename_columns(["v", "c"])


def _fitted(
    pre: Preprocessor,
    encoders: list,
    parts: Mapping[int, list[pa.Table]],
    samples: Mapping[int, StrideSample],
) -> Preprocessor:
    for j, tables in parts.items():
        table = _merge(tables)
        table = table.filter(pc.greater_equal(table["c"], encoders[j].min_count))
        table = table.sort_by([("c", "descending"), ("v", "ascending")])
        encoders[j].vocab = table["v"].to_pylist()
    for j, sample in samples.items():
        buckets = int(pre.config.get("buckets", encoders[j].name))
        encoders[j].boundaries = quantile_boundaries(sample.values, buckets)
    return Preprocessor.from_encoders(pre.schema, pre.config, encoders)


__all__ = ["PREPROCESSOR", "build_with_dask", "plan_blocks"]
