"""Batches for a funnel task (`cvr.tasks`): training rows and labels per task, full targets for
evaluation.

Training: `ctr` click over all rows; `ctcvr` click AND conversion over all rows; `cvr` conversion
over the clicked rows only (copied out once, ~CTR of the split); `esmm` (n, 2) [click,
click AND conversion] over all rows. Evaluation (val/test) is always every row with the
(n, 4) targets of `cvr.funnel_metrics.TARGETS`: click, click AND conversion, and, on synthetic
data, the true pCTR and pCVR (NaN elsewhere), so that every space is scored from one pass.

The synthetic store keeps the true P(click) and P(click AND conversion) per row; the true pCVR
is their ratio (P(click) > 0 on every row: it is a logistic).
"""

from __future__ import annotations

import numpy as np

from cvr.data.datamodule import SliceBatches, StoreDataModule
from cvr.data.store import EncodedStore
from cvr.tasks import Task


def funnel_labels(store: EncodedStore, split: str, task: Task) -> tuple[np.ndarray, np.ndarray]:
    """(click, click AND conversion) float32 (n,) each; the second is NaN for a ctr task on data
    without a conversion label."""
    click = np.asarray(store.labels(split, task.click_label), dtype=np.float32)
    if task.conversion_label not in store.label_names:
        return click, np.full(len(click), np.nan, dtype=np.float32)
    conversion = np.asarray(store.labels(split, task.conversion_label), dtype=np.float32)
    return click, click * conversion


def eval_targets(store: EncodedStore, split: str, task: Task) -> np.ndarray:
    """float32 (n, 4): click, ctcvr, true_pctr, true_pcvr (see the module doc)."""
    click, ctcvr = funnel_labels(store, split, task)
    true_pctr = np.full(len(click), np.nan, dtype=np.float32)
    true_pcvr = true_pctr.copy()
    p_click = store.oracle(split, task.click_label)
    if p_click is not None:
        true_pctr = np.asarray(p_click, dtype=np.float32)
        if task.conversion_label in store.label_names:
            p_ctcvr = np.asarray(store.oracle(split, task.conversion_label), dtype=np.float64)
            true_pcvr = np.clip(p_ctcvr / true_pctr, 0.0, 1.0).astype(np.float32)
    return np.stack([click, ctcvr, true_pctr, true_pcvr], axis=1)


def train_rows(store: EncodedStore, split: str, task: Task) -> int:
    """How many rows `task` trains on in `split` (the clicked ones for cvr; every row else)."""
    if task.name != "cvr":
        return int(store.rows(split))
    click, _ = funnel_labels(store, split, task)
    return int(np.count_nonzero(click > 0.5))


def train_arrays(store: EncodedStore, split: str, task: Task) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 (n, F), labels float32 (n,) or (n, 2)) that `task` trains on."""
    ids = store.ids(split)
    click, ctcvr = funnel_labels(store, split, task)
    if task.name == "ctr":
        return ids, click
    if task.name == "ctcvr":
        return ids, ctcvr
    if task.name == "esmm":
        return ids, np.stack([click, ctcvr], axis=1)
    clicked = np.flatnonzero(click > 0.5)
    if len(clicked) == 0:
        raise ValueError(
            f"store {store.path}: split {split!r} has no clicked rows, so task=cvr has nothing "
            "to train on"
        )
    return np.asarray(ids[clicked]), ctcvr[clicked]


class FunnelDataModule(StoreDataModule):
    """StoreDataModule whose training rows and labels follow a task; evaluation gets targets."""

    def __init__(self, store: EncodedStore, task: Task, **kwargs) -> None:
        super().__init__(store, label=task.train_label, **kwargs)
        task.check_labels(store.label_names, f"store {store.path}")
        self.task = task

    def batches(self, split: str, batch_size: int) -> SliceBatches:
        if split == "train":
            ids, labels = train_arrays(self.store, split, self.task)
        else:
            ids, labels = self.store.ids(split), eval_targets(self.store, split, self.task)
        rank, world = self.process()
        if len(ids) == 0:
            raise ValueError(f"store {self.store.path}: split {split!r} has no rows")
        if len(ids) < world:
            raise ValueError(
                f"store {self.store.path}: split {split!r} has {len(ids)} rows, fewer than the "
                f"{world} processes"
            )
        return SliceBatches(ids, labels, batch_size, rank, world)
