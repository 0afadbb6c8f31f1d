"""The GPU path (trainer=gpu: autograd FFM, large batches), run on every device present.

The same code trains on the CPU here and on a GPU where there is one: the device is a
parameter, the CUDA case is skipped (with its reason) on machines without one.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch

from cvr.data.datamodule import StoreDataModule
from cvr.data.synthetic import build_synthetic_store
from cvr.models.ctr import FFM
from cvr.models.module import CTRModule
from tests.helpers import compose_train

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here"),
    ),
]


def test_trainer_gpu_is_one_gpu_with_large_batches(tmp_path):
    cfg = compose_train(tmp_path, ["trainer=gpu", "logger=none"])
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.devices == 1
    assert cfg.datamodule.batch_size >= 16384
    assert cfg.backend.name == "auto"  # autograd on a GPU: select_backend decides


@pytest.mark.parametrize("device", DEVICES)
def test_the_autograd_ffm_trains_and_scores_on_the_device(tmp_path, device):
    store = build_synthetic_store(
        tmp_path / "cache",
        rows_train=4000,
        rows_val=1000,
        rows_test=500,
        num_fields=5,
        user_fields=2,
        item_fields=1,
        total_values=500,
        seed=0,
        progress=False,
    )
    data = StoreDataModule(store, batch_size=1024, eval_batch_size=4096)
    # On the CPU auto would pick the fused kernels; the GPU path is autograd on any device.
    requested = "auto" if device == "cuda" else "autograd"
    module = CTRModule(FFM(store.cardinalities, dim=4), requested)
    trainer = L.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=data)
    assert module.backend.name == "autograd"
    assert next(module.model.parameters()).device.type == device
    metrics = module.last_metrics
    assert metrics["val/rows"] == 1000
    assert metrics["val/auc"] > 0.55  # learned something beyond chance on the planted FFM
    assert metrics["train/samples_per_s"] > 0
