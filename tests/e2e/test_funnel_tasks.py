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


# --- the CVR study's regulariser: one L2 prior for every arm ---------------------------------

STUDY = ["experiment=cvr_study", *TINY_DATA, "data.positive_rate=0.2", *FAST]


def test_cvr_study_default_protocol_is_one_prior_and_early_stopping(tmp_path):
    cfg = compose_train(tmp_path, STUDY[:1])
    assert cfg.optimizer.l2_prior == 10.0 and cfg.optimizer.dense.weight_decay == 0.0
    assert cfg.backend.name == "autograd" and cfg.embedding.sparse is False
    # Early stopping, not the cap, ends a run; two epochs without improvement stop it, so one
    # noisy epoch does not end a run on its epoch-1 model. A cap of 20 ended most 100k runs.
    assert cfg.callbacks.early_stopping.patience == 2 and cfg.trainer.max_epochs >= 60
    # Every arm's batch follows its training rows: >= ~200 steps an epoch, batch in [16, 250].
    assert cfg.datamodule.steps_per_epoch == 200
    assert (cfg.datamodule.min_batch_size, cfg.datamodule.batch_size) == (16, 250)


@pytest.mark.parametrize("task", ["cvr", "esmm", "ctcvr"])
def test_l2_prior_is_weight_decay_over_the_rows_each_arm_trains_on(tmp_path, task):
    from cvr.pipelines import funnel
    from cvr.pipelines.train import build_store, train

    cfg = compose_train(tmp_path, [*STUDY, f"task={task}", "model=fm", "optimizer.l2_prior=6"])
    store = build_store(cfg)
    click = np.asarray(store.labels("train", "click"))
    rows = int((click > 0.5).sum()) if task == "cvr" else len(click)
    assert 0 < rows <= 3000 and (task != "cvr" or rows < 1500)  # ~20% CTR: clicks only
    decay = funnel.with_l2_prior(cfg, store, funnel.task_from_config(cfg, store))
    assert decay.optimizer.dense.weight_decay == pytest.approx(6.0 / rows, rel=1e-12)
    assert cfg.optimizer.dense.weight_decay == 0.0  # the caller's config is left as it was
    if task == "cvr":  # the decay the torch optimiser of the run really got
        metrics = train(cfg)
        assert metrics["train/weight_decay"] == pytest.approx(6.0 / rows, rel=1e-12)


def test_prior_weight_decay_steps_like_the_prior_on_the_summed_loss():
    """One AdaGrad step with weight_decay=prior/N on the batch-mean loss is the step on
    (sum loss + prior/2 ||w||^2) / N, computed by hand."""
    from cvr.pipelines.funnel import prior_weight_decay

    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 5, generator=gen), torch.rand(40, generator=gen).round()
    w0 = torch.randn(5, generator=gen)
    prior, lr = 3.0, 0.1
    w = w0.clone().requires_grad_(True)
    opt = torch.optim.Adagrad([w], lr=lr, weight_decay=prior_weight_decay(prior, len(x)))
    torch.nn.functional.binary_cross_entropy_with_logits(x @ w, y).backward()
    opt.step()
    ref = w0.clone().requires_grad_(True)
    summed = torch.nn.functional.binary_cross_entropy_with_logits(x @ ref, y, reduction="sum")
    ((summed + prior / 2 * (ref * ref).sum()) / len(x)).backward()
    g = ref.grad
    expected = w0 - lr * g / (g * g).sqrt().add(1e-10)
    torch.testing.assert_close(w.detach(), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("optimizer.dense.weight_decay=3e-5", "drop optimizer.dense.weight_decay"),
        ("backend=fused", "needs backend=autograd"),
        ("embedding.sparse=true", "needs embedding.sparse=false"),
        ("optimizer.l2_prior=-1", "expected >= 0"),
    ],
)
def test_l2_prior_refuses_what_it_cannot_mean(tmp_path, override, match):
    from cvr.pipelines import funnel
    from cvr.pipelines.errors import ConfigError
    from cvr.pipelines.train import build_store

    cfg = compose_train(tmp_path, [*STUDY, "task=cvr", "model=fm", override])
    store = build_store(cfg)
    with pytest.raises(ConfigError, match=match):
        funnel.with_l2_prior(cfg, store, funnel.task_from_config(cfg, store))


