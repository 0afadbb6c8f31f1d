"""Every real sample in ../shared/data trains end to end through the real config and pipeline."""

import math

import numpy as np
import pytest

from cvr.data.store import EncodedStore
from tests.helpers import compose_train

DATASETS = ["criteo", "criteo_csv", "avazu", "libffm", "aliexpress", "aliccp", "movielens"]
FAST = [
    "trainer.max_epochs=1",
    "datamodule.batch_size=256",
    "trainer.enable_progress_bar=false",
    "logger=none",
    "callbacks.efficiency_profile.repeats=3",
]


@pytest.mark.parametrize("data", DATASETS)
def test_sample_trains_end_to_end(tmp_path, shared_data, data):
    from cvr.pipelines.train import train

    cfg = compose_train(tmp_path, [f"data={data}", "model=ffm", *FAST])
    metrics = train(cfg)
    (store_dir,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]  # + input digests
    store = EncodedStore.open(store_dir)
    rows = sum(store.rows(s) for s in ("train", "val", "test"))
    assert rows == sum(store.meta["lines"].values()) - sum(store.meta["skipped"].values())
    assert metrics["data/rows_train"] == store.rows("train") > 0
    for split in ("train", "val", "test"):
        ids = np.asarray(store.ids(split))
        assert ids.shape[1] == len(store.cardinalities)
        assert (ids >= 0).all() and (ids < np.asarray(store.cardinalities)).all()
    assert math.isfinite(metrics["test/logloss"])
    labels = store.labels("test", store.meta["label"])
    if 0 < labels.sum() < len(labels):
        assert math.isfinite(metrics["test/auc"])
    assert metrics["eff/embedding_bytes"] > 0


def test_conversion_label_is_trained_where_the_config_says(tmp_path, shared_data):
    from cvr.pipelines.train import train

    cfg = compose_train(tmp_path, ["data=aliexpress", *FAST])
    train(cfg)
    (store_dir,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]  # + input digests
    store = EncodedStore.open(store_dir)
    assert store.meta["label"] == "conversion"
    assert set(store.label_names) == {"click", "conversion"}
    # Conversion implies click on every row of this sample.
    assert (store.labels("train", "conversion") <= store.labels("train", "click")).all()
