"""Fused FFM kernels: per-example logit, log-loss and in-place sparse update, in numba.

Layout (the model's own tensors, no copies): `V` is `embedding.weight` flattened, row r holding
`V[r, f, :]` at `V[(r * F + f) * k + d]`; `w` is `linear.weight` flattened; `b` is `bias`.

Per example with global rows g_0..g_{F-1}:

    z = b + sum_i w[g_i] + sum_{i<j} <V[g_i, j], V[g_j, i]>

The scalar pair loop (741 pairs of k=4 floats on Criteo) does not vectorise, so each example
first gathers its partner block `XT[i, j, :] = V[g_j, i, :]` (diagonal left at zero) into a small
scratch buffer. Then row i of the example and `XT[i]` are two contiguous F*k vectors: the forward
pass is a dot product over their upper part (j > i) and the update is one elementwise loop over
the whole row, since dz/dV[g_i, j] = V[g_j, i] = XT[i, j] (zero on the diagonal, which therefore
does not move). Both loops vectorise (AVX), and AdaGrad's sqrt and divide run 8-16 lanes wide.

The gather copies k floats at a time through a wider word view of the same memory (complex128
for k % 4 == 0, int64 for even k, int32 otherwise): pure moves, so bit-exact, and 1 move per
chunk instead of k.

Two more things carry the speed (Criteo shape, one thread, measured on this project's 2-core
boxes): k and F reach the kernels as compile-time constants (`dim_token`), and each example
prefetches the next one's rows, since a cold FFM row is ~10 cache lines in V plus 10 in the
AdaGrad state and the long tail of a 800k-row table misses every cache.
"""

from __future__ import annotations

import numpy as np

from cvr.kernels.fused import (
    ADAGRAD,
    ADAGRAD_RSQRT,
    SGD,
    FusedPredictorBase,
    FusedTrainerBase,
    adagrad_rsqrt_span,
    apply_update,
    bce_with_logits,
    dim_token,
    first_bad_id,
    global_rows,
    njit,
    prefetch,
    prefetch_span,
    prefetch_span_write,
    prefetch_write,
    sigmoid,
)
from cvr.models.ctr import FFM

U64 = np.uint64

#: How many examples ahead the logits kernels prefetch rows (one example is ~1 us of work).
PREFETCH_AHEAD = 2


def word_view(k: int) -> tuple[np.dtype, int]:
    """(word dtype, words per k-float chunk) used to copy one k-float sub-vector."""
    if k % 4 == 0:
        return np.dtype(np.complex128), k // 4
    if k % 2 == 0:
        return np.dtype(np.int64), k // 2
    return np.dtype(np.int32), k


@njit()
def _words(k):
    """Words per k-float chunk in the word view chosen by `word_view` (constant-folded)."""
    if k % 4 == 0:
        return k // 4
    if k % 2 == 0:
        return k // 2
    return k


@njit()
def _fields(ft, rows):
    """Number of fields: len(ft), a compile-time constant, unless ft is the 1-long "not given"
    token (then the scratch's row count, which is also right for a 1-field model)."""
    if len(ft) > 1:
        return len(ft)
    return rows.shape[0]


@njit()
def _gather_partners(Vw, rows, XTw, ft, kt, full):
    """XT[i, j, :] = V[g_j, i, :] for j > i (and j < i if `full`), copied a word at a time.

    The diagonal chunks are never written: the scratch starts zeroed and stays zero there.
    """
    nf = U64(_fields(ft, rows))
    uh = U64(_words(len(kt)))
    for j in range(nf):
        row_j = rows[j] * nf * uh
        top = nf if full else j
        for i in range(top):
            if i != j:
                src = row_j + i * uh
                dst = (i * nf + j) * uh
                for d in range(uh):
                    XTw[dst + d] = Vw[src + d]


@njit()
def _pair_sum(V, rows, XT, ft, kt):
    """sum_{i<j} <V[g_i, j], XT[i, j]> = the FFM interaction, from the gathered block."""
    nf = U64(_fields(ft, rows))
    uk = U64(len(kt))
    fk = nf * uk
    z = 0.0
    for i in range(nf):
        base = rows[i] * fk
        x = i * fk
        s = np.float32(0.0)
        for m in range((i + U64(1)) * uk, fk):
            s += V[base + m] * XT[x + m]
        z += s
    return z


