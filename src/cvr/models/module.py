"""CTRModule: the LightningModule that trains any CTR model on (ids, labels) batches.

It owns the loss (BCE with logits), the optimisers, and metric accumulation over the whole
validation/test split (predictions are concatenated and scored once, never an average of
per-batch AUCs). Logged names: `train/loss`, `train/samples_per_s`, `val/auc`, `val/logloss`,
`val/ne`, `val/calibration`, `val/auc_best`, `test/...`.

Optimisation is manual so that one code path serves a single dense optimiser, a sparse + dense
pair (SparseAdam cannot take dense gradients) and the fused CPU kernels (`model.backend=fused`),
which update the touched rows in place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from cvr.metrics import binary_metrics
from cvr.models.embeddings import FullEmbedding

log = logging.getLogger(__name__)

OptimizerFactory = Callable[..., torch.optim.Optimizer]


def split_sparse_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(parameters that receive sparse gradients, all the others)."""
    sparse_ids = {
        id(m.weight) for m in model.modules() if isinstance(m, FullEmbedding) and m.sparse
    }
    sparse = [p for p in model.parameters() if id(p) in sparse_ids]
    dense = [p for p in model.parameters() if id(p) not in sparse_ids]
    return sparse, dense


class FusedStepMarker(torch.optim.Optimizer):
    """Stands in for the optimiser when the fused kernels train.

    The kernels update the touched rows inside `train_batch`; Lightning still needs an optimiser
    step per batch to count `global_step` (step checkpoints, logging cadence), so this one's
    `step` only marks that an update happened.
    """

    def __init__(self, params) -> None:
        super().__init__(params, {"lr": 0.0})

    def step(self, closure=None):
        return None


