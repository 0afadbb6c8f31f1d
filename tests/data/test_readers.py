"""Readers: real samples of every format, chunking, and each kind of bad input."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from cvr.data.errors import DataError
from cvr.data.readers import CRITEO_COLUMNS, LINE_COLUMN, open_reader
from cvr.data.schema import Schema, SchemaError

CRITEO = Schema.from_dict(
    {
        "fields": [{"name": f"I{i}", "kind": "numeric"} for i in range(1, 14)]
        + [f"C{i}" for i in range(1, 27)]
    }
)
SMALL = Schema.from_dict({"fields": [{"name": "n", "kind": "numeric"}, "c"]})
FFM = Schema.from_dict({"fields": [f"f{i}" for i in range(3)]})


def read_all(reader) -> pa.Table:
    batches = list(reader)
    return pa.Table.from_batches(batches) if batches else pa.table({})


def write(tmp_path, name: str, data: bytes | str):
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def criteo_line(label="0", ints=None, cats=None) -> str:
    ints = ints if ints is not None else [str(i) for i in range(13)]
    cats = cats if cats is not None else [f"{i:08x}" for i in range(26)]
    return "\t".join([label, *ints, *cats])


# --- real samples -----------------------------------------------------------------------------


def test_criteo_tsv_sample_pads_stripped_lines(shared_data):
    path = shared_data / "criteo/kaggle_dac_head1000.tsv"
    raw = path.read_bytes().splitlines()
    short = sum(1 for line in raw if line.count(b"\t") + 1 < 40)
    assert short == 498  # the NOTICE's count: these are valid rows, not errors
    reader = open_reader("criteo_tsv", path, CRITEO)
    table = read_all(reader)
    assert table.num_rows == 1000 and reader.skipped == {} and reader.lines == 1000
    assert table.column(LINE_COLUMN).to_pylist() == list(range(1, 1001))
    assert table.schema.field("I1").type == pa.float64()
    assert table.schema.field("C1").type == pa.string()
    # Line 1 (from the file): label 0, I1 = 1, I12 empty -> missing, C22 empty -> missing.
    first = table.slice(0, 1).to_pylist()[0]
    assert first["click"] == 0.0 and first["I1"] == 1.0 and first["I5"] == 1382.0
    assert first["I12"] is None and first["C22"] is None and first["C1"] == "68fd1e64"
    # A stripped line: its trailing categoricals are missing.
    i = next(k for k, line in enumerate(raw) if line.count(b"\t") + 1 == 37)
    row = table.slice(i, 1).to_pylist()[0]
    assert row["C24"] is None and row["C25"] is None and row["C26"] is None
    assert set(table.column("click").to_pylist()) == {0.0, 1.0}


def test_chunking_does_not_change_the_rows(shared_data, tmp_path):
    path = shared_data / "criteo/kaggle_dac_head1000.tsv"
    whole = read_all(open_reader("criteo_tsv", path, CRITEO))
    for chunk_rows, block_bytes in [(97, 1 << 24), (65536, 5000)]:
        reader = open_reader(
            "criteo_tsv", path, CRITEO, chunk_rows=chunk_rows, block_bytes=block_bytes
        )
        batches = list(reader)
        assert max(b.num_rows for b in batches) <= chunk_rows
        assert pa.Table.from_batches(batches).equals(whole)
    # Blocks shorter than a line, and CRLF / lone CR terminators split across blocks.
    head = b"\r\n".join(path.read_bytes().splitlines()[:40]) + b"\r" + criteo_line().encode()
    small = write(tmp_path, "head.tsv", head)
    table = read_all(open_reader("criteo_tsv", small, CRITEO, chunk_rows=7, block_bytes=101))
    assert table.slice(0, 40).equals(whole.slice(0, 40))
    assert table.num_rows == 41 and table.column(LINE_COLUMN).to_pylist()[-1] == 41


def test_criteo_csv_sample(shared_data):
    reader = open_reader(
        "csv",
        shared_data / "criteo/kaggle_dac_sample200.csv",
        CRITEO,
        label_columns={"click": "label"},
    )
    table = read_all(reader)
    assert table.num_rows == 200
    assert table.column(LINE_COLUMN).to_pylist()[:2] == [2, 3]  # line 1 is the header
    assert table.column("I3").to_pylist()[0] == 260.0  # written as "260.0"
    assert table.column("click").to_numpy().mean() == pytest.approx(0.245)


def test_libffm_sample(shared_data):
    schema = Schema.from_dict({"fields": [f"f{i}" for i in range(18)]})
    path = shared_data / "libffm/criteo_small_train.ffm"
    # Fields 16 and 17 list several features on some lines: an error by default...
    with pytest.raises(DataError, match=r"criteo_small_train\.ffm:9: field 17 is given twice"):
        read_all(open_reader("libffm", path, schema))
    skip = open_reader("libffm", path, schema, on_error="skip")
    assert read_all(skip).num_rows + sum(skip.skipped.values()) == 200
    assert set(skip.skipped) == {"duplicate_field"}
    # ...or the first feature of the field is kept.
    table = read_all(open_reader("libffm", path, schema, duplicate_fields="first"))
    assert table.num_rows == 200
    first = table.slice(0, 1).to_pylist()[0]
    # "1 0:0:0.3651 2:1163:0.3651 ... 17:2434:0.50000 16:7755:0.50000"; field 1 absent.
    assert first["click"] == 1.0 and first["f0"] == "0" and first["f1"] is None
    assert first["f2"] == "1163" and first["f16"] == "7755" and first["f17"] == "2434"


def test_movielens_sample_space_separated(shared_data):
    schema = Schema.from_dict({"fields": ["user", "item", "tag"]})
    reader = open_reader(
        "csv",
        shared_data / "movielens_tag/ml_tag_sample.txt",
        schema,
        delimiter=" ",
        header=False,
        columns=["click", "user", "item", "tag"],
    )
    table = read_all(reader)
    assert table.num_rows == 12800
    assert table.slice(0, 1).to_pylist()[0] == {
        "user": "0",
        "item": "1",
        "tag": "2",
        "click": 0.0,
        LINE_COLUMN: 1,
    }


def test_parquet_round_trip(tmp_path):
    df = pd.DataFrame(
        {
            "n": [1.5, None, 3.0, float("nan")],
            "c": ["a", None, "b", "a"],
            "click": [0, 1, 1, 0],
            "unused": [9, 9, 9, 9],
        }
    )
    path = tmp_path / "d.parquet"
    df.to_parquet(path)
    table = read_all(open_reader("parquet", path, SMALL, chunk_rows=3))
    assert table.column("n").to_pylist() == [1.5, None, 3.0, None]
    assert table.column("c").to_pylist() == ["a", None, "b", "a"]
    assert table.column(LINE_COLUMN).to_pylist() == [1, 2, 3, 4]
    assert "unused" not in table.column_names


def test_parquet_bad_label_and_missing_column(tmp_path):
    path = tmp_path / "d.parquet"
    pd.DataFrame({"n": [1.0, 2.0, 3.0], "c": ["a", "b", "c"], "click": [0, 1, 2]}).to_parquet(path)
    with pytest.raises(DataError, match=r"d\.parquet:3: label 'click' must be 0 or 1, got '2'"):
        read_all(open_reader("parquet", path, SMALL))
    pd.DataFrame({"n": [1.0], "click": [0]}).to_parquet(path)
    with pytest.raises(DataError, match=r"\['c'\] not found; the file has \['n', 'click'\]"):
        read_all(open_reader("parquet", path, SMALL))


# --- bad input ----------------------------------------------------------------------------------


def test_truncated_criteo_line(tmp_path):
    good = criteo_line()
    cut = "\t".join(good.split("\t")[:12])
    path = write(tmp_path, "criteo.tsv", "\n".join([good] * 16 + [cut, good]) + "\n")
    with pytest.raises(DataError, match=r"criteo\.tsv:17: expected 40 columns, got 12"):
        read_all(open_reader("criteo_tsv", path, CRITEO))
    reader = open_reader("criteo_tsv", path, CRITEO, on_error="skip")
    assert read_all(reader).num_rows == 17
    assert reader.skipped == {"wrong_column_count": 1}


def test_too_many_columns(tmp_path):
    path = write(tmp_path, "criteo.tsv", criteo_line() + "\n" + criteo_line() + "\textra\n")
    with pytest.raises(DataError, match=r"criteo\.tsv:2: expected 40 columns, got 41"):
        read_all(open_reader("criteo_tsv", path, CRITEO))


def test_non_numeric_value(tmp_path):
    ints = [str(i) for i in range(13)]
    ints[2] = "abc"
    lines = [criteo_line()] * 4 + [criteo_line(ints=ints)]
    path = write(tmp_path, "criteo.tsv", "\n".join(lines))
    with pytest.raises(DataError, match=r"criteo\.tsv:5: column I3: 'abc' is not a number"):
        read_all(open_reader("criteo_tsv", path, CRITEO))
    reader = open_reader("criteo_tsv", path, CRITEO, on_error="skip")
    assert read_all(reader).num_rows == 4 and reader.skipped == {"bad_number": 1}


@pytest.mark.parametrize("label", ["2", "-1", "0.5", "", "click"])
def test_bad_labels(tmp_path, label):
    lines = [criteo_line()] * 8 + [criteo_line(label=label)]
    path = write(tmp_path, "criteo.tsv", "\n".join(lines) + "\n")
    with pytest.raises(
        DataError, match=rf"criteo\.tsv:9: label 'click' must be 0 or 1, got '{label}'"
    ):
        read_all(open_reader("criteo_tsv", path, CRITEO))
    reader = open_reader("criteo_tsv", path, CRITEO, on_error="skip")
    assert read_all(reader).num_rows == 8 and reader.skipped == {"bad_label": 1}


def test_skip_counts_each_reason_once(tmp_path):
    text = "n,c,click\n1,a,0\n1,a\nx,a,1\n1,a,2\n\n1,a,-1\nx,a,7\n\xff,a,1\n2,b,1\n"
    path = write(tmp_path, "d.csv", text.encode("latin-1"))
    reader = open_reader("csv", path, SMALL, on_error="skip")
    table = read_all(reader)
    assert table.column(LINE_COLUMN).to_pylist() == [2, 10]
    # Line 8 ("x,a,7") is both a bad number and a bad label: counted once, as bad_number.
    # Line 6 is blank: one column where three are expected.
    assert reader.skipped == {
        "wrong_column_count": 2,
        "bad_number": 2,
        "bad_label": 2,
        "bad_encoding": 1,
    }
    assert reader.rows + sum(reader.skipped.values()) == reader.lines == 9


def test_first_problem_in_line_order_is_raised(tmp_path):
    path = write(tmp_path, "d.csv", "n,c,click\n1,a,0\n1,a,5\nzz,a,0\n")
    with pytest.raises(DataError, match=r"d\.csv:3: label"):
        read_all(open_reader("csv", path, SMALL))


def test_empty_and_header_only_files(tmp_path):
    for name, data in [("empty.csv", b""), ("header.csv", b"n,c,click\n")]:
        path = write(tmp_path, name, data)
        with pytest.raises(DataError, match=rf"{name}: no rows"):
            read_all(open_reader("csv", path, SMALL))
    path = write(tmp_path, "empty.tsv", b"")
    with pytest.raises(DataError, match=r"empty\.tsv: no rows"):
        read_all(open_reader("criteo_tsv", path, CRITEO))


def test_missing_file_names_path_and_config_key(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(FileNotFoundError, match=r"nope\.csv: data file not found .*data\.path"):
        read_all(open_reader("csv", path, SMALL))


def test_missing_header_column_lists_the_header(tmp_path):
    path = write(tmp_path, "d.csv", "n,x,click\n1,a,0\n")
    with pytest.raises(
        DataError, match=r"\['c'\] not found in the header; it has \['n', 'x', 'click'\]"
    ):
        read_all(open_reader("csv", path, SMALL))


def test_quotes_crlf_bom_and_missing_spellings(tmp_path):
    text = '\ufeffn,c,click\r\n1,"a,b",0\r\nNaN,"say ""hi""",1\r\n,,1\r\n"2",c,1'
    table = read_all(open_reader("csv", write(tmp_path, "d.csv", text), SMALL))
    assert table.column("c").to_pylist() == ["a,b", 'say "hi"', None, "c"]
    assert table.column("n").to_pylist() == [1.0, None, None, 2.0]
    assert table.column(LINE_COLUMN).to_pylist() == [2, 3, 4, 5]


