"""Shared plumbing of the fused CPU kernels: numba import guard, jit options, scalar math, the
thread pool for Hogwild, and the trainer/predictor bases that own parameter views, optimiser
accumulators and scratch.

The model-specific kernels live in `ffm.py` and `fm.py`; this module knows nothing about their
interaction terms. If numba cannot be imported, `FUSED_AVAILABLE` is False, `UNAVAILABLE_REASON`
says why, and the kernel modules still import (their functions are left as plain Python) so the
caller can log the reason and fall back to autograd.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from cvr.models.embeddings import FullEmbedding

try:  # numba is a hard dependency, but a broken install must degrade to autograd, not crash.
    import numba
    from numba import njit as _numba_njit

    FUSED_AVAILABLE = True
    UNAVAILABLE_REASON = ""
except Exception as exc:  # pragma: no cover - exercised only on broken installs
    numba = None
    FUSED_AVAILABLE = False
    UNAVAILABLE_REASON = f"numba import failed: {type(exc).__name__}: {exc}"

#: fastmath flags: 'reassoc' lets LLVM vectorise the dot-product reductions and 'contract' lets it
#: use FMA. No 'nnan'/'ninf': the loss must stay correct for extreme logits.
FASTMATH = frozenset({"reassoc", "contract"})
#: The AdaGrad row update also allows approximate functions and reciprocals, so LLVM turns
#: g / sqrt(s) into a hardware reciprocal-square-root estimate plus one Newton step (about
#: float32 precision) instead of a full-precision sqrt and divide per lane, which were ~40% of
#: an FFM step. Only used where s > 0 is guaranteed (see `rsqrt_safe`).
FASTMATH_RSQRT = FASTMATH | {"afn", "arcp"}

SGD = 0
ADAGRAD = 1
#: Kernel-only code: AdaGrad where `rsqrt_safe` holds (same maths, reciprocal-sqrt step).
ADAGRAD_RSQRT = 2
OPTIMIZERS = {"sgd": SGD, "adagrad": ADAGRAD}


def njit(fastmath: frozenset[str] = FASTMATH):
    """numba.njit with the options every kernel shares; identity when numba is missing.

    error_model='numpy' matters for speed: Python's model guards every float division with a
    zero check, and that branch stops LLVM from vectorising the AdaGrad update loops. nogil lets
    Hogwild threads run kernels at the same time. fastmath flags are per instruction, so a
    helper's flags stay its own after inlining.
    """

    def wrap(fn):
        if numba is None:  # pragma: no cover
            return fn
        return _numba_njit(cache=True, nogil=True, fastmath=set(fastmath), error_model="numpy")(fn)

    return wrap


def rsqrt_safe(optimizer: str, eps: float, initial_accumulator_value: float) -> bool:
    """Whether AdaGrad may step by g / sqrt(s) (reciprocal-sqrt estimate) instead of
    g / (sqrt(s) + eps): every sum starts at init > 0, so s >= init and sqrt(s) >= sqrt(init),
    and eps below 2**-25 * sqrt(init) is under half a float32 ulp of sqrt(s), so adding it
    changes nothing."""
    init = float(initial_accumulator_value)
    return optimizer == "adagrad" and init > 0 and float(eps) <= 2.0**-25 * math.sqrt(init)


@njit(FASTMATH_RSQRT)
def adagrad_rsqrt_span(V, GV, XT, base, x, n, kap, wd, lr):
    """V[base + m] -= lr * g / sqrt(GV[base + m] += g * g) for m < n, g = kap * XT[x + m] +
    wd * V[base + m] (float32; rsqrt estimate + Newton step, so GV must be > 0)."""
    for m in range(n):
        v = V[base + m]
        g = kap * XT[x + m] + wd * v
        s = GV[base + m] + g * g
        GV[base + m] = s
        V[base + m] = v - lr * g / np.sqrt(s)


def _make_prefetch(write: bool = False):
    """An intrinsic `prefetch(array, index)`: a hint to pull array[index]'s cache line into L1
    (with `write`, in a state that can be written without asking other cores again: PREFETCHW).

    Training and scoring are memory-bound on the long tail of a Criteo-size table (each cold FFM
    row is ~10 cache lines in V and 10 more in the accumulators); prefetching the next example's
    rows while computing the current one overlaps those misses with arithmetic. If numba's
    extension API cannot be imported, `prefetch` is a no-op and only speed changes.
    """
    try:
        from llvmlite import ir
        from numba.core import cgutils, types
        from numba.extending import intrinsic

        @intrinsic
        def prefetch(typingctx, array, index):
            if not isinstance(array, types.Array) or not isinstance(index, types.Integer):
                return None

            def codegen(context, builder, signature, args):
                aryty = signature.args[0]
                ary = context.make_array(aryty)(context, builder, args[0])
                ptr = cgutils.get_item_pointer(
                    context, builder, aryty, ary, [args[1]], wraparound=False
                )
                i32 = ir.IntType(32)
                name = "llvm.prefetch.p0"
                if not getattr(ptr.type, "is_opaque", True):  # typed pointers (LLVM < 15)
                    ptr = builder.bitcast(ptr, ir.IntType(8).as_pointer())
                    name = "llvm.prefetch.p0i8"
                fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
                fn = cgutils.get_or_insert_function(builder.module, fnty, name)
                # (address, read or write, highest temporal locality, data cache)
                builder.call(fn, [ptr, i32(int(write)), i32(3), i32(1)])
                return context.get_dummy_value()

            return types.void(array, index), codegen

        return prefetch, ""
    except Exception as exc:  # pragma: no cover - depends on the numba/LLVM build

        @_numba_njit
        def prefetch(array, index):
            pass

        return prefetch, f"prefetch disabled: {type(exc).__name__}: {exc}"


if numba is not None:
    prefetch, PREFETCH_NOTE = _make_prefetch()
    prefetch_write, _ = _make_prefetch(write=True)
else:  # pragma: no cover
    prefetch, prefetch_write, PREFETCH_NOTE = None, None, "numba missing"


@njit()
def prefetch_span(array: np.ndarray, start: int, length: int) -> None:
    """Prefetch every 64-byte line of array[start : start + length] (float32, uint64 indices)."""
    for m in range(start, start + length, np.uint64(16)):
        prefetch(array, m)
    prefetch(array, start + length - np.uint64(1))


@njit()
def prefetch_span_write(array: np.ndarray, start: int, length: int) -> None:
    """prefetch_span for lines about to be written (PREFETCHW)."""
    for m in range(start, start + length, np.uint64(16)):
        prefetch_write(array, m)
    prefetch_write(array, start + length - np.uint64(1))


def dim_token(n: int) -> tuple[int, ...]:
    """(0,) * n: hands a size to a kernel through the argument's *type*.

    numba compiles one specialisation per tuple length and `len(token)` is a compile-time
    constant there, so LLVM sees k as a constant: the row loops get fixed trip counts and the
    k-float copies fixed widths (measured 1.45x faster FFM training than with k as a runtime
    int). Passing an int literal does not specialise: numba widens it to int64.
    """
    return (0,) * int(n)


@njit()
def sigmoid(z: float) -> float:
    """Overflow-free logistic function (float64)."""
    if z >= 0.0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@njit()
def bce_with_logits(z: float, y: float) -> float:
    """Binary cross-entropy of logit z against label y, stable for any z (float64)."""
    return max(z, 0.0) - z * y + math.log1p(math.exp(-abs(z)))


@njit()
def first_bad_id(ids: np.ndarray, cardinalities: np.ndarray) -> int:
    """Flat index of the first id outside [0, cardinality of its field), or -1 if all are valid.

    ids: int32 (B, F); cardinalities: int64 (F,). The kernels index tables without bounds checks,
    so every entry point runs this first.
    """
    batch, fields = ids.shape
    for e in range(batch):
        for f in range(fields):
            v = ids[e, f]
            if v < 0 or v >= cardinalities[f]:
                return e * fields + f
    return -1


@njit()
def global_rows(ids: np.ndarray, e: int, offsets: np.ndarray, rows: np.ndarray) -> None:
    """rows[i] = table row of field i's id in example e, as uint64.

    Unsigned indices matter: numba adds a negative-index wraparound to every signed index, and
    that select stops LLVM from vectorising the row loops. Ids are validated beforehand.
    """
    for i in range(ids.shape[1]):
        rows[i] = np.uint64(offsets[i] + ids[e, i])


@njit()
def apply_update(
    param: np.ndarray, accum: np.ndarray, index: int, grad: float, opt: int, lr: float, eps: float
) -> None:
    """One scalar parameter step in place (the linear weights and the bias).

    SGD: p -= lr * g. AdaGrad (torch.optim.Adagrad): s += g * g; p -= lr * g / (sqrt(s) + eps).
    `grad` already includes any weight decay.
    """
    g = np.float32(grad)
    if opt != SGD:
        s = accum[index] + g * g
        accum[index] = s
        param[index] = param[index] - np.float32(lr) * g / (np.sqrt(s) + np.float32(eps))
    else:
        param[index] = param[index] - np.float32(lr) * g


def as_ids(ids: np.ndarray | torch.Tensor, num_fields: int) -> np.ndarray:
    """Field-local ids (B, F), any integer dtype, ndarray or CPU tensor -> C-contiguous int32."""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.shape[1] != num_fields:
        raise ValueError(f"ids must have shape (batch, {num_fields}), got {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"ids must be integers, got {ids.dtype}")
    if ids.dtype.itemsize >= 4 and ids.dtype != np.int32 and ids.size:
        # Narrowing would wrap an out-of-range id into a valid-looking one.
        lo, hi = int(ids.min()), int(ids.max())
        if lo < -(2**31) or hi >= 2**31:
            raise IndexError(f"ids outside the int32 range: min {lo}, max {hi}")
    return np.ascontiguousarray(ids, dtype=np.int32)


def raise_bad_id(ids: np.ndarray, cardinalities: np.ndarray, flat: int) -> None:
    """Raise IndexError naming the first out-of-range id found by `first_bad_id`."""
    e, f = divmod(flat, ids.shape[1])
    raise IndexError(
        f"id {int(ids[e, f])} at row {e}, field {f} is outside [0, {int(cardinalities[f])})"
    )


def max_threads() -> int:
    """CPU cores visible to this process: the most threads a kernel call uses."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def run_chunks(work: Callable[[int, int, int], float], n: int, threads: int, chunk: int) -> float:
    """Sum of work(worker, lo, hi) over [0, n) cut into `chunk`-row pieces, on `threads` threads.

    Workers pull the next piece from a shared counter, so a thread the OS descheduled does not
    hold the batch up; worker 0 is the calling thread. `work` must release the GIL (the nogil
    kernels do). Plain Python threads rather than numba's prange: no OpenMP runtime spinning
    against torch's (measured: 2-thread Hogwild at ~55% of 1-thread speed per CPU-second on a
    loaded 2-core machine with the omp layer, ~100% this way) and safe to call from any thread.
    """
    global _pool
    pieces = (n + chunk - 1) // chunk
    threads = max(1, min(threads, pieces))
    if threads == 1:
        return sum(work(0, lo, min(n, lo + chunk)) for lo in range(0, n, chunk))
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_threads(), thread_name_prefix="cvr-fused")
    counter = itertools.count()  # next() on it is atomic under the GIL

    def worker(t: int) -> float:
        total = 0.0
        while (piece := next(counter)) < pieces:
            total += work(t, piece * chunk, min(n, (piece + 1) * chunk))
        return total

    futures = [_pool.submit(worker, t) for t in range(1, threads)]
    total = worker(0)
    return total + sum(f.result() for f in futures)


