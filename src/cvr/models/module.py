"""CTRModule: the LightningModule that trains any CTR model on (ids, labels) batches.

It owns the loss bookkeeping, metric accumulation over the whole validation/test split
(predictions are concatenated, gathered from every process under DDP, and scored once, never an
average of per-batch AUCs) and the names it logs: `train/loss`, `train/samples_per_s`,
`train/param_checksum`, `val/auc`, `val/logloss`, `val/ne`, `val/calibration`, `val/auc_best`,
`test/...`.

How a batch trains and scores is the backend's (`cvr.backends`): autograd + torch.optim, or the
fused CPU kernels. The module is handed a selected backend, or selects one in `setup` from its
trainer's device and strategy; either way `select_backend` decides, once. Optimisation is manual
so that one code path serves every backend.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from cvr.backends import BackendError, Optimization, TrainingBackend, select_backend
from cvr.backends.distributed import (
    checksums_agree,
    gather_concat,
    parameter_checksum,
    strategy_name,
    sum_over_processes,
)
from cvr.backends.select import fused_unsupported
from cvr.metrics import binary_metrics

log = logging.getLogger(__name__)


class CTRModule(L.LightningModule):
    """Trains `model` with a backend.

    backend: a backend from `select_backend` (checked against the trainer in `setup`), or a
    request ("auto", "fused", "autograd") selected in `setup`. optimization and threads are used
    only when selecting here.
    """

    def __init__(
        self,
        model: nn.Module,
        backend: TrainingBackend | str = "auto",
        optimization: Optimization | None = None,
        threads: int = 1,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.model = model
        self.backend: TrainingBackend | None = None
        self.backend_reason = ""
        if isinstance(backend, TrainingBackend):
            self.backend, self.requested = backend, backend.name
            self.optimization = backend.optimization
        else:
            self.requested, self.optimization = backend, optimization or Optimization()
        self.threads = threads
        self._outputs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self._epoch_start = 0.0
        self._epoch_samples = 0
        self._epoch_loss_sum = 0.0
        self._batches_in_epoch = 0
        self._resume_skip = 0
        self.best_val_auc = float("-inf")
        self.last_metrics: dict[str, float] = {}

    # --- backend ---------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        device, strategy = self.trainer.strategy.root_device, strategy_name(self.trainer)
        if self.backend is None:
            self.backend, self.backend_reason = select_backend(
                self.model,
                self.requested,
                device,
                strategy,
                optimization=self.optimization,
                threads=self.threads,
            )
            rank_zero_info(f"backend: {self.backend_reason}")
        elif self.backend.name == "fused":
            # Chosen before the trainer existed: refuse, never train per process or off-CPU.
            why_not = fused_unsupported(self.model, device, strategy, self.optimization)
            if why_not is not None:
                raise BackendError(f"the fused backend cannot run in this trainer: {why_not}")

    def scoring_backend(self) -> TrainingBackend:
        """The backend that scores: the training one, or (before any fit) the serving choice."""
        if self.backend is None:
            device = next(self.model.parameters()).device
            self.backend, self.backend_reason = select_backend(
                self.model, self.requested, device, None, optimization=self.optimization
            )
        return self.backend

    def configure_optimizers(self):
        return self.backend.optimizers()

    # --- forward ---------------------------------------------------------------------------
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids)

    def predict_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits float32 (B,) through the backend (no autograd graph)."""
        return self.scoring_backend().logits(ids)

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
        self._epoch_loss_sum = 0.0
        self._batches_in_epoch = 0

    def training_step(self, batch, batch_idx):
        ids, labels = batch
        self._epoch_samples += len(ids)
        self._batches_in_epoch += 1
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        loss = self.backend.train_batch(ids, labels, optimizers, self.manual_backward)
        self._epoch_loss_sum += float(loss.detach()) * len(ids)
        # A step value is synced as it is logged, on every process at once. Epoch values are
        # reduced here by hand instead (on_train_epoch_end): Lightning reduces them lazily, on
        # whichever process reads them first, and its progress bar reads them on rank 0 alone,
        # so a DDP run with the bar on entered that collective on one process and hung.
        self.log(
            "train/loss_step",
            loss,
            on_step=True,
            on_epoch=False,
            prog_bar=True,
            batch_size=len(ids),
            sync_dist=self.trainer.world_size > 1,
        )
        return loss

    def on_train_epoch_end(self) -> None:
        seconds = time.perf_counter() - self._epoch_start
        # Every process trains the same number of batches; the speed is that of all of them.
        samples = self._epoch_samples * self.trainer.world_size
        loss_sum, rows = sum_over_processes(self._epoch_loss_sum, float(self._epoch_samples))
        # Every value logged below is the same on every process: nothing left for Lightning
        # to reduce (see training_step).
        if rows:
            self.log("train/loss_epoch", loss_sum / rows, prog_bar=True)
        if seconds > 0 and samples:
            self.log("train/samples_per_s", samples / seconds)
            self.log("train/epoch_seconds", seconds)
            self.last_metrics["train/samples_per_s"] = samples / seconds  # the last epoch's
        checksums = checksums_agree(parameter_checksum(self.model))
        if self.trainer.world_size > 1:
            rank_zero_info(
                f"epoch {self.current_epoch}: parameter checksums by rank {checksums} (equal)"
            )
        checksum = checksums[0]
        self.log("train/param_checksum", checksum)
        self.last_metrics["train/param_checksum"] = checksum

    # --- evaluation ------------------------------------------------------------------------
    def _collect(self, split: str, batch) -> None:
        ids, labels = batch
        probs = torch.sigmoid(self.predict_logits(ids))
        self._outputs.setdefault(split, []).append((labels.cpu().numpy(), probs.cpu().numpy()))

    def _score(self, split: str) -> dict[str, float]:
        outputs = self._outputs.pop(split, [])
        labels = np.concatenate([o[0] for o in outputs]) if outputs else np.zeros(0, np.float32)
        probs = np.concatenate([o[1] for o in outputs]) if outputs else np.zeros(0, np.float32)
        # Each process scored its own rows; the metrics are of all of them, each row once.
        labels, probs = gather_concat(labels, probs)
        if len(labels) == 0:
            return {}
        metrics = {f"{split}/{k}": v for k, v in binary_metrics(labels, probs).items()}
        metrics[f"{split}/rows"] = float(len(labels))
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
        # Identical on every process (scored on the gathered split): nothing to reduce.
        self.log_dict(metrics, prog_bar=True)

    def test_step(self, batch, batch_idx):
        self._collect("test", batch)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self._score("test"))  # gathered: the same on every process

    # --- checkpoints -----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["best_val_auc"] = self.best_val_auc
        checkpoint["batches_in_epoch"] = self._batches_in_epoch
        if self.backend is not None:
            checkpoint["backend"] = {
                "name": self.backend.name,
                "state": self.backend.state_dict(),
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best_val_auc = checkpoint.get("best_val_auc", float("-inf"))
        self._resume_skip = int(checkpoint.get("batches_in_epoch", 0))
        saved = checkpoint.get("backend")
        if saved is None and "fused_state" in checkpoint:  # checkpoints before cvr.backends
            saved = {"name": "fused", "state": checkpoint["fused_state"]}
        if saved is None or self.backend is None:
            return
        if saved["name"] != self.backend.name:
            log.warning(
                "checkpoint trained with the %s backend, continuing with %s: its optimiser "
                "state does not carry over",
                saved["name"],
                self.backend.name,
            )
            return
        self.backend.load_state_dict(saved["state"])
