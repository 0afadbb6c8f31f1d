"""task=ctr|cvr|ctcvr|esmm through the real config and pipeline, the ESMM bundle's heads, and the
funnel samples (AliExpress, Ali-CCP) end to end."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from cvr.tasks import TaskError
from tests.helpers import TINY_DATA, compose_train

FUNNEL = [*TINY_DATA, "data.funnel=true", "data.funnel_correlation=0.5", "data.positive_rate=0.2"]
FAST = [
    "trainer.max_epochs=2",
    "datamodule.batch_size=512",
    "trainer.enable_progress_bar=false",
    "logger=none",
    "callbacks.efficiency_profile.enabled=false",
]


def test_esmm_trains_scores_every_space_and_serves_three_heads(tmp_path):
    from cvr.pipelines.train import train
    from cvr.serving.predictor import Predictor

    cfg = compose_train(tmp_path, ["task=esmm", "model=ffm", *FUNNEL, *FAST])
    metrics = train(cfg)
    for name in ("ctr_auc", "ctcvr_auc", "cvr_auc_clicked", "cvr_auc_all", "cvr_logloss_all"):
        assert math.isfinite(metrics[f"test/{name}"]), name
        assert math.isfinite(metrics[f"test/oracle_{name}"]), name
    # The generic names are the primary head's (pCVR on clicked rows), so tables keep working.
    assert metrics["test/auc"] == metrics["test/cvr_auc_clicked"]
    assert metrics["test/auc_gap"] == pytest.approx(
        metrics["test/oracle_cvr_auc_clicked"] - metrics["test/cvr_auc_clicked"]
    )
    (run_dir,) = (tmp_path / "runs").iterdir()
    spec = json.loads((run_dir / "bundle" / "model.json").read_text())
    # task=esmm's default: a shared table plus private factors of the same k per tower.
    k = cfg.embedding.dim
    assert spec["model"] == {
        "name": "esmm",
        "tower": "ffm",
        "share_embedding": True,
        "private_dim": k,
    }
    predictor = Predictor.load(run_dir / "bundle")
    assert predictor.model.private_dim == k and len(predictor.model.private) == 2
    records = predictor.example_records(5)
    heads = predictor.predict_heads(records)
    assert predictor.heads == ("pctr", "pcvr", "pctcvr") == tuple(heads)
    np.testing.assert_allclose(heads["pctcvr"], heads["pctr"] * heads["pcvr"], rtol=1e-5)
    np.testing.assert_allclose(predictor.predict(records), heads["pctcvr"], rtol=1e-6)


def test_naive_cvr_trains_on_clicks_and_monitors_its_metric(tmp_path):
    from cvr.pipelines.train import build_callbacks, train

    cfg = compose_train(tmp_path, ["task=cvr", "model=fm", "backend=autograd", *FUNNEL, *FAST])
    monitors = {getattr(c, "monitor", None) for c in build_callbacks(cfg)}
    assert "val/cvr_auc_clicked" in monitors and "val/auc" not in monitors
    metrics = train(cfg)
    assert math.isfinite(metrics["test/cvr_auc_all"]) and "test/ctr_auc" not in metrics
    assert metrics["test/auc"] == metrics["test/cvr_auc_clicked"]


def test_monitor_is_configurable(tmp_path):
    from cvr.pipelines.train import build_callbacks

    cfg = compose_train(tmp_path, ["task=esmm", "task.monitor=val/ctcvr_auc", *FUNNEL, *FAST])
    assert "val/ctcvr_auc" in {getattr(c, "monitor", None) for c in build_callbacks(cfg)}


@pytest.mark.parametrize(
    ("overrides", "share", "private_dim"),
    [
        (["task=esmm"], True, 3),  # the default: shared table + private factors of the same k
        (["task=esmm_shared"], True, 0),
        (["task=esmm_noshare"], False, 0),
        (["task=esmm", "esmm.share_embedding=false"], False, 0),  # nothing private to add
        (["task=esmm", "esmm.private_dim=2"], True, 2),
    ],
)
def test_esmm_task_configs_build_the_sharing_they_name(tmp_path, overrides, share, private_dim):
    from cvr.models import registry
    from cvr.pipelines.funnel import model_node

    cfg = compose_train(tmp_path, [*overrides, "model=fm", "embedding.dim=3", *FUNNEL, *FAST])
    node = model_node(cfg)
    assert node == {
        "name": "esmm",
        "tower": "fm",
        "share_embedding": share,
        "private_dim": private_dim,
    }
    model = registry.build(
        registry.model_spec(node), registry.embedding_spec(cfg.embedding), [4, 5]
    )
    assert (model.cvr_embedding is None) == share and len(model.private) == (
        2 if private_dim else 0
    )


def test_old_label_key_says_which_task_it_means(tmp_path, caplog):
    from cvr.pipelines.train import build_store, training_label

    cfg = compose_train(tmp_path, ["label=conversion", *FUNNEL, *FAST])
    with caplog.at_level(logging.INFO):
        assert training_label(cfg, build_store(cfg)) == "conversion"
    assert "task=ctcvr" in caplog.text


def test_task_and_label_together_are_refused(tmp_path):
    from cvr.pipelines.train import train

    cfg = compose_train(tmp_path, ["task=cvr", "label=conversion", *FUNNEL, *FAST])
    with pytest.raises(TaskError, match="drop label"):
        train(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("data", ["aliexpress", "aliccp"])
def test_funnel_samples_train_esmm_end_to_end(tmp_path, shared_data, data):
    from cvr.pipelines.train import train

    cfg = compose_train(
        tmp_path, [f"data={data}", "task=esmm", "model=ffm", "datamodule.batch_size=64", *FAST]
    )
    metrics = train(cfg)
    for name in ("ctr_logloss", "ctcvr_logloss", "cvr_logloss_clicked"):
        assert math.isfinite(metrics[f"test/{name}"]), name
    assert "test/cvr_auc_all" not in metrics  # no ground truth on real data
    for name in ("ctr_auc", "ctcvr_auc", "cvr_auc_clicked"):  # NaN only with one class
        value = metrics.get(f"test/{name}", float("nan"))
        assert math.isfinite(value) or name != "ctr_auc", name