@njit()
def _prefetch_row(ids, e, i, offsets, fk, V, w, GV, Gw, accumulators):
    """Prefetch field i's row of example e in V and w (and GV, Gw if `accumulators`)."""
    row = U64(offsets[i] + ids[e, i])
    prefetch(w, row)
    prefetch_span(V, row * fk, fk)
    if accumulators:
        prefetch(Gw, row)
        prefetch_span(GV, row * fk, fk)


@njit()
def _prefetch_row_write(ids, e, i, offsets, fk, V, w, GV, Gw, accumulators):
    """_prefetch_row for rows about to be updated: write-intent prefetches (PREFETCHW), so a
    line another Hogwild thread holds is fetched once, already writable."""
    row = U64(offsets[i] + ids[e, i])
    prefetch_write(w, row)
    prefetch_span_write(V, row * fk, fk)
    if accumulators:
        prefetch_write(Gw, row)
        prefetch_span_write(GV, row * fk, fk)


@njit()
def _logit(ids, e, nxt, offsets, V, Vw, w, b, ft, kt, XT, XTw, rows, full):
    """Logit of example e (float64); leaves rows and the partner block XT in the scratch.

    Prefetches the rows of example `nxt` (if >= 0) first, so they load while this one computes.
    """
    global_rows(ids, e, offsets, rows)
    if nxt >= 0:
        fk = U64(_fields(ft, rows)) * U64(len(kt))
        for i in range(_fields(ft, rows)):
            _prefetch_row(ids, nxt, i, offsets, fk, V, w, V, w, False)
    _gather_partners(Vw, rows, XTw, ft, kt, full)
    z = np.float64(b[0])
    for i in range(_fields(ft, rows)):
        z += w[rows[i]]
    return z + _pair_sum(V, rows, XT, ft, kt)


@njit()
def _train_example(
    ids, e, nxt, y, offsets, V, Vw, w, b, GV, Gw, Gb, ft, kt, opt, lr, eps, wd, XT, XTw, rows,
    write_intent,
):  # fmt: skip
    """Score example e, then update its V rows, linear weights and the bias in place.

    Returns its log-loss from the pre-update logit. Every gradient uses pre-update values: each
    row's update reads only itself and the partner copies in XT. While updating row i it
    prefetches row i of example `nxt` (if >= 0).
    """
    z = _logit(ids, e, -1, offsets, V, Vw, w, b, ft, kt, XT, XTw, rows, True)
    y64 = np.float64(y)
    loss = bce_with_logits(z, y64)
    kappa = sigmoid(z) - y64
    kap = np.float32(kappa)
    lr32 = np.float32(lr)
    eps32 = np.float32(eps)
    wd32 = np.float32(wd)
    nf = U64(_fields(ft, rows))
    fk = nf * U64(len(kt))
    for i in range(nf):
        if nxt >= 0:
            if write_intent:
                _prefetch_row_write(ids, nxt, i, offsets, fk, V, w, GV, Gw, opt != SGD)
            else:
                _prefetch_row(ids, nxt, i, offsets, fk, V, w, GV, Gw, opt != SGD)
        base = rows[i] * fk
        x = i * fk
        if opt == ADAGRAD_RSQRT:
            adagrad_rsqrt_span(V, GV, XT, base, x, fk, kap, wd32, lr32)
        elif opt == ADAGRAD:
            for m in range(fk):
                v = V[base + m]
                g = kap * XT[x + m] + wd32 * v
                s = GV[base + m] + g * g
                GV[base + m] = s
                V[base + m] = v - lr32 * g / (np.sqrt(s) + eps32)
        else:
            for m in range(fk):
                v = V[base + m]
                V[base + m] = v - lr32 * (kap * XT[x + m] + wd32 * v)
    for i in range(nf):
        r = rows[i]
        apply_update(w, Gw, r, kappa + wd * w[r], opt, lr, eps)
    apply_update(b, Gb, 0, kappa + wd * b[0], opt, lr, eps)
    return loss


