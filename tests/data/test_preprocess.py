"""Preprocessor: vocabularies, min_count, numeric rules, hashing, records, persistence."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from cvr.data.errors import DataError
from cvr.data.preprocess import Preprocessor
from cvr.data.schema import Schema, SchemaError
from cvr.data.value_rules import stable_hash

M64 = (1 << 64) - 1


def fnv1a64(data: bytes) -> int:
    """Reference FNV-1a 64 (http://www.isthe.com/chongo/tech/comp/fnv/), written independently."""
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & M64
    return h


def splitmix_finalizer(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def reference_bucket(value: str, buckets: int) -> int:
    return 1 + splitmix_finalizer(fnv1a64(value.encode("utf-8"))) % buckets


def batch(**columns) -> pa.RecordBatch:
    arrays = {
        k: pa.array(v, pa.float64() if k in ("n", "m", "q") else pa.string())
        for k, v in columns.items()
    }
    return pa.RecordBatch.from_pydict(arrays)


CAT = Schema.from_dict({"fields": ["c"]})
NUM = Schema.from_dict({"fields": [{"name": "n", "kind": "numeric"}]})


def test_vocab_ids_by_count_then_value_and_min_count():
    train = batch(c=["b", "a", "x", "y", "a", "y", "x", "a", None, "z"])
    pre = Preprocessor(CAT, {"min_count": 2}).fit([train])
    # a: 3, x: 2, y: 2 (tie: by value), z: 1 (< min_count), b: 1.
    assert pre.encoders[0].vocab == ["a", "x", "y"]
    assert pre.cardinalities == [4]
    ids = pre.transform(batch(c=["a", "x", "y", "z", "b", "never", None]))
    assert ids.dtype == np.int32 and ids.shape == (7, 1)
    assert ids[:, 0].tolist() == [1, 2, 3, 0, 0, 0, 0]  # rare, unseen and missing -> 0


def test_fit_is_independent_of_batching():
    rng = np.random.default_rng(0)
    values = [f"v{int(k)}" for k in rng.zipf(1.5, 3000) % 500]
    nums = rng.exponential(30, 3000)
    schema = Schema.from_dict({"fields": ["c", {"name": "n", "kind": "numeric"}]})
    whole = Preprocessor(schema, {"min_count": 2}).fit([batch(c=values, n=nums)])
    parts = [batch(c=values[i : i + 77], n=nums[i : i + 77]) for i in range(0, 3000, 77)]
    split = Preprocessor(schema, {"min_count": 2}).fit(parts)
    assert whole.to_dict() == split.to_dict()


def test_criteo_log_rule_on_hand_computed_values():
    values = [None, -3.0, -0.5, 0.0, 1.0, 2.0, 2.5, 3.0, 10.0, 100.0, 1382.0]
    pre = Preprocessor(NUM).fit([batch(n=values)])
    # v <= 2: floor(v) itself; v > 2: floor(log(v)^2): log(2.5)^2 = 0.84, log(3)^2 = 1.21,
    # log(10)^2 = 5.30, log(100)^2 = 21.21, log(1382)^2 = 52.29.
    expected = ["V-3", "V-1", "V0", "V1", "V2", "L0", "L1", "L5", "L21", "L52"]
    assert sorted(pre.encoders[0].vocab) == sorted(expected)
    assert [math.floor(math.log(v) ** 2) for v in (2.5, 3, 10, 100, 1382)] == [0, 1, 5, 21, 52]
    ids = pre.transform(batch(n=[1382.0, 1000.0, 2.0, 2.9, None, 7e5]))[:, 0]
    vocab = pre.encoders[0].vocab
    # log(1000)^2 = 47.7 -> L47, not in train; log(2.9)^2 = 1.13 -> L1.
    assert ids[0] == vocab.index("L52") + 1
    assert ids[1] == 0  # floor(log(1000)^2) = 47, never seen in train
    assert ids[2] == vocab.index("V2") + 1
    assert ids[3] == vocab.index("L1") + 1
    assert ids[4] == 0 and ids[5] == 0  # missing; log(7e5)^2 = 179.6 unseen


def test_quantile_buckets():
    pre = Preprocessor(NUM, {"numeric_rule": "quantile", "buckets": 4})
    pre.fit([batch(n=np.arange(1, 101, dtype=float))])
    assert pre.encoders[0].boundaries == pytest.approx([25.75, 50.5, 75.25])
    assert pre.cardinalities == [5]
    ids = pre.transform(batch(n=[1.0, 25.75, 26.0, 60.0, 100.0, 1e9, -1e9, None]))[:, 0]
    assert ids.tolist() == [1, 1, 2, 3, 4, 4, 1, 0]  # buckets are right-closed


def test_quantile_sample_is_bounded_and_independent_of_batching(monkeypatch):
    import cvr.data.preprocess as module

    monkeypatch.setattr(module, "QUANTILE_SAMPLE", 500)
    values = np.random.default_rng(2).lognormal(size=5000)
    cfg = {"numeric_rule": "quantile", "buckets": 5}
    whole = Preprocessor(NUM, cfg).fit([batch(n=values)])
    parts = [batch(n=values[i : i + 333]) for i in range(0, 5000, 333)]
    assert Preprocessor(NUM, cfg).fit(parts).to_dict() == whole.to_dict()
    # About 300 of the 5000 values still place the boundaries near the true quintiles.
    below = [(values <= b).mean() for b in whole.encoders[0].boundaries]
    assert np.allclose(below, [0.2, 0.4, 0.6, 0.8], atol=0.08)


def test_quantile_ties_merge_buckets():
    pre = Preprocessor(NUM, {"numeric_rule": "quantile", "buckets": 10})
    pre.fit([batch(n=[0.0] * 90 + [1.0] * 10)])
    assert pre.encoders[0].boundaries == pytest.approx([0.0, 0.1])  # 0.9 quantile: 0.1
    assert pre.transform(batch(n=[0.0, 0.1, 0.5, 1.0]))[:, 0].tolist() == [1, 2, 3, 3]


def test_stable_hash_matches_an_independent_reference():
    assert fnv1a64(b"") == 0xCBF29CE484222325  # published FNV-1a test vectors
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a64(b"foobar") == 0x85944171F73967E8
    strings = ["", "a", "foobar", "68fd1e64", "héllo wörld ✓", "x" * 300, None]
    got = stable_hash(pa.array(strings, pa.string()))
    want = [splitmix_finalizer(fnv1a64((s or "").encode())) for s in strings]
    assert got.tolist() == want
    # A fixed expectation, so that a change of the hash (which would silently re-bucket every
    # stored model) fails loudly.
    assert reference_bucket("68fd1e64", 1000) == 658
    assert stable_hash(pa.array(["68fd1e64"]))[0] % 1000 + 1 == 658


def test_hash_buckets_global_and_per_field():
    schema = Schema.from_dict({"fields": ["a", "b", {"name": "n", "kind": "numeric"}]})
    train = batch(a=["x", "y"], b=["x", "y"], n=[1.0, 2.0])
    pre = Preprocessor(schema, {"hash_buckets": {"a": 100}}).fit([train])
    assert pre.cardinalities == [101, 3, 3]
    ids = pre.transform(batch(a=["x", "unseen", None], b=["x", "unseen", None], n=[5.0, 1.0, None]))
    assert ids[:, 0].tolist() == [reference_bucket("x", 100), reference_bucket("unseen", 100), 0]
    assert ids[1, 1] == 0
    pre = Preprocessor(schema, {"hash_buckets": 7}).fit([train])
    assert pre.cardinalities == [8, 8, 8]  # numeric criteo_log categories are hashed too
    assert pre.transform(batch(a=["x"], b=["x"], n=[1.0]))[0, 2] == reference_bucket("V1", 7)


def test_transform_records_reuses_transform():
    schema = Schema.from_dict(
        {"fields": ["c", {"name": "n", "kind": "numeric"}, {"name": "m", "kind": "numeric"}]}
    )
    train = batch(c=["1", "2", "2", "abc"], n=[1.0, 5.0, 5.0, None], m=[0.0, 1.0, 2.0, 3.0])
    pre = Preprocessor(schema, {"numeric_rule": {"m": "quantile"}, "buckets": 2}).fit([train])
    df = pd.DataFrame({"c": [1, 2, None, 7], "n": ["1", "5.0", None, "nan"]})
    got = pre.transform_records(df)
    want = pre.transform(batch(c=["1", "2", None, "7"], n=[1.0, 5.0, None, None], m=[None] * 4))
    np.testing.assert_array_equal(got, want)
    assert got[:, 2].tolist() == [0, 0, 0, 0]  # column m absent -> missing
    strings = pd.DataFrame({"c": ["2", "abc"], "n": [5.0, np.nan], "m": [0.5, 9.0]})
    # c: "2" (twice) -> 1, then "1", "abc"; n: L2 (5.0 twice) -> 1, V1 -> 2; m: boundary 1.5.
    assert pre.transform_records(strings).tolist() == [[1, 1, 1], [3, 0, 2]]


def test_transform_records_rejects_wrong_types():
    schema = Schema.from_dict({"fields": ["c", {"name": "n", "kind": "numeric"}]})
    pre = Preprocessor(schema).fit([batch(c=["a"], n=[1.0])])
    with pytest.raises(DataError, match="field 'n': 'abc' is not a number"):
        pre.transform_records(pd.DataFrame({"n": ["1", "abc"]}))
    with pytest.raises(DataError, match="field 'n'"):
        pre.transform_records(pd.DataFrame({"n": [float("inf")]}))
    with pytest.raises(DataError, match="field 'c'"):
        pre.transform_records(pd.DataFrame({"c": [1.5]}))
    with pytest.raises(DataError, match="field 'c'"):
        pre.transform_records(pd.DataFrame({"c": ["a", 3]}))


def test_save_load_round_trip(tmp_path):
    schema = Schema.from_dict(
        {"fields": ["c", {"name": "n", "kind": "numeric"}, {"name": "q", "kind": "numeric"}]}
    )
    cfg = {"min_count": 1, "numeric_rule": {"q": "quantile"}, "hash_buckets": {"c": 50}}
    train = batch(c=["a", "b"], n=[3.0, 4.0], q=[0.1, 0.7])
    pre = Preprocessor(schema, cfg).fit([train])
    path = tmp_path / "preprocessor.json"
    pre.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["preprocessor.json"]  # no temp file left
    loaded = Preprocessor.load(path)
    assert loaded.to_dict() == pre.to_dict() == json.loads(path.read_text())
    probe = batch(c=["a", "zz", None], n=[3.0, 100.0, None], q=[0.0, 0.5, 1.0])
    np.testing.assert_array_equal(loaded.transform(probe), pre.transform(probe))
    assert loaded.cardinalities == pre.cardinalities


def test_config_errors_name_the_key():
    with pytest.raises(SchemaError, match=r"data\.preprocess: unknown keys"):
        Preprocessor(CAT, {"min_cnt": 2})
    with pytest.raises(SchemaError, match=r"data\.preprocess.numeric_rule"):
        Preprocessor(NUM, {"numeric_rule": "sqrt"})
    with pytest.raises(SchemaError, match=r"data\.preprocess.min_count"):
        Preprocessor(CAT, {"min_count": 0})
    with pytest.raises(SchemaError, match=r"data.preprocess.hash_buckets: unknown fields \['d'\]"):
        Preprocessor(CAT, {"hash_buckets": {"d": 3}})
    with pytest.raises(RuntimeError, match="not fitted"):
        Preprocessor(CAT).transform(batch(c=["a"]))
