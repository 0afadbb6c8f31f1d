"""Fused CPU kernels (numba) for FM and FFM: per-example in-place training and fast logits.

    ok, reason = fused_available()           # numba importable and the kernels compile
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
