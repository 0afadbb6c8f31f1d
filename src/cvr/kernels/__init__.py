"""Fused CPU kernels (numba) for FM and FFM: per-example in-place training and fast logits.

    ok, reason = fused_available()           # numba importable and the kernels compile
    why_not = fused_unsupported(model)       # None, or why the kernels cannot run this model
    trainer = FusedTrainer(model, optimizer="adagrad", lr=0.1, threads=1)
    loss = trainer.train_batch(ids, labels)  # ids int (B, F) field-local, labels float (B,)
    logits = fused_logits(model, ids)        # float32 (B,)

Training updates `model`'s own parameter storage in place (no copies), one example at a time,
touching only the rows the example uses, like libffm. `threads=1` is deterministic; `threads>1`
is Hogwild (lock-free, nondeterministic). The modules: `fused.py` (numba plumbing, shared scalar
math, trainer/predictor bases), `ffm.py` and `fm.py` (each model's kernels).
"""

from __future__ import annotations

import weakref

import numpy as np
import torch

from cvr.kernels.ffm import FFMPredictor, FusedFFMTrainer
from cvr.kernels.fm import FMPredictor, FusedFMTrainer
from cvr.kernels.fused import FUSED_AVAILABLE, UNAVAILABLE_REASON, FusedTrainerBase
from cvr.models.ctr import FFM, FM
from cvr.models.tables import FullEmbedding

__all__ = [
    "FUSED_AVAILABLE",
    "UNAVAILABLE_REASON",
    "FFMPredictor",
    "FMPredictor",
    "FusedFFMTrainer",
    "FusedFMTrainer",
    "FusedTrainer",
    "fused_available",
    "fused_logits",
    "fused_unsupported",
    "predictor",
]

_TRAINERS = {FFM: FusedFFMTrainer, FM: FusedFMTrainer}
_PREDICTORS = {FFM: FFMPredictor, FM: FMPredictor}
_predictor_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_probe_result: tuple[bool, str] | None = None


def _kind(model: torch.nn.Module) -> type:
    for kind in (FFM, FM):
        if isinstance(model, kind):
            return kind
    raise TypeError(f"fused kernels run FM and FFM models, got {type(model).__name__}")


def fused_unsupported(model: torch.nn.Module) -> str | None:
    """None if the fused kernels can train and score `model`, else the reason they cannot.

    The capability check callers ask before building a kernel (`cvr.backends.select_backend`),
    so a constructor that raises is a bug, never a "not supported" answer. Mirrors the checks of
    `fused.check_model`, `field_layout` and `param_array`; the probe (`fused_available`) is last
    because it compiles the kernels on first use.
    """
    kind = next((k for k in (FFM, FM) if isinstance(model, k)), None)
    if kind is None:
        return f"the fused kernels run FM and FFM, not {type(model).__name__}"
    for part in ("embedding", "linear"):
        table = getattr(model, part, None)
        if type(table) is not FullEmbedding:
            return (
                f"the fused kernels need plain `full` tables, model.{part} is "
                f"{type(table).__name__}"
            )
    for name, param in (
        ("embedding.weight", model.embedding.weight),
        ("linear.weight", model.linear.weight),
        ("bias", model.bias),
    ):
        if param.device.type != "cpu" or param.dtype != torch.float32 or not param.is_contiguous():
            return f"the fused kernels need {name} as contiguous float32 on the CPU"
    if not torch.equal(model.embedding.offsets.cpu(), model.linear.offsets.cpu()):
        return "model.linear and model.embedding do not share field offsets"
    ok, reason = fused_available()
    return None if ok else reason


def FusedTrainer(model: torch.nn.Module, **options) -> FusedTrainerBase:
    """The fused trainer for `model` (FusedFFMTrainer or FusedFMTrainer); options as theirs.

    A function named like a class: callers construct "a FusedTrainer" without caring which.
    """
    return _TRAINERS[_kind(model)](model, **options)


def predictor(model: torch.nn.Module) -> FFMPredictor | FMPredictor:
    """The cached predictor of `model` (created on first use, dropped with the model)."""
    cached = _predictor_cache.get(model)
    if cached is None:
        cached = _PREDICTORS[_kind(model)](model)
        _predictor_cache[model] = cached
    return cached


def fused_logits(
    model: torch.nn.Module, ids: np.ndarray | torch.Tensor, threads: int | None = None
) -> np.ndarray:
    """Logits of an FM or FFM: ids int (B, F) field-local -> float32 (B,).

    threads: at most this many threads (None: all cores); small batches run on one thread.
    """
    return predictor(model).logits(ids, threads)


def fused_available() -> tuple[bool, str]:
    """(True, "") if numba imports and the kernels compile and run, else (False, reason).

    The first call compiles the kernels for k=4 on a tiny model (seconds; numba caches them on
    disk), so a compiler problem surfaces here rather than mid-training. Memoised.
    """
    global _probe_result
    if _probe_result is not None:
        return _probe_result
    if not FUSED_AVAILABLE:
        _probe_result = (False, UNAVAILABLE_REASON)
        return _probe_result
    try:
        rng = np.random.default_rng(0)
        cards = [3, 5, 7]
        ids = np.stack([rng.integers(0, c, 64) for c in cards], axis=1).astype(np.int32)
        labels = (rng.random(64) < 0.5).astype(np.float32)
        for kind in (FFM, FM):
            model = kind(cards, dim=4)
            FusedTrainer(model).train_batch(ids, labels)
            if not np.isfinite(fused_logits(model, ids)).all():
                raise RuntimeError("probe produced non-finite logits")
        _probe_result = (True, "")
    except Exception as exc:  # any compile/runtime failure means: fall back to autograd
        _probe_result = (False, f"fused kernel probe failed: {type(exc).__name__}: {exc}")
    return _probe_result