class CTRModule(L.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory | None = None,
        sparse_optimizer: OptimizerFactory | None = None,
        fused: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.model = model
        self.optimizer_factory = optimizer or (lambda params: torch.optim.Adagrad(params, lr=0.05))
        self.sparse_optimizer_factory = sparse_optimizer
        self.fused_trainer = None
        if getattr(model, "backend", "autograd") == "fused":
            self.fused_trainer = self._make_fused_trainer(fused or {})
        self._outputs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self._epoch_start = 0.0
        self._epoch_samples = 0
        self._batches_in_epoch = 0
        self._resume_skip = 0
        self.best_val_auc = float("-inf")
        self.last_metrics: dict[str, float] = {}

    # --- construction -----------------------------------------------------------------------
    def _make_fused_trainer(self, options: dict[str, Any]):
        from cvr.kernels import FusedTrainer, fused_available

        ok, reason = fused_available()
        if not ok:
            log.warning("fused kernels unavailable (%s); falling back to autograd", reason)
            self.model.backend = "autograd"
            return None
        if not getattr(self.model, "fused_capable", False):
            log.warning(
                "model.backend=fused: %s has no fused kernel; using autograd",
                type(self.model).__name__,
            )
            self.model.backend = "autograd"
            return None
        try:
            return FusedTrainer(self.model, **options)
        except TypeError as err:  # e.g. an embedding variant the kernels don't cover
            log.warning("model.backend=fused: %s; using autograd", err)
            self.model.backend = "autograd"
            return None

    def setup(self, stage: str) -> None:
        # The kernels are CPU code; on an accelerator the autograd path trains instead.
        from lightning.pytorch.accelerators import CPUAccelerator

        if self.fused_trainer is not None and not isinstance(
            self.trainer.accelerator, CPUAccelerator
        ):
            log.warning("model.backend=fused runs on CPU only; using autograd on this device")
            self.fused_trainer = None
            self.model.backend = "autograd"

    def configure_optimizers(self):
        if self.fused_trainer is not None:
            return FusedStepMarker([self.model.bias])
        sparse, dense = split_sparse_parameters(self.model)
        if sparse and self.sparse_optimizer_factory is not None:
            optimizers = [self.sparse_optimizer_factory(sparse)]
            if dense:
                optimizers.append(self.optimizer_factory(dense))
            return optimizers
        return self.optimizer_factory(list(self.model.parameters()))

    # --- forward ---------------------------------------------------------------------------
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids)

    def predict_logits(self, ids: torch.Tensor) -> torch.Tensor:
        if self.fused_trainer is not None and ids.device.type == "cpu":
            from cvr.kernels import fused_logits

            return torch.from_numpy(fused_logits(self.model, ids.numpy()))
        return self.model(ids)

    # --- training --------------------------------------------------------------------------
    def on_train_start(self) -> None:
        self._epoch_start = time.perf_counter()
        # Resumed from a mid-epoch checkpoint: continue the same epoch's order after the batches
        # already trained, so the run matches an uninterrupted one.
        skip, self._resume_skip = self._resume_skip, 0
        if 0 < skip < self.trainer.num_training_batches:
            self.trainer.train_dataloader.sampler.skip_next(skip)
            self._batches_in_epoch = skip

    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()
        self._epoch_samples = 0
        self._batches_in_epoch = 0

    def training_step(self, batch, batch_idx):
        ids, labels = batch
        self._epoch_samples += len(ids)
        self._batches_in_epoch += 1
        if self.fused_trainer is not None:
            loss = torch.tensor(self.fused_trainer.train_batch(ids.numpy(), labels.numpy()))
            self.optimizers().step()
        else:
            optimizers = self.optimizers()
            optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
            for opt in optimizers:
                opt.zero_grad()
            loss = nn.functional.binary_cross_entropy_with_logits(self.model(ids), labels)
            self.manual_backward(loss)
            for opt in optimizers:
                opt.step()
        self.log(
            "train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(ids)
        )
        return loss

    def on_train_epoch_end(self) -> None:
        seconds = time.perf_counter() - self._epoch_start
        if seconds > 0 and self._epoch_samples:
            self.log("train/samples_per_s", self._epoch_samples / seconds)
            self.log("train/epoch_seconds", seconds)

    # --- evaluation ------------------------------------------------------------------------
    def _collect(self, split: str, batch) -> None:
        ids, labels = batch
        with torch.no_grad():
            probs = torch.sigmoid(self.predict_logits(ids))
        self._outputs.setdefault(split, []).append((labels.cpu().numpy(), probs.cpu().numpy()))

    def _score(self, split: str) -> dict[str, float]:
        outputs = self._outputs.pop(split, [])
        if not outputs:
            return {}
        labels = np.concatenate([o[0] for o in outputs])
        probs = np.concatenate([o[1] for o in outputs])
        metrics = {f"{split}/{k}": v for k, v in binary_metrics(labels, probs).items()}
        self.last_metrics.update(metrics)
        return metrics

    def validation_step(self, batch, batch_idx):
        self._collect("val", batch)

    def on_validation_epoch_end(self) -> None:
        metrics = self._score("val")
        if not metrics:
            return
        if not self.trainer.sanity_checking:
            self.best_val_auc = max(self.best_val_auc, metrics["val/auc"])
            metrics["val/auc_best"] = self.best_val_auc
        self.log_dict(metrics, prog_bar=True)

    def test_step(self, batch, batch_idx):
        self._collect("test", batch)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self._score("test"))

    # --- checkpoints -----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["best_val_auc"] = self.best_val_auc
        checkpoint["batches_in_epoch"] = self._batches_in_epoch
        if self.fused_trainer is not None:
            checkpoint["fused_state"] = self.fused_trainer.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best_val_auc = checkpoint.get("best_val_auc", float("-inf"))
        self._resume_skip = int(checkpoint.get("batches_in_epoch", 0))
        if self.fused_trainer is not None and "fused_state" in checkpoint:
            self.fused_trainer.load_state_dict(checkpoint["fused_state"])
