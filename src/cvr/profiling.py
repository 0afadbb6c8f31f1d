"""Efficiency profile of a CTR model: size, inference latency and throughput, memory.

`profile_model` returns a flat dict of floats named `eff/...` with units in the names:

| name                                  | what                                                   |
|---------------------------------------|--------------------------------------------------------|
| eff/params                            | number of parameters (elements, not bytes)             |
| eff/embedding_bytes                   | sum of `storage_bytes()` over the model's tables       |
| eff/embedding_bytes/<table>           | the same per table (e.g. `embedding`, `linear`)        |
| eff/checkpoint_bytes                  | size of the checkpoint file if given and present (a    |
|                                       | Lightning checkpoint also holds optimizer state), else |
|                                       | of `torch.save(model.state_dict())`                    |
| eff/latency_b<B>_p{50,95,99}_us       | per-call wall time at batch B, microseconds            |
| eff/throughput_b<B>_per_s             | samples per second at the throughput batch             |
| eff/inference_peak_rss_mb             | the process's peak resident set (ru_maxrss) after the  |
|                                       | inference runs, MiB. A high-water mark over the whole  |
|                                       | process life: it includes anything that ran before     |
|                                       | (training, data loading), so it is an upper bound on   |
|                                       | what inference alone needs                             |
| eff/threads                           | torch intra-op threads used for the measurements       |

Latency is measured after `warmup` untimed calls, one `perf_counter_ns` pair per call, inputs
cycling through the sample rows (so lookups are not all cache-hot on one batch), under
`torch.inference_mode()` with the model in eval mode and `torch.set_num_threads(threads)`; the
previous thread count and train/eval mode are restored afterwards. The call timed is the scoring
backend's `logits(ids)`: the one `cvr.backends.select_backend` picks for serving this model on its
device (what the Predictor runs), fused kernels included, unless a backend is passed.

Figures are wall-clock on a shared machine: compare them only within one run (see BENCHMARKS.md).
"""

from __future__ import annotations

import io
import resource
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cvr.backends import TrainingBackend, select_backend
from cvr.models.quantize import module_device, outermost_tables, quantize_model

Predict = Callable[[torch.Tensor], torch.Tensor]


def unwrap(model_or_module: nn.Module) -> nn.Module:
    """The CTR model of a LightningModule that holds one as `.model`, else the model itself."""
    model = getattr(model_or_module, "model", None)
    return model if isinstance(model, nn.Module) else model_or_module


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements."""
    return sum(p.numel() for p in model.parameters())


def embedding_bytes(model: nn.Module) -> dict[str, int]:
    """storage_bytes() of each of the model's embedding tables, by module name."""
    return {name or "model": t.storage_bytes() for name, t in outermost_tables(model).items()}


def checkpoint_bytes(model: nn.Module, checkpoint_path: str | Path | None = None) -> int:
    """Size of the checkpoint file when it exists, else of the model's serialized state_dict."""
    if checkpoint_path and Path(checkpoint_path).is_file():
        return Path(checkpoint_path).stat().st_size
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def peak_rss_mb() -> float:
    """The process's peak resident set size so far (getrusage ru_maxrss), MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class BatchCycler:
    """Batches of `batch_size` rows taken cyclically from sample ids, as int32 tensors."""

    def __init__(self, sample_ids: np.ndarray, batch_size: int, device: torch.device) -> None:
        if len(sample_ids) == 0:
            raise ValueError("profile: sample_ids has no rows")
        self.sample = np.ascontiguousarray(sample_ids, dtype=np.int32)
        self.batch_size = batch_size
        self.device = device
        self.start = 0

    def next(self) -> torch.Tensor:
        rows = (self.start + np.arange(self.batch_size)) % len(self.sample)
        self.start = int(rows[-1] + 1) % len(self.sample)
        return torch.from_numpy(self.sample[rows]).to(self.device)


def time_calls_ns(predict: Predict, batches: BatchCycler, calls: int, warmup: int) -> np.ndarray:
    """Wall time of each of `calls` predict calls after `warmup` untimed ones: int64 ns (calls,)."""
    sync = torch.cuda.synchronize if batches.device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        predict(batches.next())
    sync()
    times = np.empty(calls, dtype=np.int64)
    for i in range(calls):
        ids = batches.next()
        start = time.perf_counter_ns()
        predict(ids)
        sync()
        times[i] = time.perf_counter_ns() - start
    return times


def latency_percentiles_us(times_ns: np.ndarray) -> tuple[float, float, float]:
    """(p50, p95, p99) of per-call times, microseconds."""
    p50, p95, p99 = np.percentile(times_ns / 1e3, [50, 95, 99])
    return float(p50), float(p95), float(p99)


def profile_model(
    model_or_module: nn.Module,
    sample_ids: np.ndarray,
    batch_sizes: Sequence[int] = (1, 64, 1024),
    throughput_batch: int = 4096,
    threads: int = 1,
    repeats: int = 50,
    warmup: int = 5,
    throughput_repeats: int = 5,
    checkpoint_path: str | Path | None = None,
    backend: TrainingBackend | None = None,
) -> dict[str, float]:
    """The efficiency profile of a model (or a module holding it as `.model`); see the module doc.

    sample_ids: int (N, F) field-local ids to draw inference batches from (any N >= 1; rows are
    reused cyclically). repeats: timed calls per latency batch size. backend: the scoring path
    to time; None selects the serving one. Returns {name: float}.
    """
    model = unwrap(model_or_module)
    if backend is None:
        backend, _ = select_backend(model, "auto", module_device(model))
    predict = backend.logits
    tables = embedding_bytes(model)
    result: dict[str, float] = {
        "eff/params": float(count_parameters(model)),
        "eff/embedding_bytes": float(sum(tables.values())),
        **{f"eff/embedding_bytes/{name}": float(size) for name, size in tables.items()},
        "eff/checkpoint_bytes": float(checkpoint_bytes(model, checkpoint_path)),
        "eff/threads": float(threads),
    }
    device = module_device(model)
    previous_threads = torch.get_num_threads()
    was_training = model.training
    model.eval()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for batch in batch_sizes:
                times = time_calls_ns(
                    predict, BatchCycler(sample_ids, batch, device), repeats, warmup
                )
                p50, p95, p99 = latency_percentiles_us(times)
                result[f"eff/latency_b{batch}_p50_us"] = p50
                result[f"eff/latency_b{batch}_p95_us"] = p95
                result[f"eff/latency_b{batch}_p99_us"] = p99
            cycler = BatchCycler(sample_ids, throughput_batch, device)
            times = time_calls_ns(predict, cycler, throughput_repeats, warmup=1)
            result[f"eff/throughput_b{throughput_batch}_per_s"] = (
                throughput_batch * len(times) / float(times.sum() / 1e9)
            )
    finally:
        torch.set_num_threads(previous_threads)
        model.train(was_training)
    result["eff/inference_peak_rss_mb"] = peak_rss_mb()
    return result


def profile_quantized(
    model: nn.Module, sample_ids: np.ndarray, precisions: Iterable[str], **profile_options
) -> dict[str, float]:
    """profile_model of each quantized copy of `model`, named `eff/<precision>/...`.

    The quantized copies run `model(ids)` (the autograd path); the checkpoint size is that of the
    quantized state_dict.
    """
    profile_options.pop("checkpoint_path", None)
    result: dict[str, float] = {}
    for precision in precisions:
        profile = profile_model(quantize_model(model, precision), sample_ids, **profile_options)
        result.update({f"eff/{precision}/{k[len('eff/') :]}": v for k, v in profile.items()})
    return result
