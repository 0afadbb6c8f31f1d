"""`publish=true` at the end of a training run: a new collection version, tagged on the run."""

from __future__ import annotations

import numpy as np
import pytest

from cvr.serving.predictor import Predictor
from cvr.vectorstore import client as store_client
from cvr.vectorstore.versions import list_versions
from tests.helpers import TINY_DATA, compose_train

FAST = [
    "trainer.max_epochs=1",
    "datamodule.batch_size=512",
    "trainer.enable_progress_bar=false",
    "callbacks.efficiency_profile.repeats=2",
]


def test_publish_true_publishes_the_bundle_and_tags_the_mlflow_run(tmp_path):
    from mlflow.tracking import MlflowClient

    from cvr.pipelines.train import train

    cfg = compose_train(
        tmp_path, ["model=fm", "publish=true", "logger.log_model=false", *TINY_DATA, *FAST]
    )
    uri = str(tmp_path / "vectors.db")  # the default: under the output root
    try:
        train(cfg)
        (version,) = list_versions(uri)
        assert version.live and version.collection == "cvr_fm_live_v0001"
        run = MlflowClient(cfg.logger.tracking_uri).search_runs(
            [MlflowClient(cfg.logger.tracking_uri).get_experiment_by_name("cvr").experiment_id]
        )[0]
        tags = run.data.tags
        assert tags["vectorstore.collection"] == "cvr_fm_live_v0001"
        assert tags["vectorstore.alias"] == "cvr_fm_live" and tags["vectorstore.uri"] == uri
        assert tags["vectorstore.rows"] == str(version.meta["rows"])
        bundle = tmp_path / "runs" / "job0" / "bundle"
        ids = np.zeros((3, len(version.meta["cardinalities"])), np.int32)
        np.testing.assert_allclose(
            Predictor.load(bundle, embeddings=uri).predict_ids(ids),
            Predictor.load(bundle).predict_ids(ids),
            atol=1e-6,
        )
    finally:
        store_client.close(uri)


def test_publish_takes_a_uri_and_alias_and_refuses_other_values(tmp_path):
    from cvr.pipelines.train import ConfigError, train

    uri = str(tmp_path / "elsewhere" / "v.db")
    cfg = compose_train(
        tmp_path,
        [f"publish={{uri:{uri},alias:my_tables}}", "logger=none", *TINY_DATA, *FAST],
    )
    try:
        train(cfg)
        assert [v.collection for v in list_versions(uri)] == ["my_tables_v0001"]
    finally:
        store_client.close(uri)
    bad = compose_train(tmp_path, ["publish=yes", "logger=none", *TINY_DATA, *FAST])
    with pytest.raises(ConfigError, match="publish: expected false, true or"):
        train(bad)
