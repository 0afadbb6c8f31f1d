"""build_file_store: every real sample through its config, splits, caching, failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cvr.data.build import build_file_store, random_split_codes
from cvr.data.errors import DataError
from cvr.data.fingerprint import DIGESTS
from cvr.data.preprocess import Preprocessor
from cvr.data.store import SPLITS, EncodedStore

REPO = Path(__file__).resolve().parents[2]

# Valid rows in each real sample (its lines minus headers); every one must land in a split.
SAMPLES = {
    "criteo": 1000,
    "criteo_csv": 200,
    "avazu": 999,
    "libffm": 400,
    "aliexpress": 2000,
    "aliccp": 200,
    "movielens": 12800,
}


def data_config(name: str, shared_data, cache_dir):
    cfg = OmegaConf.load(REPO / "conf" / "data" / f"{name}.yaml")
    paths = {"paths": {"shared_data": str(shared_data), "cache_dir": str(cache_dir)}}
    return OmegaConf.merge(paths, {"data": cfg}).data


def build_sample(name, shared_data, cache_dir) -> EncodedStore:
    return instantiate(data_config(name, shared_data, cache_dir))


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_real_sample_builds_from_its_config(name, shared_data, tmp_path):
    store = build_sample(name, shared_data, tmp_path)
    assert sum(store.rows(s) for s in SPLITS) == SAMPLES[name]
    assert store.rows("train") > 0 and store.rows("test") > 0
    assert store.meta["skipped"] == {}
    cards = np.array(store.cardinalities)
    assert len(cards) == len(store.field_names) and (cards >= 2).all()
    for split in SPLITS:
        ids = np.asarray(store.ids(split))
        assert ids.dtype == np.int32 and ids.shape == (store.rows(split), len(cards))
        assert (ids >= 0).all() and (ids < cards).all()
        labels = np.asarray(store._load(split, "labels"))
        assert set(np.unique(labels)) <= {0.0, 1.0}
    # The preprocessor is in the store, checksummed, and agrees with meta.json.
    assert "preprocessor.json" in store.meta["files"]
    EncodedStore.open(store.path, verify=True)
    pre = Preprocessor.load(store.path / "preprocessor.json")
    assert pre.cardinalities == store.cardinalities
    # Every vocabulary id is used in train: vocabularies are fitted on the train rows alone.
    train = np.asarray(store.ids("train"))
    for j, enc in enumerate(pre.encoders):
        if enc.rule == "vocab":
            assert len(np.unique(train[:, j][train[:, j] > 0])) == cards[j] - 1, enc.name


def test_labels_of_multi_task_samples(shared_data, tmp_path):
    store = build_sample("aliccp", shared_data, tmp_path)
    assert store.label_names == ["click", "conversion"] and store.meta["label"] == "conversion"
    raw = pd.read_csv(shared_data / "aliccp" / "train.csv")
    np.testing.assert_array_equal(store.labels("train", "conversion"), raw["purchase"])
    np.testing.assert_array_equal(store.labels("train", "click"), raw["click"])
    # Conversion implies click in AliExpress (NOTICE.md); the store keeps that.
    store = build_sample("aliexpress", shared_data, tmp_path)
    for split in SPLITS:
        click, conv = store.labels(split, "click"), store.labels(split, "conversion")
        assert (conv <= click).all()


def test_cardinalities_match_counts_in_the_raw_file(shared_data, tmp_path):
    store = build_sample("criteo", shared_data, tmp_path)  # min_count 2, random split seed 0
    cols = ["label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))]
    raw = pd.read_csv(
        shared_data / "criteo/kaggle_dac_head1000.tsv",
        sep="\t",
        header=None,
        names=cols,
        dtype=str,
        keep_default_na=False,
    )
    codes = random_split_codes(np.arange(1, 1001), seed=0, val=0.1, test=0.1)
    train = raw[codes == 0]
    assert len(train) == store.rows("train")
    for j, name in enumerate(store.field_names):
        if not name.startswith("C"):
            continue
        counts = train[name][train[name] != ""].value_counts()
        assert store.cardinalities[j] == (counts >= 2).sum() + 1, name


def write_csv(path, rows):
    pd.DataFrame(rows, columns=["c", "n", "click"]).to_csv(path, index=False)
    return path


SCHEMA = {
    "fields": ["c", {"name": "n", "kind": "numeric"}],
    "labels": ["click"],
    "split": {"method": "files"},
}


def files_store(tmp_path, cache, **kw):
    paths = {
        "train": write_csv(tmp_path / "train.csv", [["a", 1, 0], ["a", 5, 1], ["b", 1, 0]]),
        "val": write_csv(tmp_path / "val.csv", [["b", 1, 1], ["new", 5, 0]]),
        "test": write_csv(tmp_path / "test.csv", [["a", 100, 1], [None, None, 0]]),
    }
    return build_file_store("t", "csv", paths=paths, schema=SCHEMA, cache_root=cache, **kw)


def test_unseen_values_map_to_zero_outside_train(tmp_path):
    store = files_store(tmp_path, tmp_path / "cache", preprocess={"min_count": 1})
    assert store.rows("train") == 3 and store.rows("val") == 2 and store.rows("test") == 2
    # c: a (2) -> 1, b -> 2; n: V1 (2) -> 1, L2 (5.0: log(5)^2 = 2.59) -> 2.
    assert np.asarray(store.ids("train")).tolist() == [[1, 1], [1, 2], [2, 1]]
    assert np.asarray(store.ids("val")).tolist() == [[2, 1], [0, 2]]  # "new" unseen
    assert np.asarray(store.ids("test")).tolist() == [[1, 0], [0, 0]]  # L21 unseen; missing


def test_min_count_sends_rare_values_to_zero(tmp_path):
    store = files_store(tmp_path, tmp_path / "cache", preprocess={"min_count": 2})
    assert store.cardinalities == [2, 2]
    assert np.asarray(store.ids("train")).tolist() == [[1, 1], [1, 0], [0, 1]]


def test_cache_is_reused_and_keyed_by_config(tmp_path):
    cache = tmp_path / "cache"
    first = files_store(tmp_path, cache)
    stamps = {p.name: p.stat().st_mtime_ns for p in first.path.iterdir()}
    again = files_store(tmp_path, cache)
    assert again.path == first.path
    assert {p.name: p.stat().st_mtime_ns for p in again.path.iterdir()} == stamps
    other = files_store(tmp_path, cache, preprocess={"min_count": 2})
    assert other.fingerprint != first.fingerprint and other.path != first.path
    # Changing a source file's bytes changes the fingerprint too.
    write_csv(tmp_path / "test.csv", [["a", 1, 1]])
    changed = build_file_store(
        "t",
        "csv",
        paths={s: tmp_path / f"{s}.csv" for s in SPLITS},
        schema=SCHEMA,
        cache_root=cache,
    )
    assert changed.fingerprint != first.fingerprint and changed.rows("test") == 1
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        {first.path.name, other.path.name, changed.path.name, DIGESTS}
    )


def test_random_split_does_not_depend_on_chunk_size(shared_data, tmp_path):
    cfg = OmegaConf.to_container(data_config("criteo", shared_data, tmp_path), resolve=True)
    cfg.pop("_target_"), cfg.pop("_convert_")
    cfg["cache_root"] = tmp_path / "a"
    big = build_file_store(**cfg)
    cfg["cache_root"] = tmp_path / "b"
    small = build_file_store(**{**cfg, "chunk_rows": 37})
    assert big.fingerprint == small.fingerprint
    for split in SPLITS:
        np.testing.assert_array_equal(big.ids(split), small.ids(split))
        np.testing.assert_array_equal(big.labels(split), small.labels(split))
    assert abs(big.rows("train") - 800) < 40  # 80/10/10 of 1000 rows


def test_time_split_puts_the_latest_rows_last(tmp_path):
    times = np.random.default_rng(1).permutation(50)
    df = pd.DataFrame({"t": times, "c": [f"v{t % 5}" for t in times], "click": times % 2})
    df.to_csv(tmp_path / "d.csv", index=False)
    schema = {
        "fields": ["c"],
        "split": {"method": "time", "time_column": "t", "val": 0.2, "test": 0.2},
    }
    store = build_file_store(
        "time", "csv", path=tmp_path / "d.csv", schema=schema, cache_root=tmp_path / "c"
    )
    assert [store.rows(s) for s in SPLITS] == [30, 10, 10]
    # Labels are t % 2, and rows keep file order within a split: compare with the raw frame.
    for split, (lo, hi) in zip(SPLITS, [(0, 30), (30, 40), (40, 50)], strict=True):
        want = df[(df.t >= lo) & (df.t < hi)]["click"].to_numpy()
        np.testing.assert_array_equal(store.labels(split), want)


def test_failure_leaves_no_store_behind(tmp_path):
    cache = tmp_path / "cache"
    (tmp_path / "bad").mkdir()
    write_csv(tmp_path / "bad" / "train.csv", [["a", 1, 0], ["b", 2, 1]])
    write_csv(tmp_path / "bad" / "val.csv", [["a", 1, 0]])
    # The test file is read only in pass 2, after the writer has started.
    (tmp_path / "bad" / "test.csv").write_text("c,n,click\na,1,0\na,1,2\n")
    paths = {s: tmp_path / "bad" / f"{s}.csv" for s in SPLITS}
    with pytest.raises(DataError, match=r"test\.csv:3: label 'click' must be 0 or 1, got '2'"):
        build_file_store("t", "csv", paths=paths, schema=SCHEMA, cache_root=cache)
    assert not cache.exists() or list(cache.iterdir()) == []
    store = build_file_store(
        "t", "csv", paths=paths, schema=SCHEMA, cache_root=cache, on_error="skip"
    )
    assert store.meta["skipped"] == {"bad_label": 1}
    assert store.meta["skipped_by_file"] == {"train": {}, "val": {}, "test": {"bad_label": 1}}
    assert store.rows("test") == 1
    assert json.loads((store.path / "meta.json").read_text())["on_error"] == "skip"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("c,n,click\na,1\n", r"d\.csv:2: expected 3 columns, got 2"),
        ("c,n,click\na,x1,0\n", r"d\.csv:2: column n: 'x1' is not a number"),
        ("c,n,click\na,1,-1\n", r"d\.csv:2: label 'click' must be 0 or 1, got '-1'"),
        ("", r"d\.csv: no rows"),
        ("c,n,click\n", r"d\.csv: no rows"),
    ],
)
def test_bad_files_raise_and_leave_nothing(tmp_path, content, message):
    (tmp_path / "d.csv").write_text(content)
    cache = tmp_path / "cache"
    schema = {**SCHEMA, "split": {"method": "random"}}
    with pytest.raises(DataError, match=message):
        build_file_store("t", "csv", path=tmp_path / "d.csv", schema=schema, cache_root=cache)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_all_rows_skipped_is_an_error(tmp_path):
    (tmp_path / "d.csv").write_text("c,n,click\na,1,7\n")
    schema = {**SCHEMA, "split": {"method": "random"}}
    with pytest.raises(DataError, match=r"d\.csv: no training rows"):
        build_file_store(
            "t",
            "csv",
            path=tmp_path / "d.csv",
            schema=schema,
            on_error="skip",
            cache_root=tmp_path / "cache",
        )


def test_missing_files_name_the_config_key(tmp_path):
    schema = {**SCHEMA, "split": {"method": "random"}}
    with pytest.raises(FileNotFoundError, match=r"nope\.csv: data file not found .*data\.path"):
        build_file_store("t", "csv", path=tmp_path / "nope.csv", schema=schema)
    write_csv(tmp_path / "train.csv", [["a", 1, 0]])
    paths = {"train": tmp_path / "train.csv", "test": tmp_path / "gone.csv"}
    with pytest.raises(FileNotFoundError, match=r"gone\.csv: .*data\.paths\.test"):
        build_file_store("t", "csv", paths=paths, schema=SCHEMA, cache_root=tmp_path)


def test_random_split_codes_are_uniform_and_seeded():
    lines = np.arange(1, 100_001)
    codes = random_split_codes(lines, seed=3, val=0.1, test=0.2)
    assert np.bincount(codes) / len(lines) == pytest.approx([0.7, 0.1, 0.2], abs=0.01)
    other = random_split_codes(lines, seed=4, val=0.1, test=0.2)
    assert (codes != other).mean() > 0.3
    np.testing.assert_array_equal(codes[500:600], random_split_codes(lines[500:600], 3, 0.1, 0.2))
