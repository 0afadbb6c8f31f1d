"""`select_backend`: the one place that decides which backend trains or scores a model.

    backend, reason = select_backend(model, "auto", device="cpu", strategy=None,
                                     optimization=Optimization(...), threads=1)

requested: "auto" (fused where it is correct and supported, else autograd), "fused" (refused
with a BackendError saying why and what to use where it cannot run) or "autograd". device: where
the model's parameters live. strategy: the distributed strategy's name when more than one
process trains ("ddp", ...), else None. optimization: how training optimises; None selects for
scoring only (the Predictor, the profiler), where the optimiser does not matter.
"""

from __future__ import annotations

import torch
from torch import nn

from cvr.backends.autograd import AutogradBackend
from cvr.backends.base import BackendError, Optimization, TrainingBackend
from cvr.backends.fused import FusedBackend

REQUESTS = ("auto", "fused", "autograd")
BACKENDS = {"autograd": AutogradBackend, "fused": FusedBackend}


def fused_unsupported(
    model: nn.Module,
    device: torch.device | str = "cpu",
    strategy: str | None = None,
    optimization: Optimization | None = None,
) -> str | None:
    """None if the fused kernels are correct and can run here, else the reason they are not."""
    if strategy is not None:
        return (
            f"under strategy {strategy} every process would update its own copy of the model "
            "in place (the kernels exchange no gradients)"
        )
    if torch.device(device).type != "cpu":
        return f"the kernels are CPU code and this run is on {torch.device(device).type}"
    if optimization is not None and optimization.fused is None:
        name = optimization.name
        return f"optimizer {name} has no fused equivalent (the kernels run adagrad and sgd)"
    from cvr.kernels import fused_unsupported as kernel_unsupported

    return kernel_unsupported(model)


def select_backend(
    model: nn.Module,
    requested: str = "auto",
    device: torch.device | str = "cpu",
    strategy: str | None = None,
    *,
    optimization: Optimization | None = None,
    threads: int = 1,
) -> tuple[TrainingBackend, str]:
    """(the backend for `model` here, one line saying which and why); see the module doc."""
    if requested not in REQUESTS:
        raise BackendError(f"backend: expected one of {list(REQUESTS)}, got {requested!r}")
    kind = type(model).__name__
    if requested == "autograd":
        return AutogradBackend(model, optimization), f"autograd for {kind}: backend=autograd"
    why_not = fused_unsupported(model, device, strategy, optimization)
    if why_not is None:
        where = f"{kind} with plain tables on the CPU, one process"
        return FusedBackend(model, optimization, threads), f"fused kernels for {where}"
    if requested == "fused":
        raise BackendError(
            f"backend=fused cannot train {kind} here: {why_not}; use backend=autograd "
            "(or backend=auto, which picks the fused kernels wherever they are correct)"
        )
    return AutogradBackend(model, optimization), f"autograd for {kind}: fused not used, {why_not}"
