"""The plain PyTorch backend: forward, BCE loss, backward, torch.optim. Any model, any device,
any embedding variant, correct under DDP (gradients are all-reduced by the backward hook)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from cvr.backends.base import Backward, TrainingBackend
from cvr.models.tables import FullEmbedding


def split_sparse_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(parameters that receive sparse gradients, all the others)."""
    sparse_ids = {
        id(m.weight) for m in model.modules() if isinstance(m, FullEmbedding) and m.sparse
    }
    sparse = [p for p in model.parameters() if id(p) in sparse_ids]
    dense = [p for p in model.parameters() if id(p) not in sparse_ids]
    return sparse, dense


class AutogradBackend(TrainingBackend):
    name = "autograd"

    _optimizers: list[torch.optim.Optimizer] | None = None

    def optimizers(self) -> list[torch.optim.Optimizer]:
        if self._optimizers is None:
            # Made on first use, i.e. after the model was moved to its device.
            opt, lr = self._training(), self.lr
            sparse, dense = split_sparse_parameters(self.model)
            if sparse and opt.sparse is not None:
                self._optimizers = [opt.sparse(sparse, lr=lr)]
                if dense:
                    self._optimizers.append(opt.dense(dense, lr=lr))
            else:
                self._optimizers = [opt.dense(list(self.model.parameters()), lr=lr)]
        return self._optimizers

    def train_batch(
        self,
        ids: torch.Tensor,
        labels: torch.Tensor,
        optimizers: Sequence[Any] | None = None,
        backward: Backward | None = None,
    ) -> torch.Tensor:
        optimizers = self.optimizers() if optimizers is None else optimizers
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(self.model(ids), labels)
        if backward is None:
            loss.backward()
        else:
            backward(loss)
        for optimizer in optimizers:
            optimizer.step()
        return loss.detach()

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(ids)
