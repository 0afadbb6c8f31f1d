"""The --device arm of scripts/bench_train.py, run on the CPU (the same code a GPU runs)."""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pytest
import torch

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "scripts"))
bench_train = pytest.importorskip("bench_train")


def tiny_npz(path, rows=6000, cards=(7, 5, 9, 4)):
    """Rows whose label depends on field 0's id, so a trained FFM beats chance."""
    rng = np.random.default_rng(0)
    ids = np.stack([rng.integers(0, c, rows) for c in cards], axis=1).astype(np.int32)
    labels = (rng.random(rows) < np.where(ids[:, 0] % 2 == 0, 0.8, 0.2)).astype(np.float32)
    half = rows * 5 // 6
    np.savez(
        path,
        cards=np.asarray(cards),
        train_ids=ids[:half],
        train_labels=labels[:half],
        val_ids=ids[half:],
        val_labels=labels[half:],
    )
    return path


def arm_args(device):
    return argparse.Namespace(device=device, seed=0, k=2, device_lr=0.1, device_batch=256, epochs=2)


def test_the_device_arm_trains_through_the_backend_and_reports_a_table_row(tmp_path):
    row = bench_train.device_arm(tiny_npz(tmp_path / "d.npz"), arm_args("cpu"))
    assert row["system"] == "cpu-autograd" and row["backend"] == "autograd"
    assert row["rows_per_epoch"] == 5000 and row["samples_per_s"] > 0
    assert len(row["val_logloss_by_epoch"]) == 2
    assert row["val_auc"] > 0.7  # the planted field-0 signal is learned
    assert row["val_logloss"] < np.log(2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_without_a_gpu_the_cuda_arm_says_so(tmp_path):
    row = bench_train.device_arm(tiny_npz(tmp_path / "d.npz"), arm_args("cuda"))
    assert "no CUDA device" in row["unavailable"]