def param_array(param: torch.Tensor, name: str) -> np.ndarray:
    """A flat float32 numpy view sharing memory with a CPU parameter (writes show in torch)."""
    t = param.detach()
    if t.device.type != "cpu" or t.dtype != torch.float32 or not t.is_contiguous():
        raise TypeError(
            f"fused kernels need {name} as a contiguous float32 CPU tensor, got "
            f"{t.dtype} on {t.device} (contiguous={t.is_contiguous()})"
        )
    return t.numpy().reshape(-1)


def check_model(model: torch.nn.Module, model_type: type) -> None:
    """Raise TypeError unless `model` is a `model_type` whose tables are plain FullEmbeddings."""
    if not FUSED_AVAILABLE:
        raise RuntimeError(f"fused kernels unavailable: {UNAVAILABLE_REASON}")
    if not isinstance(model, model_type):
        raise TypeError(
            f"this fused kernel runs {model_type.__name__} models, got {type(model).__name__}"
        )
    for part in ("embedding", "linear"):
        table = getattr(model, part)
        if type(table) is not FullEmbedding:
            raise TypeError(
                f"fused kernels need model.{part} to be a plain FullEmbedding, got "
                f"{type(table).__name__}; use backend=autograd for other embedding variants"
            )


def field_layout(model: torch.nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """(field offsets, field cardinalities), both int64 (F,), of a model checked by check_model."""
    offsets = model.embedding.offsets.cpu().numpy().astype(np.int64)
    if not np.array_equal(offsets, model.linear.offsets.cpu().numpy()):
        raise TypeError("model.linear and model.embedding must share field offsets")
    return offsets, np.asarray(model.embedding.cardinalities, dtype=np.int64)


def model_arrays(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """Flat float32 views of the model's parameters, keyed like the model's state_dict."""
    return {
        "embedding.weight": param_array(model.embedding.weight, "embedding.weight"),
        "linear.weight": param_array(model.linear.weight, "linear.weight"),
        "bias": param_array(model.bias, "bias"),
    }


class FusedPredictorBase:
    """Batched logits for one model, with cached field layout and scratch (the low-latency path).

    It reads the model's live parameters (views, re-made whenever a parameter tensor is
    replaced), so it follows in-place training and checkpoint restores. Safe to call from several
    threads at once: scratch is per calling thread. Subclasses set `model_type` and `chunk_rows`
    and implement `new_scratch` and `_kernel`.
    """

    model_type: type = type(None)
    #: Rows per work item when a batch is split over threads; smaller batches use one thread.
    chunk_rows: int = 512

    def __init__(self, model: torch.nn.Module) -> None:
        check_model(model, self.model_type)
        self.model = model
        self.num_fields = int(model.num_fields)
        self.dim = int(model.dim)
        self.offsets, self.cardinalities = field_layout(model)
        self._local = threading.local()
        self._views: tuple[tuple, dict[str, np.ndarray]] = ((), {})

    def _params(self) -> dict[str, np.ndarray]:
        """model_arrays(model), cached while the same tensors with the same storage back it.

        Re-making three numpy views costs several microseconds, a large part of a batch-1 call.
        """
        m = self.model
        # A restore that copies in place keeps the views valid; re-binding a parameter or its
        # .data changes the key. (The cached views keep the old storage alive, so a new tensor
        # cannot reuse both its id and its address.)
        key = tuple((id(t), t.data_ptr()) for t in (m.embedding.weight, m.linear.weight, m.bias))
        if key != self._views[0]:
            self._views = (key, model_arrays(m))
        return self._views[1]

    def new_scratch(self, parts: int) -> Any:
        raise NotImplementedError

    def logits(self, ids: np.ndarray | torch.Tensor, threads: int | None = None) -> np.ndarray:
        """ids int (B, F) field-local -> float32 logits (B,).

        threads: at most this many threads (None: all cores); batches of fewer than two
        `chunk_rows` pieces run on the calling thread alone.
        """
        ids = as_ids(ids, self.num_fields)
        n = ids.shape[0]
        threads = max_threads() if threads is None else max(1, min(int(threads), max_threads()))
        threads = min(threads, n // self.chunk_rows) or 1
        scratch = getattr(self._local, "scratch", None)
        if scratch is None or len(scratch) < threads:
            scratch = self._local.scratch = self.new_scratch(threads)
        params = self._params()
        out = np.empty(n, np.float32)
        if threads == 1:
            bad = self._kernel(ids, params, scratch[0], out)
        else:
            bad = first_bad_id(ids, self.cardinalities)
            if bad < 0:
                run_chunks(
                    lambda t, lo, hi: self._kernel(ids[lo:hi], params, scratch[t], out[lo:hi]),
                    n,
                    threads,
                    self.chunk_rows,
                )
        if bad >= 0:
            raise_bad_id(ids, self.cardinalities, bad)
        return out

    def _kernel(
        self, ids: np.ndarray, params: dict[str, np.ndarray], scratch: Any, out: np.ndarray
    ) -> int:
        """Write logits of ids into out using one worker's scratch; return bad id index or -1."""
        raise NotImplementedError


class FusedTrainerBase:
    """Per-example in-place training of a model's bias, linear weights and embedding table.

    Subclasses set `model_type` (the class they accept) and `chunk_rows` (examples per Hogwild
    work item), and implement `new_scratch` and `_kernel`. The parameter views are re-acquired
    on every batch (cheap), so a checkpoint restore that copies into, or replaces, the model's
    parameters is picked up; accumulators are float32 numpy arrays shaped like the parameters.
    One trainer serves one training loop: do not call train_batch from two threads at once.
    """

    model_type: type = type(None)
    chunk_rows: int = 256

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: str = "adagrad",
        lr: float = 0.1,
        eps: float = 1e-10,
        initial_accumulator_value: float = 0.0,
        weight_decay: float = 0.0,
        threads: int = 1,
    ) -> None:
        check_model(model, self.model_type)
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
        if lr <= 0 or eps < 0 or initial_accumulator_value < 0 or weight_decay < 0:
            raise ValueError("need lr > 0 and eps, initial_accumulator_value, weight_decay >= 0")
        if optimizer == "adagrad" and eps == 0 and initial_accumulator_value == 0:
            # A zero gradient on a fresh coordinate would compute 0 / 0.
            raise ValueError("adagrad needs eps > 0 or initial_accumulator_value > 0")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if threads > max_threads():
            warnings.warn(
                f"threads={threads} exceeds the {max_threads()} cores here; using {max_threads()}",
                stacklevel=2,
            )
            threads = max_threads()
        self.model = model
        self.optimizer = optimizer
        self.opt_code = OPTIMIZERS[optimizer]
        #: What the kernels that have a reciprocal-sqrt AdaGrad step (FFM) are handed.
        fast = rsqrt_safe(optimizer, eps, initial_accumulator_value)
        self.kernel_opt = ADAGRAD_RSQRT if fast else self.opt_code
        self.lr = float(lr)
        self.eps = float(eps)
        self.initial_accumulator_value = float(initial_accumulator_value)
        self.weight_decay = float(weight_decay)
        self.threads = int(threads)
        self.num_fields = int(model.num_fields)
        self.dim = int(model.dim)
        self.offsets, self.cardinalities = field_layout(model)
        self._scratch = self.new_scratch(self.threads)
        self.accumulators: dict[str, np.ndarray] = {}
        if self.opt_code == ADAGRAD:
            for name, array in self._params().items():
                self.accumulators[name] = np.full_like(array, self.initial_accumulator_value)

    def _params(self) -> dict[str, np.ndarray]:
        return model_arrays(self.model)

    def new_scratch(self, parts: int) -> Any:
        """Scratch for `parts` workers; indexable by worker."""
        raise NotImplementedError

    def _accumulator_arrays(self, params: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.opt_code != ADAGRAD:  # SGD: dummy arrays keep one kernel signature
            return [np.zeros(1, np.float32)] * 3
        for name, array in params.items():
            if self.accumulators[name].shape != array.shape:
                raise ValueError(
                    f"{name} has {array.shape[0]} values but its accumulator "
                    f"{self.accumulators[name].shape[0]}; was the model replaced?"
                )
        return [self.accumulators[name] for name in params]

    def train_batch(
        self, ids: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor
    ) -> float:
        """One pass over the batch, one in-place update per example.

        ids: int (B, F) field-local; labels: float (B,) in [0, 1]. Returns the mean log-loss of
        the batch, each example scored with its logit before its own update. threads=1 visits
        examples strictly in order; threads>1 runs Hogwild over `chunk_rows`-example pieces
        (a batch shorter than two pieces runs in order on the calling thread).
        """
        ids = as_ids(ids, self.num_fields)
        if isinstance(labels, torch.Tensor):
            labels = labels.detach().cpu().numpy()
        labels = np.ascontiguousarray(labels, dtype=np.float32).reshape(-1)
        n = ids.shape[0]
        if labels.shape[0] != n:
            raise ValueError(f"{n} rows of ids but {labels.shape[0]} labels")
        if n == 0:
            raise ValueError("empty batch")
        params = self._params()
        accums = self._accumulator_arrays(params)
        if self.threads == 1 or n < 2 * self.chunk_rows:
            total, bad = self._kernel(ids, labels, params, accums, self._scratch[0])
        else:
            # Validate everything first: a bad id must not leave a half-trained batch behind.
            bad = first_bad_id(ids, self.cardinalities)
            if bad < 0:
                total = run_chunks(
                    lambda t, lo, hi: self._kernel(
                        ids[lo:hi], labels[lo:hi], params, accums, self._scratch[t]
                    )[0],
                    n,
                    self.threads,
                    self.chunk_rows,
                )
        if bad >= 0:
            raise_bad_id(ids, self.cardinalities, bad)
        return total / n

    def _kernel(
        self,
        ids: np.ndarray,
        labels: np.ndarray,
        params: dict[str, np.ndarray],
        accums: list[np.ndarray],
        scratch: Any,
    ) -> tuple[float, int]:
        """Train on ids in order with one worker's scratch; returns (sum of losses, bad or -1)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The AdaGrad accumulators as tensors sharing memory with the live state (as
        torch.optim does); empty for SGD. Keys are the parameter names."""
        return {name: torch.from_numpy(array) for name, array in self.accumulators.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy accumulators saved by `state_dict` into this trainer's state."""
        if set(state) != set(self.accumulators):
            raise KeyError(
                f"fused optimiser state has keys {sorted(state)}, expected "
                f"{sorted(self.accumulators)} for optimizer={self.optimizer!r}"
            )
        for name, value in state.items():
            array = torch.as_tensor(value).detach().cpu().numpy().reshape(-1)
            if array.shape != self.accumulators[name].shape:
                raise ValueError(
                    f"{name}: saved state has {array.shape[0]} values, "
                    f"expected {self.accumulators[name].shape[0]}"
                )
            np.copyto(self.accumulators[name], array.astype(np.float32, copy=False))