# --- the CVR study's batch rule: ~N optimizer steps an epoch for every arm ---------------------


@pytest.mark.parametrize("task", ["cvr", "esmm"])
def test_steps_per_epoch_sets_each_arms_batch_from_its_training_rows(tmp_path, task):
    from cvr.data.funnel_batches import train_rows
    from cvr.pipelines import funnel
    from cvr.pipelines.train import build_store, train

    steps = ["datamodule.steps_per_epoch=7", "datamodule.min_batch_size=4"]
    cfg = compose_train(tmp_path, [*STUDY, f"task={task}", "model=fm", *steps])
    store = build_store(cfg)
    rows = train_rows(store, "train", funnel.task_from_config(cfg, store))
    out = funnel.with_steps_per_epoch(cfg, store, funnel.task_from_config(cfg, store))
    assert out.datamodule.batch_size == max(4, min(512, math.ceil(rows / 7)))
    assert "steps_per_epoch" not in out.datamodule and "min_batch_size" not in out.datamodule
    assert cfg.datamodule.batch_size == 512  # the caller's config is left as it was
    if task == "cvr":  # ~20% of 3000 rows clicked: 7 steps an epoch where 512 gives 2
        metrics = train(cfg)
        batch = metrics["train/batch_size"]
        assert batch == out.datamodule.batch_size and batch < 512
        assert metrics["train/global_step"] == metrics["train/epochs_run"] * math.ceil(rows / batch)


def test_batch_for_steps_clamps_to_floor_and_ceiling():
    from cvr.pipelines.funnel import batch_for_steps

    assert batch_for_steps(5000, 200, 16, 2048) == 25
    assert batch_for_steps(1_000_000, 200, 16, 2048) == 2048  # the ceiling binds
    assert batch_for_steps(1000, 200, 16, 2048) == 16  # the floor binds
    assert batch_for_steps(1001, 10, 1, 4096) == 101  # ceil: at most 10 steps


def test_steps_per_epoch_null_keeps_batch_size(tmp_path):
    from cvr.pipelines import funnel
    from cvr.pipelines.train import build_store

    cfg = compose_train(
        tmp_path, [*STUDY, "task=cvr", "model=fm", "datamodule.steps_per_epoch=null"]
    )
    out = funnel.with_steps_per_epoch(cfg, build_store(cfg), None)
    assert out.datamodule.batch_size == 512 and "steps_per_epoch" not in out.datamodule


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("datamodule.steps_per_epoch=0", r"datamodule.steps_per_epoch: expected an integer >= 1"),
        ("datamodule.min_batch_size=1024", r"min_batch_size=1024 is above .*batch_size=512"),
        ("datamodule.min_batch_size=0", r"datamodule.min_batch_size: expected an integer >= 1"),
    ],
)
def test_steps_per_epoch_refuses_bad_values(tmp_path, override, match):
    from cvr.pipelines import funnel
    from cvr.pipelines.config_check import check_config
    from cvr.pipelines.errors import ConfigError
    from cvr.pipelines.train import build_store

    cfg = compose_train(tmp_path, [*STUDY, "task=cvr", "model=fm", override])
    with pytest.raises(ConfigError, match=match):
        funnel.with_steps_per_epoch(cfg, build_store(cfg), funnel.task_from_config(cfg))
    if override.endswith("=0"):  # refused at start-up too, before Hydra makes the run folder
        with pytest.raises(ConfigError, match=match):
            check_config(cfg)
