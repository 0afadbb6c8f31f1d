"""Lightning callbacks of the project.

`EfficiencyProfile` measures what a trained model costs (`cvr.profiling`) and, opt-in, what
post-training quantization of its tables costs in quality (`cvr.models.quantize`):

- during fit: wall time and samples of every training epoch, timed from the epoch's start to its
  last training batch (validation excluded);
- `on_fit_end`: `profile_model` of the module's model (on the serving backend) on rows of the sample
  split, plus `eff/train_samples_per_s` and `eff/epoch_seconds` (medians over the epochs after the
  first; the only epoch when there is one), and `eff/<precision>/...` for each `quantize` entry;
- `on_test_end` (only when `quantize` is set): `test/<precision>/auc` and `test/<precision>/logloss`
  of the quantized copy on the whole test split, i.e. of the same weights `trainer.test` scored.

Results are logged to every logger of the trainer, kept in `self.metrics`, and merged into
`pl_module.last_metrics` when the module has that dict (CTRModule does; the pipeline writes it to
metrics.json and MLflow). Data comes from `trainer.datamodule.store` (`ids(split)`,
`labels(split, trainer.datamodule.label)`); without a store, latency batches are uniform random
ids over the model's cardinalities and the quantized test metrics are skipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
from torch import nn

from cvr.models.quantize import (
    PRECISIONS,
    auc_logloss,
    logits_in_batches,
    module_device,
    quantize_model,
)
from cvr.profiling import profile_model, profile_quantized, unwrap

log = logging.getLogger(__name__)


class EfficiencyProfile(L.Callback):
    """Logs the `eff/...` profile after fit and quantized test metrics after test."""

    def __init__(
        self,
        threads: int = 1,
        quantize: Sequence[str] = (),
        enabled: bool = True,
        batch_sizes: Sequence[int] = (1, 64, 1024),
        throughput_batch: int = 4096,
        repeats: int = 50,
        sample_split: str = "test",
        sample_rows: int = 4096,
        eval_batch_size: int = 65536,
    ) -> None:
        unknown = [p for p in quantize if p not in PRECISIONS]
        if unknown:
            raise ValueError(f"EfficiencyProfile.quantize: {unknown} not in {PRECISIONS}")
        self.threads = threads
        self.quantize = list(quantize)
        self.enabled = enabled
        self.profile_options = {
            "batch_sizes": tuple(batch_sizes),
            "throughput_batch": throughput_batch,
            "threads": threads,
            "repeats": repeats,
        }
        self.sample_split = sample_split
        self.sample_rows = sample_rows
        self.eval_batch_size = eval_batch_size
        self.metrics: dict[str, float] = {}
        self.epochs: list[tuple[int, float]] = []  # (samples, seconds) of each training epoch
        self._epoch_start = self._last_batch_end = 0.0
        self._epoch_samples = 0

    # --- training timing -------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = self._last_batch_end = time.perf_counter()
        self._epoch_samples = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # Under DDP each process trains an equal share of every global batch.
        self._epoch_samples += len(batch[0]) * trainer.world_size
        self._last_batch_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = self._last_batch_end - self._epoch_start
        if self._epoch_samples and seconds > 0:
            self.epochs.append((self._epoch_samples, seconds))

    def training_speed(self) -> dict[str, float]:
        """eff/train_samples_per_s and eff/epoch_seconds: medians over epochs after the first."""
        epochs = self.epochs[1:] or self.epochs
        if not epochs:
            return {}
        return {
            "eff/train_samples_per_s": float(np.median([n / s for n, s in epochs])),
            "eff/epoch_seconds": float(np.median([s for _, s in epochs])),
        }

    # --- profile ---------------------------------------------------------------------------
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or not trainer.is_global_zero:
            return
        model = unwrap(pl_module)
        sample = self._sample_ids(trainer, model)
        metrics = profile_model(
            pl_module,
            sample,
            checkpoint_path=self._checkpoint_path(trainer),
            **self.profile_options,
        )
        metrics.update(self.training_speed())
        if self.quantize:
            try:
                metrics.update(
                    profile_quantized(model, sample, self.quantize, **self.profile_options)
                )
            except NotImplementedError as error:
                log.warning("EfficiencyProfile: no quantized profile: %s", error)
        self._publish(trainer, pl_module, metrics)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or not self.quantize or not trainer.is_global_zero:
            return
        store = getattr(trainer.datamodule, "store", None)
        if store is None:
            log.warning("EfficiencyProfile: no datamodule store; quantized test metrics skipped")
            return
        if getattr(trainer.datamodule, "task", None) is not None:
            # A funnel task scores heads on their own rows (cvr.funnel_metrics), not one logit
            # against one label over the split; its quantized quality is not scored here.
            log.warning("EfficiencyProfile: quantized test metrics are not scored for task=...")
            return
        ids = store.ids("test")
        labels = store.labels("test", getattr(trainer.datamodule, "label", None))
        model = unwrap(pl_module)
        metrics: dict[str, float] = {}
        for precision in self.quantize:
            try:
                quantized = quantize_model(model, precision)
            except NotImplementedError as error:
                log.warning("EfficiencyProfile: %s", error)
                return
            logits = logits_in_batches(
                quantized, ids, self.eval_batch_size, module_device(quantized)
            )
            metrics.update(auc_logloss(labels, logits, f"test/{precision}"))
        self._publish(trainer, pl_module, metrics)

    # --- helpers ---------------------------------------------------------------------------
    def _sample_ids(self, trainer: L.Trainer, model: nn.Module) -> np.ndarray:
        """Up to sample_rows rows of the sample split, else uniform random ids: int32 (N, F)."""
        store = getattr(trainer.datamodule, "store", None)
        if store is not None and store.rows(self.sample_split) > 0:
            # A copy out of the memory map, so the profile does not hold the file open.
            return np.array(store.ids(self.sample_split)[: self.sample_rows], dtype=np.int32)
        rng = np.random.default_rng(0)
        cards = np.asarray(model.cardinalities, dtype=np.int64)
        return (rng.random((self.sample_rows, len(cards))) * cards).astype(np.int32)

    @staticmethod
    def _checkpoint_path(trainer: L.Trainer) -> str | None:
        callback = trainer.checkpoint_callback
        if callback is None:
            return None
        return callback.best_model_path or callback.last_model_path or None

    def _publish(self, trainer: L.Trainer, pl_module: Any, metrics: dict[str, float]) -> None:
        self.metrics.update(metrics)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        last_metrics = getattr(pl_module, "last_metrics", None)
        if isinstance(last_metrics, dict):
            last_metrics.update(metrics)
