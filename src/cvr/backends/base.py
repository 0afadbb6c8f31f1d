"""The one interface every training/scoring backend implements, and how to optimise.

    backend.name                                  # "autograd" or "fused"
    backend.optimizers()                          # what a training loop steps and checkpoints
    loss = backend.train_batch(ids, labels)       # one update; float32 scalar tensor (detached)
    logits = backend.logits(ids)                  # float32 (B,), no autograd graph
    backend.state_dict() / load_state_dict(state) # state held outside the model and optimizers()

A backend never decides whether it may run: `cvr.backends.select_backend` does, once, for every
caller (CTRModule, Predictor, profiler).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

OptimizerFactory = Callable[..., torch.optim.Optimizer]
Backward = Callable[[torch.Tensor], None]


class BackendError(ValueError):
    """A backend request that cannot be honoured here; the message says why and what to use."""


def _default_dense() -> OptimizerFactory:
    return torch.optim.Adagrad


@dataclass(frozen=True)
class Optimization:
    """One optimiser, whichever backend trains (`conf/optimizer/*`).

    lr: the learning rate of whatever trains; None means `default_lr[backend]` (a per-example
    update wants a different step than a batch-mean gradient). dense / sparse: torch optimiser
    factories called as factory(params, lr=lr) by the autograd backend (sparse: for tables with
    sparse gradients; None: dense takes them too). fused: the kernels' options for the same
    optimiser (`optimizer`, `initial_accumulator_value`, `weight_decay`, `eps`), or None when the
    kernels have no equivalent (e.g. Adam).
    """

    name: str = "adagrad"
    lr: float | None = None
    default_lr: Mapping[str, float] = field(
        default_factory=lambda: {"fused": 0.02, "autograd": 0.05}
    )
    dense: OptimizerFactory = field(default_factory=_default_dense)
    sparse: OptimizerFactory | None = None
    fused: Mapping[str, Any] | None = field(
        default_factory=lambda: {"optimizer": "adagrad", "initial_accumulator_value": 1.0}
    )

    def lr_for(self, backend: str) -> float:
        """The learning rate `backend` trains with: `lr`, else its default."""
        if self.lr is not None:
            return float(self.lr)
        if backend not in self.default_lr:
            raise BackendError(
                f"optimizer.lr is null and optimizer.default_lr has no entry for the {backend} "
                f"backend; set optimizer.lr"
            )
        return float(self.default_lr[backend])


class TrainingBackend(ABC):
    """Trains and scores one model (see the module docstring for the contract)."""

    name: ClassVar[str]

    def __init__(self, model: nn.Module, optimization: Optimization | None = None) -> None:
        self.model = model
        #: None: built for scoring only (train_batch refuses).
        self.optimization = optimization

    @property
    def lr(self) -> float:
        return self._training().lr_for(self.name)

    def _training(self) -> Optimization:
        if self.optimization is None:
            raise BackendError(f"this {self.name} backend was selected for scoring, not training")
        return self.optimization

    @abstractmethod
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The optimisers a training loop steps once per batch (and checkpoints); made once."""

    @abstractmethod
    def train_batch(
        self,
        ids: torch.Tensor,
        labels: torch.Tensor,
        optimizers: Sequence[Any] | None = None,
        backward: Backward | None = None,
    ) -> torch.Tensor:
        """One update on ids int (B, F) field-local, labels float (B,); returns the mean loss.

        optimizers: wrappers of `optimizers()` to step (Lightning's, so it counts steps); None
        steps `optimizers()` directly. backward: how to back-propagate (Lightning's
        manual_backward, so DDP all-reduces); None is `loss.backward()`.
        """

    @abstractmethod
    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits float32 (B,) of ids int (B, F), without building an autograd graph."""

    def state_dict(self) -> dict[str, Any]:
        """Training state kept outside the model's parameters and `optimizers()`."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        if state:
            raise BackendError(f"the {self.name} backend keeps no state, got keys {sorted(state)}")