def test_unbalanced_quote_is_a_row_problem(tmp_path):
    path = write(tmp_path, "d.csv", 'n,c,click\n1,"abc,0\n1,a,1\n')
    with pytest.raises(DataError, match=r"d\.csv:2: cannot split the line on quotes"):
        read_all(open_reader("csv", path, SMALL))
    reader = open_reader("csv", path, SMALL, on_error="skip")
    assert read_all(reader).num_rows == 1 and reader.skipped == {"wrong_column_count": 1}


def test_overflowing_number_is_bad(tmp_path):
    path = write(tmp_path, "d.csv", "n,c,click\n1e400,a,0\n")
    with pytest.raises(DataError, match=r"column n: '1e400' is not a number"):
        read_all(open_reader("csv", path, SMALL))


def test_libffm_row_problems(tmp_path):
    lines = [
        "1 0:a:1 1:b:1 2:c:1",  # 1 ok
        "0 0:a:1",  # 2 ok, fields 1 and 2 missing
        "1 0:a",  # 3 malformed token
        "1 0:a:x",  # 4 value not a number
        "1 7:a:1",  # 5 unknown field
        "1 0:a:1 0:b:1",  # 6 duplicate
        "2 0:a:1",  # 7 bad label
        "1 0::1",  # 8 empty feature
    ]
    path = write(tmp_path, "d.ffm", "\n".join(lines) + "\n")
    reader = open_reader("libffm", path, FFM, on_error="skip")
    table = read_all(reader)
    assert table.to_pydict() == {
        "f0": ["a", "a"],
        "f1": ["b", None],
        "f2": ["c", None],
        "click": [1.0, 0.0],
        LINE_COLUMN: [1, 2],
    }
    assert reader.skipped == {
        "bad_token": 3,
        "unknown_field": 1,
        "duplicate_field": 1,
        "bad_label": 1,
    }
    expected = {
        3: "malformed token '0:a'",
        5: "field 7 is not in the schema",
        6: "field 0 is given twice",
        7: "label 'click' must be 0 or 1, got '2'",
    }
    for line, message in expected.items():
        path = write(tmp_path, "one.ffm", "\n".join([lines[0]] * (line - 1) + [lines[line - 1]]))
        with pytest.raises(DataError, match=rf"one\.ffm:{line}: {message}"):
            read_all(open_reader("libffm", path, FFM))


def test_config_errors(tmp_path):
    path = write(tmp_path, "d.csv", "n,c,click\n1,a,0\n")
    with pytest.raises(SchemaError, match=r"data\.format"):
        open_reader("xml", path, SMALL)
    with pytest.raises(ValueError, match=r"data\.on_error"):
        open_reader("csv", path, SMALL, on_error="ignore")
    with pytest.raises(SchemaError, match=r"data\.columns"):
        open_reader("csv", path, SMALL, header=False)
    with pytest.raises(SchemaError, match="libffm field columns"):
        open_reader("libffm", path, SMALL)
    with pytest.raises(SchemaError, match="bad option"):
        open_reader("csv", path, SMALL, delimeter=";")


def test_criteo_column_names():
    assert len(CRITEO_COLUMNS) == 40
    assert CRITEO_COLUMNS[:2] == ("label", "I1") and CRITEO_COLUMNS[-1] == "C26"
