"""The store build's fast path against slow, obviously correct references.

The build looks categorical bytes up in `StringTable`s where they lie in the reader's line buffer
(`encode_spans`) and never builds their strings. Here: the table against a dict in first-seen
order, also with hashes truncated to a few bits so that distinct values collide all the time;
the reader's provisional ids against the strings the plain reader yields; and the whole build of
every real csv/tsv sample against `Preprocessor.fit` + `transform` over plain reader batches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from omegaconf import OmegaConf

from cvr.data.build import build_file_store, plan_build, split_codes, time_split_codes
from cvr.data.log_table import LogTable
from cvr.data.preprocess import Preprocessor
from cvr.data.readers import TIME_COLUMN, open_reader
from cvr.data.remap import remap_in_place, remap_split_rows, remap_table
from cvr.data.schema import Schema
from cvr.data.value_rules import criteo_log_keys, numbers_of
from cvr.data.vocab import StringTable

REPO = Path(__file__).resolve().parents[2]
# The real samples read by delimited readers (the formats that take vocab tables).
DELIMITED_SAMPLES = ["criteo", "criteo_csv", "avazu", "aliexpress", "aliccp", "movielens"]


def reference_ids(values: list[str | None], seen: dict[str, int]) -> list[int]:
    """Provisional ids by hand: 0 for missing, else 1, 2, ... in first-seen order."""
    out = []
    for v in values:
        if v is None:
            out.append(0)
        else:
            out.append(seen.setdefault(v, len(seen) + 1))
    return out


def _values(rng: np.random.Generator, n: int) -> list[str | None]:
    # Lengths 0..40 around the table's 8- and 16-byte words, shared prefixes, non-ASCII.
    base = ["", "a", "ab", "abcdefg", "abcdefgh", "abcdefghi", "0123456789abcdef"]
    base += ["0123456789abcdefX", "0123456789abcdefY", "é", "éé", "x" * 40, "x" * 39 + "y"]
    pool = base + [f"v{int(k)}" * int(1 + k % 5) for k in rng.integers(0, 3000, 400)]
    picks = rng.integers(0, len(pool), n)
    return [None if rng.random() < 0.05 else pool[i] for i in picks]


@pytest.mark.parametrize("hash_bits", [64, 3, 0])
def test_table_matches_first_seen_order_even_when_hashes_collide(hash_bits):
    rng = np.random.default_rng(hash_bits)
    table = StringTable(capacity=4, hash_bits=hash_bits)  # tiny: grows many times
    seen: dict[str, int] = {}
    for _ in range(5):
        values = _values(rng, 700)
        got = table.encode(pa.array(values, pa.large_string()))
        np.testing.assert_array_equal(got, reference_ids(values, seen))
    assert len(table) == len(seen)
    assert table.values().to_pylist() == list(seen)  # id i + 1 at position i


@pytest.mark.parametrize("hash_bits", [64, 2])
def test_spans_in_a_buffer_equal_the_strings(hash_bits):
    """encode_spans over a buffer with gaps (as tab-separated columns lie) vs the same values."""
    rng = np.random.default_rng(7)
    values = [v if v is not None else "" for v in _values(rng, 3000)]
    pieces, starts, ends, at = [], [], [], 0
    for v in values:
        raw = v.encode()
        pieces.append(raw + b"\t")
        starts.append(at)
        ends.append(at + len(raw))
        at += len(raw) + 1
    buf = np.frombuffer(b"".join(pieces), dtype=np.uint8)
    starts = np.array(starts, dtype=np.int32)
    starts[::97] = -1  # absent columns
    table = StringTable(capacity=8, hash_bits=hash_bits)
    got = table.encode_spans(buf, starts, np.array(ends, dtype=np.int32), True)
    expected = [None if s < 0 or v == "" else v for v, s in zip(values, starts, strict=True)]
    np.testing.assert_array_equal(got, reference_ids(expected, {}))
    # The last values sit at the very end of the buffer: the short-read path.
    assert got[-1] == reference_ids(expected, {})[-1]


def _rows_with_tables(fmt, path, schema, **options):
    """(strings by the plain reader, strings recovered from the ids of a reader with tables)."""
    plain = list(open_reader(fmt, path, schema, **options))
    cats = sorted({f.source for f in schema.fields if f.kind == "categorical"})
    tables = {c: StringTable(capacity=4) for c in cats}
    fast = list(open_reader(fmt, path, schema, vocab_tables=tables, **options))
    assert len(plain) == len(fast)
    for a, b in zip(plain, fast, strict=True):
        assert a.num_rows == b.num_rows
        np.testing.assert_array_equal(a.column("__line__"), b.column("__line__"))
        for c in cats:
            ids = b.column(c).to_numpy()
            values = tables[c].values().to_pylist()
            got = [values[i - 1] if i else None for i in ids.tolist()]
            assert got == a.column(c).to_pylist(), c
        for name in a.schema.names:
            if pa.types.is_floating(a.column(name).type):  # the fast path: NaN for missing
                assert b.column(name).null_count == 0, name
                np.testing.assert_array_equal(numbers_of(a.column(name)), b.column(name), name)
            elif name not in cats:
                assert a.column(name).equals(b.column(name)), name


def test_reader_ids_are_the_values_of_the_strings(tmp_path):
    """Quotes (the csv module's path), non-ASCII, bad UTF-8, short rows and bad labels, skipped."""
    lines = [b"label,c1,c2,n1"]
    rng = np.random.default_rng(3)
    for i in range(4000):
        c1 = ["a", "b", "", "\xc3\xa9t\xc3\xa9", '"q,uoted"', "x" * 20][i % 6]
        row = f"{int(rng.random() < 0.4)},{c1},w{int(rng.integers(50))},{int(rng.integers(9))}"
        lines.append(row.encode("latin-1") if "é" in row else row.encode())
    lines[10] = b"1,\xff\xfe,w1,3"  # not UTF-8
    lines[20] = b"1,a"  # too few columns
    lines[30] = b"7,a,w2,1"  # bad label
    path = tmp_path / "d.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    fields = [{"name": "c1"}, {"name": "c2"}, {"name": "n1", "kind": "numeric"}]
    schema = Schema.from_dict({"fields": fields, "labels": ["label"]})
    _rows_with_tables("csv", path, schema, on_error="skip", chunk_rows=333)
    _rows_with_tables("csv", path, schema, on_error="skip", quote_char=None)


def _sample_config(name: str, shared_data: Path, cache: Path) -> dict:
    cfg = OmegaConf.load(REPO / "conf" / "data" / f"{name}.yaml")
    paths = {"paths": {"shared_data": str(shared_data), "cache_dir": str(cache)}}
    data = OmegaConf.to_container(OmegaConf.merge(paths, {"data": cfg}).data, resolve=True)
    for key in ("_target_", "_convert_", "engine", "dask"):
        data.pop(key, None)
    return data


@pytest.mark.parametrize("name", DELIMITED_SAMPLES)
def test_real_sample_build_equals_fit_then_transform(name, shared_data, tmp_path):
    cfg = _sample_config(name, shared_data, tmp_path / "cache")
    store = build_file_store(**cfg)
    cfg.pop("cache_root")
    plan = plan_build(**cfg)
    batches = [(b, split_codes(plan, s, b)) for s in plan.sources for b in plan.reader(s)]
    rule = plan.schema.split
    if rule.method == "time":  # codes by rank over every row, known after the pass
        times = pa.concat_arrays([b.column(TIME_COLUMN) for b, _ in batches])
        codes = time_split_codes(times, rule.val, rule.test)
        cuts = np.cumsum([0] + [b.num_rows for b, _ in batches])
        batches = [(b, codes[cuts[i] : cuts[i + 1]]) for i, (b, _) in enumerate(batches)]
    pre = Preprocessor(plan.schema, plan.config).fit(b.filter(pa.array(c == 0)) for b, c in batches)
    assert Preprocessor.load(store.path / "preprocessor.json").to_dict() == pre.to_dict()
    for code, split in enumerate(("train", "val", "test")):
        expected = [pre.transform(b)[c == code] for b, c in batches]
        np.testing.assert_array_equal(np.asarray(store.ids(split)), np.concatenate(expected))


@pytest.mark.parametrize("layout", ["C", "F"])
def test_remap_split_rows_and_in_place_equal_remap_then_masks(layout):
    rng = np.random.default_rng(5)
    ids = np.asarray(rng.integers(0, 50, size=(1000, 4)), dtype=np.int32, order=layout)
    labels = rng.random((1000, 2)).astype(np.float32)
    codes = rng.integers(0, 3, size=1000).astype(np.int8)
    remaps = {0: rng.permutation(50).astype(np.int32), 2: rng.integers(0, 9, 50).astype(np.int32)}
    out, out_labels, bounds = remap_split_rows(ids, labels, codes, remaps, 3)
    assert out.flags.c_contiguous
    expected = ids.copy()
    for j, remap in remaps.items():  # the obvious reference: one fancy-indexing per column
        expected[:, j] = remap[ids[:, j]]
    for c in range(3):
        rows = slice(bounds[c], bounds[c + 1])
        np.testing.assert_array_equal(out[rows], expected[codes == c])
        np.testing.assert_array_equal(out_labels[rows], labels[codes == c])
    assert bounds[-1] == 1000
    in_place = ids.copy(order="C")
    remap_in_place(in_place, remap_table(4, remaps))
    np.testing.assert_array_equal(in_place, expected)


def test_log_table_ids_are_first_seen_criteo_log_keys():
    rng = np.random.default_rng(2)
    values = np.concatenate(
        [
            np.floor(rng.lognormal(1.0, 3.0, 20_000)),  # small integers: the direct path
            rng.normal(0, 1e6, 2000),  # fractions, negatives, large values
            [np.nan, 0.0, -0.0, 1.0, 2.0, 2.5, 3.0, 65535.0, 65536.0, -1.0, 1e300, -1e300],
        ]
    )
    rng.shuffle(values)
    table = LogTable(capacity=4)  # grows several times
    got = np.concatenate([table.encode(part) for part in np.array_split(values, 7)])
    keys = criteo_log_keys(values)
    first_seen: dict[int, int] = {}
    expected = [
        0 if np.isnan(v) else first_seen.setdefault(int(k), len(first_seen) + 1)
        for v, k in zip(values, keys, strict=True)
    ]
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(table.values(), list(first_seen))
