"""Inputs at scale: compressed streams, lists and globs, split by file, bounded line length,
libffm field inference, and the one-pass build against Preprocessor.fit + transform."""

from __future__ import annotations

import bz2
import gzip
import lzma
import tracemalloc

import numpy as np
import pyarrow as pa
import pytest

from cvr.data.build import build_file_store, plan_build, split_codes
from cvr.data.errors import DataError
from cvr.data.preprocess import Preprocessor
from cvr.data.readers import open_reader
from cvr.data.readers.lines import iter_line_blocks
from cvr.data.schema import Schema, SchemaError

FIELDS = [{"name": "n1", "kind": "numeric"}, {"name": "c1"}, {"name": "c2"}]
SCHEMA = {"fields": FIELDS, "labels": ["click"]}


def _rows(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [
        f"{int(rng.random() < 0.3)}\t{int(rng.lognormal(1, 2))}\tu{int(rng.zipf(1.4)) % 300}"
        f"\tv{int(rng.integers(30))}"
        for _ in range(n)
    ]


def _csv(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def _build(tmp_path, path, split=None, **kw):
    schema = {**SCHEMA, "split": split or {"method": "random", "val": 0.1, "test": 0.1}}
    return build_file_store(
        "t",
        "csv",
        path=path,
        schema=schema,
        delimiter="\t",
        header=False,
        columns=["click", "n1", "c1", "c2"],
        cache_root=tmp_path / "cache",
        **kw,
    )


def _ids(store):
    return {s: np.asarray(store.ids(s)).tobytes() for s in ("train", "val", "test")}


@pytest.mark.parametrize(
    "suffix, compress",
    [
        (".gz", gzip.compress),
        (".bz2", bz2.compress),
        (".xz", lzma.compress),
        (".zst", None),
    ],
)
def test_compressed_files_read_as_streams(tmp_path, suffix, compress):
    lines = _rows(3000, 0)
    plain = _csv(tmp_path / "d.tsv", lines)
    packed = tmp_path / f"d.tsv{suffix}"
    if compress is None:
        with pa.output_stream(str(packed), compression="zstd") as out:
            out.write(plain.read_bytes())
    else:
        packed.write_bytes(compress(plain.read_bytes()))
    a, b = _build(tmp_path, plain), _build(tmp_path, packed)
    assert _ids(a) == _ids(b) and a.rows("train") > 2000
    assert b.info.sources[0].path == str(packed)


def test_corrupt_gzip_names_the_file(tmp_path, inflate):
    good = gzip.compress(("\n".join(_rows(5000, 1)) + "\n").encode())
    bad = tmp_path / "d.tsv.gz"
    bad.write_bytes(good[: len(good) // 2] + b"\x00garbage" * 100)
    with pytest.raises(DataError, match=r"d\.tsv\.gz: cannot read past line"):
        _build(tmp_path, bad)


def test_gzip_members_one_after_another_are_one_file(tmp_path, inflate):
    text = [("\n".join(_rows(3000, i)) + "\n").encode() for i in range(3)]
    path = tmp_path / "cat.tsv.gz"  # as `cat a.gz b.gz c.gz` makes it
    path.write_bytes(b"".join(gzip.compress(t) for t in text))
    blocks = list(iter_line_blocks(path, 1000, block_bytes=1 << 16))
    assert b"".join(b.buf[b.bounds[0] : b.bounds[-1]].tobytes() for b in blocks) == b"".join(text)


def test_glob_and_list_are_the_same_input(tmp_path):
    for i in range(3):
        _csv(tmp_path / f"day_{i}.tsv", _rows(800, i))
    by_glob = _build(tmp_path, str(tmp_path / "day_*.tsv"))
    by_list = _build(tmp_path, [str(tmp_path / f"day_{i}.tsv") for i in range(3)])
    assert by_glob.fingerprint == by_list.fingerprint
    assert sum(by_glob.rows(s) for s in ("train", "val", "test")) == 2400
    assert [s.path for s in by_glob.info.sources] == [
        str(tmp_path / f"day_{i}.tsv") for i in range(3)
    ]
    assert set(by_glob.meta["lines"]) == {"data/0", "data/1", "data/2"}


def test_errors_name_the_file_inside_the_glob_and_the_line(tmp_path):
    _csv(tmp_path / "day_0.tsv", _rows(50, 0))
    rows = _rows(50, 1)
    rows[16] = "1\tnot-a-number\tu1\tv1"
    _csv(tmp_path / "day_1.tsv", rows)
    with pytest.raises(DataError, match=r"day_1\.tsv:17: column n1: 'not-a-number'"):
        _build(tmp_path, str(tmp_path / "day_*.tsv"))
    with pytest.raises(FileNotFoundError, match=r"no file matches \(config key data.path\)"):
        _build(tmp_path, str(tmp_path / "nothing_*.tsv"))


def test_split_by_file_last_is_test_one_before_is_val(tmp_path):
    sizes = [300, 400, 500, 600]
    for i, n in enumerate(sizes):
        _csv(tmp_path / f"day_{i}.tsv", _rows(n, i))
    store = _build(tmp_path, str(tmp_path / "day_*.tsv"), split={"method": "by_file"})
    assert (store.rows("train"), store.rows("val"), store.rows("test")) == (700, 500, 600)
    assert [s.role for s in store.info.sources] == ["train", "train", "val", "test"]
    with pytest.raises(SchemaError, match="at least 3 files"):
        _build(tmp_path, str(tmp_path / "day_[01].tsv"), split={"method": "by_file"})


def _long_line_file(tmp_path, long_bytes):
    rows = _rows(20, 0)
    rows[2] = "1\t3\t" + "x" * long_bytes + "\tv1"
    return _csv(tmp_path / "long.tsv", rows)


@pytest.mark.parametrize("block_bytes", [1 << 24, 1 << 16])  # the long line within / across blocks
def test_over_long_lines_raise_or_are_counted(tmp_path, block_bytes):
    path = _long_line_file(tmp_path, 300_000)
    schema = Schema.from_dict(SCHEMA)
    opts = {"delimiter": "\t", "header": False, "columns": ["click", "n1", "c1", "c2"]}
    opts.update(max_line_bytes=100_000, block_bytes=block_bytes)
    with pytest.raises(
        DataError, match=r"long\.tsv:3: the line is longer than data.max_line_bytes"
    ):
        list(open_reader("csv", path, schema, **opts))
    reader = open_reader("csv", path, schema, on_error="skip", **opts)
    lines = np.concatenate([b.column("__line__").to_numpy() for b in reader])
    assert reader.skipped == {"line_too_long": 1}
    assert lines.tolist() == [1, 2, *range(4, 21)]  # numbering stays exact after the long line


def test_an_over_long_line_is_never_held_whole(tmp_path):
    path = _long_line_file(tmp_path, 40 << 20)
    tracemalloc.start()
    n = sum(
        len(b) for b in iter_line_blocks(path, 1000, block_bytes=1 << 20, max_line_bytes=1 << 20)
    )
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert n == 20
    assert peak < 12 << 20, f"peak {peak / 2**20:.1f} MiB for a 40 MiB line"


def _libffm(path, fields, rows=40, seed=0):
    rng = np.random.default_rng(seed)
    lines = [
        f"{int(rng.random() < 0.3)} "
        + " ".join(f"{f}:{int(rng.integers(50))}:1" for f in range(fields))
        for _ in range(rows)
    ]
    return _csv(path, lines)


def test_libffm_fields_are_inferred_and_a_mismatch_is_refused(tmp_path):
    train = _libffm(tmp_path / "tr.ffm", 10)
    test = _libffm(tmp_path / "te.ffm", 10, seed=1)
    split = {"method": "files", "val": 0.1, "test": 0.0}
    paths = {"train": str(train), "val": None, "test": str(test)}
    store = build_file_store(
        "f",
        "libffm",
        paths=paths,
        schema={"fields": "auto", "labels": ["click"], "split": split},
        cache_root=tmp_path / "c",
    )
    assert store.field_names == [f"f{i}" for i in range(10)]
    declared = {"fields": [f"f{i}" for i in range(18)], "labels": ["click"], "split": split}
    with pytest.raises(
        SchemaError, match=r"18 fields declared.*uses field numbers 0\.\.9; never used: 10\.\.17"
    ):
        build_file_store("f", "libffm", paths=paths, schema=declared, cache_root=tmp_path / "c")


def test_val_path_is_a_declared_key(tmp_path):
    from tests.helpers import compose_train

    cfg = compose_train(tmp_path, ["data=libffm", "data.paths.val=/data/val.ffm"])
    assert cfg.data.paths.val == "/data/val.ffm"


def test_one_pass_build_equals_fit_then_transform(tmp_path):
    """The provisional-id build against the obviously correct two-step reference."""
    rng = np.random.default_rng(5)
    lines = ["label,n1,n2,q,c1,c2"]
    for _ in range(5000):
        lines.append(
            f"{int(rng.random() < 0.3)},{'' if rng.random() < 0.1 else int(rng.lognormal(1, 2))},"
            f"{rng.normal():.3f},{rng.random():.4f},"
            f"{'' if rng.random() < 0.05 else 'é' + str(int(rng.zipf(1.3)) % 700)},"
            f"w{int(rng.integers(90))}"
        )
    path = _csv(tmp_path / "d.csv", lines)
    fields = [
        {"name": "n1", "kind": "numeric"},
        {"name": "n2", "kind": "numeric"},
        {"name": "q", "kind": "numeric"},
        {"name": "c1"},
        {"name": "c1h", "column": "c1"},  # a shared source column under another rule
        {"name": "c2"},
    ]
    kw = {
        "schema": {"fields": fields, "labels": ["click"], "split": {"val": 0.15, "test": 0.1}},
        "preprocess": {
            "min_count": {"c1": 3, "n1": 2},
            "numeric_rule": {"q": "quantile"},
            "hash_buckets": {"c1h": 64, "n2": 16},
        },
        "label_columns": {"click": "label"},
        "chunk_rows": 333,
    }
    store = build_file_store("r", "csv", path=str(path), cache_root=tmp_path / "c", **kw)
    plan = plan_build("r", "csv", path=str(path), **kw)
    batches = [(b, split_codes(plan, src, b)) for src in plan.sources for b in plan.reader(src)]
    pre = Preprocessor(plan.schema, plan.config).fit(b.filter(pa.array(c == 0)) for b, c in batches)
    assert Preprocessor.load(store.path / "preprocessor.json").to_dict() == pre.to_dict()
    for code, split in enumerate(("train", "val", "test")):
        expected = np.concatenate([pre.transform(b)[c == code] for b, c in batches])
        np.testing.assert_array_equal(np.asarray(store.ids(split)), expected)
