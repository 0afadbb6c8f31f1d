"""The plain PyTorch backend: forward, BCE loss, backward, torch.optim. Any model, any device,
any embedding variant, correct under DDP (gradients are all-reduced by the backward hook)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
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


#: Devices where torch's optimisers have a fused implementation.
_FUSED_DEVICES = ("cpu", "cuda")


def make_optimizer(
    factory: Callable[..., torch.optim.Optimizer],
    params: list[nn.Parameter],
    lr: float,
    sparse_grads: bool,
) -> torch.optim.Optimizer:
    """`factory(params, lr=lr)`, in torch's fused implementation where it has one for them.

    torch's default on the CPU is its per-tensor loop (several passes over every table per step,
    an intermediate tensor each); the fused kernel is one pass. ESMM at the CVR study's shape
    (FFM towers: 3 tables of 40k x 32 floats; batch 250, one thread; scripts/bench_optim.py): a
    training step 38.6 -> 18.6 ms with FFM towers, 9.3 -> 7.7 ms with FM towers. Results agree
    to float32 rounding, not bit for bit (the study's naive FM run: test cvr_auc_clicked equal
    to 2e-7). Not used where torch has
    none: sparse gradients, optimisers without `fused` (SparseAdam), non-float parameters or
    other devices, or where the config already chose `fused` or `foreach`.
    """
    target = factory.func if isinstance(factory, functools.partial) else factory
    chosen = factory.keywords if isinstance(factory, functools.partial) else {}
    try:
        takes_fused = "fused" in inspect.signature(target).parameters
    except (TypeError, ValueError):  # no signature to read: call it as it is
        takes_fused = False
    fusable = (
        takes_fused
        and not sparse_grads
        and not {"fused", "foreach"} & set(chosen)
        and all(p.dtype.is_floating_point and p.device.type in _FUSED_DEVICES for p in params)
    )
    return factory(params, lr=lr, fused=True) if fusable else factory(params, lr=lr)


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
                    self._optimizers.append(make_optimizer(opt.dense, dense, lr, False))
            else:
                params = list(self.model.parameters())
                self._optimizers = [make_optimizer(opt.dense, params, lr, bool(sparse))]
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