@njit()
def ffm_train(
    ids, labels, offsets, cards, V, Vw, w, b, GV, Gw, Gb, ft, kt, opt, lr, eps, wd, XT, XTw, rows,
    ahead, write_intent,
):  # fmt: skip
    """Train on the examples strictly in order. Returns (sum of losses, bad id index or -1).

    Example e prefetches the rows of example e + `ahead` (0: no prefetch). Hogwild runs this on
    several threads at once over disjoint pieces of a batch (nogil).
    """
    bad = first_bad_id(ids, cards)
    if bad >= 0:
        return 0.0, bad
    total = 0.0
    n = ids.shape[0]
    for e in range(n):
        nxt = e + ahead if ahead > 0 and e + ahead < n else -1
        total += _train_example(
            ids, e, nxt, labels[e], offsets, V, Vw, w, b, GV, Gw, Gb,
            ft, kt, opt, lr, eps, wd, XT, XTw, rows, write_intent,
        )  # fmt: skip
    return total, -1


@njit()
def ffm_logits(ids, offsets, cards, V, Vw, w, b, ft, kt, XT, XTw, rows, out):
    """out[e] = logit of example e (float32). Returns the first bad id index or -1."""
    bad = first_bad_id(ids, cards)
    if bad >= 0:
        return bad
    n = ids.shape[0]
    for e in range(n):
        nxt = e + PREFETCH_AHEAD if e + PREFETCH_AHEAD < n else -1
        out[e] = _logit(ids, e, nxt, offsets, V, Vw, w, b, ft, kt, XT, XTw, rows, False)
    return -1


class Scratch:
    """One worker's scratch: partner block XT (F*F*k,) float32 (zeroed: its diagonal stays 0),
    the same memory as words, and the example's rows (F,) uint64."""

    def __init__(self, num_fields: int, dim: int) -> None:
        self.XT = np.zeros(num_fields * num_fields * dim, np.float32)
        self.XTw = self.XT.view(word_view(dim)[0])
        self.rows = np.zeros(num_fields, np.uint64)


class FusedFFMTrainer(FusedTrainerBase):
    """Per-example SGD/AdaGrad training of an FFM in place (arguments: FusedTrainerBase).

    threads=1 processes examples strictly in order (deterministic); threads>1 is Hogwild.
    """

    model_type = FFM
    chunk_rows = 256  # ~1.5 ms of work per piece on Criteo-size rows
    #: Examples ahead whose rows each example prefetches while it updates its own (0: none).
    prefetch_ahead = 1
    #: Prefetch the next example's rows for writing (PREFETCHW) rather than for reading; None:
    #: for writing when threads > 1. Measured idle (scripts/bench_hogwild.py, 2 cores): two
    #: threads on one table cost 16.3 CPU-us an example for reading, 13.6 for writing (solo 9.0;
    #: hot rows disjoint between the threads 12.1), i.e. most of what the threads lose to each
    #: other is cache lines of shared hot rows fetched shared and then upgraded for the write.
    prefetch_write: bool | None = None

    def new_scratch(self, parts: int) -> list[Scratch]:
        return [Scratch(self.num_fields, self.dim) for _ in range(parts)]

    def _kernel(self, ids, labels, params, accums, scratch):
        V = params["embedding.weight"]
        return ffm_train(
            ids, labels, self.offsets, self.cardinalities, V, V.view(word_view(self.dim)[0]),
            params["linear.weight"], params["bias"], accums[0], accums[1], accums[2],
            dim_token(self.num_fields), dim_token(self.dim), self.kernel_opt, self.lr, self.eps,
            self.weight_decay, scratch.XT, scratch.XTw, scratch.rows, self.prefetch_ahead,
            self.prefetches_for_writing,
        )  # fmt: skip

    @property
    def prefetches_for_writing(self) -> bool:
        """`prefetch_write` resolved: None means for writing exactly when threads > 1."""
        return self.threads > 1 if self.prefetch_write is None else bool(self.prefetch_write)


class FFMPredictor(FusedPredictorBase):
    """Fused FFM logits; see FusedPredictorBase.logits."""

    model_type = FFM
    chunk_rows = 512

    def new_scratch(self, parts: int) -> list[Scratch]:
        return [Scratch(self.num_fields, self.dim) for _ in range(parts)]

    def _kernel(self, ids, params, scratch, out):
        V = params["embedding.weight"]
        # (0,): field count not compiled in; measured faster here than a 39-long token
        return ffm_logits(
            ids, self.offsets, self.cardinalities, V, V.view(word_view(self.dim)[0]),
            params["linear.weight"], params["bias"], (0,), dim_token(self.dim), scratch.XT,
            scratch.XTw, scratch.rows, out,
        )  # fmt: skip
