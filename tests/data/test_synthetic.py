import numpy as np
import pytest

from cvr.data.synthetic import (
    GroundTruth,
    SyntheticGenerator,
    SyntheticSpec,
    build_synthetic_store,
    criteo_cardinalities,
)
from cvr.metrics import binary_metrics

SMALL = dict(
    rows_train=6000, rows_val=2000, rows_test=2000, num_fields=8, total_values=3000, user_fields=3
)


def test_criteo_cardinalities_shape():
    cards = criteo_cardinalities()
    assert len(cards) == 39
    assert min(cards) < 100 and 100_000 < max(cards) <= 200_000
    assert 600_000 < sum(cards) < 1_000_000


def test_ffm_ground_truth_matches_looped_formula():
    spec = SyntheticSpec(**SMALL, generator="ffm", seed=3)
    cards = criteo_cardinalities(spec.num_fields, spec.total_values, spec.seed)
    truth = GroundTruth(spec, cards, stream=1)
    ids = SyntheticGenerator(spec).sample_ids(np.random.default_rng(0), 5)
    rows = ids.astype(np.int64) - 1 + truth.offsets
    expected = []
    for r in rows:
        z = truth.bias + truth.w[r].sum()
        for i in range(spec.num_fields):
            for j in range(i + 1, spec.num_fields):
                z += float(truth.v[r[i], j] @ truth.v[r[j], i])
        expected.append(z)
    np.testing.assert_allclose(truth.logits(ids), expected, rtol=1e-5, atol=1e-5)


def test_values_are_zipf_and_rate_is_calibrated(tmp_path):
    store = build_synthetic_store(tmp_path, progress=False, seed=1, **SMALL)
    ids = np.asarray(store.ids("train"))
    assert ids.dtype == np.int32 and ids.shape == (6000, 8)
    assert (ids >= 0).all() and (ids < np.asarray(store.cardinalities)).all()
    counts = np.bincount(ids[:, np.argmax(store.cardinalities)])
    assert counts[1] > counts[2] > counts[10]  # rank 1 is the most frequent value
    assert store.meta["splits"]["train"]["label_rates"][0] == pytest.approx(0.2, abs=0.03)
    oracle = binary_metrics(store.labels("test"), store.oracle("test"))
    assert oracle["auc"] > 0.6  # a learnable signal: chance is 0.5


def test_same_seed_same_store_and_val_independent_of_train_rows(tmp_path):
    a = build_synthetic_store(tmp_path / "a", progress=False, seed=2, **SMALL)
    b = build_synthetic_store(tmp_path / "b", progress=False, seed=2, **SMALL)
    assert a.fingerprint == b.fingerprint
    np.testing.assert_array_equal(a.ids("val"), b.ids("val"))
    bigger = build_synthetic_store(
        tmp_path / "c", progress=False, seed=2, **{**SMALL, "rows_train": 9000}
    )
    # Same test rows and labels; only the vocabulary compaction may renumber ids.
    np.testing.assert_array_equal(a.labels("test"), bigger.labels("test"))
    np.testing.assert_array_equal(a.oracle("test"), bigger.oracle("test"))


def test_min_count_maps_rare_and_unseen_values_to_oov(tmp_path):
    store = build_synthetic_store(tmp_path, progress=False, seed=0, min_count=5, **SMALL)
    train = np.asarray(store.ids("train"))
    for f in range(train.shape[1]):
        counts = np.bincount(train[:, f], minlength=store.cardinalities[f])
        assert (counts[1:] >= 5).all()  # every kept value was seen >= 5 times in train
    assert (np.asarray(store.ids("test")) == 0).any()


def test_second_build_reuses_cache(tmp_path):
    first = build_synthetic_store(tmp_path, progress=False, **SMALL)
    mtime = (first.path / "meta.json").stat().st_mtime_ns
    second = build_synthetic_store(tmp_path, progress=False, **SMALL)
    assert second.path == first.path
    assert (second.path / "meta.json").stat().st_mtime_ns == mtime


def test_funnel_conversion_implies_click(tmp_path):
    store = build_synthetic_store(tmp_path, progress=False, funnel=True, **SMALL)
    click, conv = store.labels("train", "click"), store.labels("train", "conversion")
    assert (conv <= click).all() and 0 < conv.mean() < click.mean()
    assert (store.oracle("train", "conversion") <= store.oracle("train", "click")).all()


@pytest.mark.parametrize("bad", [{"generator": "xgb"}, {"positive_rate": 1.5}, {"rows_train": 0}])
def test_bad_spec_names_the_key(bad):
    with pytest.raises(ValueError, match="data\\."):
        SyntheticSpec(**bad)
