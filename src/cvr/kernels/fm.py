"""Fused FM kernels: per-example logit, log-loss and in-place sparse update, in numba.

Layout: `V` is `embedding.weight` (N, k) flattened, row r at `V[r * k + d]`; `w` is
`linear.weight` flattened; `b` is `bias`. Per example with rows g_0..g_{F-1}:

    z = b + sum_i w[g_i] + sum_{i<j} <V[g_i], V[g_j]>
      = b + sum_i w[g_i] + 0.5 * (|S|^2 - sum_i |V[g_i]|^2),   S = sum_i V[g_i]

and dz/dV[g_i] = S - V[g_i]. S and the squares are summed in float64, which keeps the identity's
cancellation harmless. The work per example is O(F k), so there is nothing to gather.
"""

from __future__ import annotations

import numpy as np

from cvr.kernels.fused import (
    ADAGRAD,
    FusedPredictorBase,
    FusedTrainerBase,
    apply_update,
    bce_with_logits,
    dim_token,
    first_bad_id,
    global_rows,
    njit,
    sigmoid,
)
from cvr.models.ctr import FM

U64 = np.uint64


@njit()
def _logit(ids, e, offsets, V, w, b, kt, rows, S):
    """Logit of example e (float64); leaves rows and S = sum of its vectors in the scratch."""
    global_rows(ids, e, offsets, rows)
    uk = U64(len(kt))
    for d in range(uk):
        S[d] = 0.0
    z = np.float64(b[0])
    squares = 0.0
    for i in range(rows.shape[0]):
        z += w[rows[i]]
        base = rows[i] * uk
        for d in range(uk):
            v = np.float64(V[base + d])
            S[d] += v
            squares += v * v
    total = 0.0
    for d in range(uk):
        total += S[d] * S[d]
    return z + 0.5 * (total - squares)


@njit()
def _train_example(ids, e, y, offsets, V, w, b, GV, Gw, Gb, kt, opt, lr, eps, wd, rows, S):
    """Score example e, then update its vectors, linear weights and the bias in place; returns
    its log-loss from the pre-update logit. S holds pre-update sums, so every gradient does."""
    z = _logit(ids, e, offsets, V, w, b, kt, rows, S)
    y64 = np.float64(y)
    loss = bce_with_logits(z, y64)
    kappa = sigmoid(z) - y64
    lr32 = np.float32(lr)
    eps32 = np.float32(eps)
    wd32 = np.float32(wd)
    uk = U64(len(kt))
    for i in range(rows.shape[0]):
        base = rows[i] * uk
        for d in range(uk):
            v = V[base + d]
            g = np.float32(kappa * (S[d] - v)) + wd32 * v
            if opt == ADAGRAD:
                s = GV[base + d] + g * g
                GV[base + d] = s
                V[base + d] = v - lr32 * g / (np.sqrt(s) + eps32)
            else:
                V[base + d] = v - lr32 * g
    for i in range(rows.shape[0]):
        r = rows[i]
        apply_update(w, Gw, r, kappa + wd * w[r], opt, lr, eps)
    apply_update(b, Gb, 0, kappa + wd * b[0], opt, lr, eps)
    return loss


@njit()
def fm_train(ids, labels, offsets, cards, V, w, b, GV, Gw, Gb, kt, opt, lr, eps, wd, rows, S):
    """Train on the examples strictly in order. Returns (sum of losses, bad id index or -1).

    Hogwild runs this on several threads at once over disjoint pieces of a batch (nogil).
    """
    bad = first_bad_id(ids, cards)
    if bad >= 0:
        return 0.0, bad
    total = 0.0
    for e in range(ids.shape[0]):
        total += _train_example(
            ids, e, labels[e], offsets, V, w, b, GV, Gw, Gb, kt, opt, lr, eps, wd, rows, S
        )
    return total, -1


@njit()
def fm_logits(ids, offsets, cards, V, w, b, kt, rows, S, out):
    """out[e] = logit of example e (float32). Returns the first bad id index or -1."""
    bad = first_bad_id(ids, cards)
    if bad >= 0:
        return bad
    for e in range(ids.shape[0]):
        out[e] = _logit(ids, e, offsets, V, w, b, kt, rows, S)
    return -1


class Scratch:
    """One worker's scratch: the example's rows (F,) uint64 and vector sums S (k,) float64."""

    def __init__(self, num_fields: int, dim: int) -> None:
        self.rows = np.zeros(num_fields, np.uint64)
        self.S = np.zeros(dim, np.float64)


class FusedFMTrainer(FusedTrainerBase):
    """Per-example SGD/AdaGrad training of an FM in place (arguments: FusedTrainerBase).

    threads=1 processes examples strictly in order (deterministic); threads>1 is Hogwild.
    """

    model_type = FM
    chunk_rows = 1024  # an FM example is ~20x cheaper than an FFM one

    def new_scratch(self, parts: int) -> list[Scratch]:
        return [Scratch(self.num_fields, self.dim) for _ in range(parts)]

    def _kernel(self, ids, labels, params, accums, scratch):
        return fm_train(
            ids, labels, self.offsets, self.cardinalities, params["embedding.weight"],
            params["linear.weight"], params["bias"], accums[0], accums[1], accums[2],
            dim_token(self.dim), self.opt_code, self.lr, self.eps, self.weight_decay,
            scratch.rows, scratch.S,
        )  # fmt: skip


class FMPredictor(FusedPredictorBase):
    """Fused FM logits; see FusedPredictorBase.logits."""

    model_type = FM
    chunk_rows = 2048

    def new_scratch(self, parts: int) -> list[Scratch]:
        return [Scratch(self.num_fields, self.dim) for _ in range(parts)]

    def _kernel(self, ids, params, scratch, out):
        return fm_logits(
            ids, self.offsets, self.cardinalities, params["embedding.weight"],
            params["linear.weight"], params["bias"], dim_token(self.dim), scratch.rows, scratch.S,
            out,
        )  # fmt: skip
