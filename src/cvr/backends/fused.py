"""The fused numba CPU kernels as a backend: per-example in-place updates of an FM/FFM's touched
rows (`cvr.kernels`), libffm-style. One process, CPU only: the kernels exchange no gradients,
so `select_backend` never picks them under DDP."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from cvr.backends.base import Backward, Optimization, TrainingBackend


class StepCounter(torch.optim.Optimizer):
    """The optimiser a training loop steps when the kernels train.

    The kernels update the rows inside `train_batch`; Lightning still counts `global_step` in
    optimiser steps (step checkpoints, logging cadence), so this one's `step` only marks that an
    update happened. It holds no state: the accumulators are the backend's `state_dict`.
    """

    def __init__(self, params) -> None:
        super().__init__(params, {"lr": 0.0})

    def step(self, closure=None):
        return None


class FusedBackend(TrainingBackend):
    name = "fused"

    def __init__(
        self, model: nn.Module, optimization: Optimization | None = None, threads: int = 1
    ) -> None:
        super().__init__(model, optimization)
        self.threads = int(threads)
        self._trainer = None
        self._counter: StepCounter | None = None

    @property
    def trainer(self):
        """The kernels' trainer, made on first use (a scoring-only backend never allocates the
        accumulators, which are as large as the model)."""
        if self._trainer is None:
            from cvr.kernels import FusedTrainer

            options = dict(self._training().fused or {})
            self._trainer = FusedTrainer(self.model, lr=self.lr, threads=self.threads, **options)
        return self._trainer

    def optimizers(self) -> list[torch.optim.Optimizer]:
        if self._counter is None:
            self._counter = StepCounter([self.model.bias])
        return [self._counter]

    def train_batch(
        self,
        ids: torch.Tensor,
        labels: torch.Tensor,
        optimizers: Sequence[Any] | None = None,
        backward: Backward | None = None,
    ) -> torch.Tensor:
        loss = self.trainer.train_batch(_numpy(ids), _numpy(labels))
        for optimizer in self.optimizers() if optimizers is None else optimizers:
            optimizer.step()
        return torch.tensor(loss, dtype=torch.float32)

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        from cvr.kernels import fused_logits

        return torch.from_numpy(fused_logits(self.model, _numpy(ids)))

    def state_dict(self) -> dict[str, Any]:
        """The AdaGrad accumulators (empty for SGD), sharing memory with the live state."""
        return self.trainer.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.trainer.load_state_dict(dict(state))


def _numpy(t: torch.Tensor | np.ndarray) -> np.ndarray:
    return t.detach().numpy() if isinstance(t, torch.Tensor) else t
