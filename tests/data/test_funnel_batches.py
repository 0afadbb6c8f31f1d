"""The selection-bias knob of the synthetic funnel, and the rows/labels each task trains on."""

from __future__ import annotations

import numpy as np
import pytest

from cvr.data.funnel_batches import FunnelDataModule, eval_targets, train_arrays
from cvr.data.synthetic import SyntheticGenerator, SyntheticSpec, build_synthetic_store
from cvr.tasks import TaskError, make_task

SMALL = dict(
    rows_train=6000,
    rows_val=2000,
    rows_test=2000,
    num_fields=5,
    user_fields=2,
    item_fields=1,
    total_values=600,
    funnel=True,
    positive_rate=0.1,
    conversion_rate=0.2,
)


def draw(spec: SyntheticSpec, split: str = "train"):
    parts = list(SyntheticGenerator(spec).chunks(split))
    labels = np.concatenate([p[1] for p in parts])
    probs = np.concatenate([p[2] for p in parts])
    return labels, probs


def test_correlation_knob_makes_clicked_rows_convert_more():
    rows = dict(SMALL, rows_train=40_000)
    off_labels, off_probs = draw(SyntheticSpec(**rows, funnel_correlation=0.0))
    on_labels, on_probs = draw(SyntheticSpec(**rows, funnel_correlation=0.9))
    for labels in (off_labels, on_labels):
        clicked = labels[:, 0] > 0
        # Calibrated over clicks: P(conversion | click) is the configured rate.
        assert labels[clicked, 1].mean() == pytest.approx(0.2, abs=0.03)
        assert (labels[:, 1] <= labels[:, 0]).all()
    pcvr_on = on_probs[:, 1] / on_probs[:, 0]
    pcvr_off = off_probs[:, 1] / off_probs[:, 0]
    clicked_on, clicked_off = on_labels[:, 0] > 0, off_labels[:, 0] > 0
    # Bias on: clicked impressions convert far more than impressions at large. Off, the two
    # truths are independent draws, correlated only by chance (sizeable with 5 fields, where a
    # few frequent values dominate both), so the test compares the two settings.
    lift_on = pcvr_on[clicked_on].mean() / pcvr_on.mean()
    lift_off = pcvr_off[clicked_off].mean() / pcvr_off.mean()
    assert lift_on > 1.4 and lift_on > lift_off + 0.2
    corr_on = np.corrcoef(np.log(on_probs[:, 0]), np.log(pcvr_on))[0, 1]
    corr_off = np.corrcoef(np.log(off_probs[:, 0]), np.log(pcvr_off))[0, 1]
    assert corr_on > 0.85 and corr_on > corr_off + 0.3


def test_knob_off_by_default_keeps_old_stores(tmp_path):
    # null (the default) is the old generator: same rows and fingerprint as before the knob.
    old = build_synthetic_store(tmp_path, progress=False, **SMALL)
    again = build_synthetic_store(tmp_path, progress=False, funnel_correlation=None, **SMALL)
    assert old.path == again.path
    knob = build_synthetic_store(tmp_path, progress=False, funnel_correlation=0.0, **SMALL)
    assert knob.path != old.path
    with pytest.raises(ValueError, match="funnel_correlation"):
        SyntheticSpec(**SMALL, funnel_correlation=1.5)


def test_each_task_trains_on_its_rows_and_labels(tmp_path):
    store = build_synthetic_store(tmp_path, progress=False, funnel_correlation=0.5, **SMALL)
    click = np.asarray(store.labels("train", "click"))
    conversion = np.asarray(store.labels("train", "conversion"))
    ids, labels = train_arrays(store, "train", make_task("cvr"))
    assert len(ids) == int(click.sum()) == len(labels)
    np.testing.assert_array_equal(ids, np.asarray(store.ids("train"))[click > 0])
    np.testing.assert_array_equal(labels, conversion[click > 0])
    _, labels = train_arrays(store, "train", make_task("ctcvr"))
    np.testing.assert_array_equal(labels, click * conversion)
    _, labels = train_arrays(store, "train", make_task("esmm"))
    np.testing.assert_array_equal(labels, np.stack([click, click * conversion], axis=1))
    _, labels = train_arrays(store, "train", make_task("ctr"))
    np.testing.assert_array_equal(labels, click)


def test_eval_targets_hold_the_true_pctr_and_pcvr(tmp_path):
    spec = dict(SMALL, funnel_correlation=0.5)
    store = build_synthetic_store(tmp_path, progress=False, **spec)
    targets = eval_targets(store, "val", make_task("esmm"))
    _, probs = draw(SyntheticSpec(**spec), "val")
    np.testing.assert_allclose(targets[:, 2], probs[:, 0], rtol=1e-6)
    np.testing.assert_allclose(targets[:, 3], probs[:, 1] / probs[:, 0], rtol=1e-5)
    assert ((targets[:, 3] > 0) & (targets[:, 3] < 1)).all()


def test_task_needing_conversions_refuses_click_only_data(tmp_path):
    store = build_synthetic_store(tmp_path, progress=False, **dict(SMALL, funnel=False))
    with pytest.raises(TaskError, match="task=esmm needs the labels"):
        FunnelDataModule(store, make_task("esmm"))
    targets = eval_targets(store, "val", make_task("ctr"))
    assert np.isnan(targets[:, 1]).all() and np.isnan(targets[:, 3]).all()
