"""FFM inference: fused numba kernels vs the autograd model, side by side, Criteo shape.

    .venv/bin/python scripts/bench_infer.py [--quick] [--threads 2] [--out bench_infer.json]

Model-only: one FFM (39 fields, ~800k values, k=4, random weights) scored two ways on the same
ids: `cvr.kernels.fused_logits(model, ids)` (numpy int32 ids in, float32 logits out) and
`model(ids)` under torch.inference_mode (a torch int32 tensor in). Ids are drawn with the
synthetic generator's Zipf frequencies and every call gets different rows, so the long tail
misses the caches as in serving.

Latency: p50/p95/p99 of single calls at batch 1, 64 and 1024, after warm-up; throughput: rows/s
of batch-4096 calls. The two systems alternate in `--rounds` rounds; each figure is the median
over rounds, with the spread (min..max over rounds) of p50 and of throughput. The fused path uses
up to `--threads` threads (batches under two 512-row pieces run on one); torch gets
`torch.set_num_threads(--threads)`. Prints a table and writes the same figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from cvr.data.synthetic import SyntheticGenerator, SyntheticSpec
from cvr.kernels import fused_available, fused_logits
from cvr.models.ctr import FFM

LATENCY_BATCHES = (1, 64, 1024)
THROUGHPUT_BATCH = 4096


def draw_ids(rows: int, seed: int, total_values: int) -> tuple[np.ndarray, list[int]]:
    """Criteo-shape ids int32 (rows, 39) and the model cardinalities (ranks 1..n, 0 = OOV)."""
    # generator="lr": same id distribution, without building an 800k x 39 x 4 ground truth.
    spec = SyntheticSpec(generator="lr", total_values=total_values, seed=seed)
    gen = SyntheticGenerator(spec)
    ids = gen.sample_ids(np.random.default_rng([seed, 11]), rows)
    return ids, [c + 1 for c in gen.cardinalities]


def time_calls(call: Callable[[np.ndarray], Any], batches: list[np.ndarray]) -> np.ndarray:
    """Wall time of each call in microseconds, float64 (len(batches),)."""
    clock = time.perf_counter_ns
    out = np.empty(len(batches))
    for i, batch in enumerate(batches):
        start = clock()
        call(batch)
        out[i] = clock() - start
    return out / 1e3


def summarize(rounds: list[np.ndarray]) -> dict[str, float]:
    """Median over rounds of each percentile, and the spread of p50 across rounds."""
    pct = np.array([np.percentile(r, [50, 95, 99]) for r in rounds])
    return {
        "p50_us": float(np.median(pct[:, 0])),
        "p95_us": float(np.median(pct[:, 1])),
        "p99_us": float(np.median(pct[:, 2])),
        "p50_min_us": float(pct[:, 0].min()),
        "p50_max_us": float(pct[:, 0].max()),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="fused and torch threads")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per figure")
    parser.add_argument("--calls", type=int, default=2000, help="timed batch-1 calls per round")
    parser.add_argument("--total-values", type=int, default=800_000)
    parser.add_argument("--quick", action="store_true", help="fewer calls and rounds (smoke run)")
    parser.add_argument("--out", help="write the results here as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.calls = 3, 300

    ok, reason = fused_available()
    if not ok:
        sys.exit(f"fused kernels unavailable: {reason}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    pool_rows = max(args.calls * 8, 3 * THROUGHPUT_BATCH * 4)
    ids, cards = draw_ids(pool_rows, args.seed, args.total_values)
    model = FFM(cards, dim=4).eval()
    ids_t = torch.from_numpy(ids)

    systems: dict[str, Callable[[np.ndarray], Any]] = {
        "fused": lambda x: fused_logits(model, x, threads=args.threads),
        "autograd": lambda x: model(torch.from_numpy(x)),
    }
    # Same answers before timing anything.
    check = ids[:1024]
    with torch.inference_mode():
        err = np.abs(fused_logits(model, check) - model(ids_t[:1024]).numpy()).max()
    if err > 1e-4:
        sys.exit(f"fused and autograd logits differ by {err}")

    rng = np.random.default_rng(args.seed + 1)
    results: list[dict[str, Any]] = []
    with torch.inference_mode():
        for batch in LATENCY_BATCHES:
            calls = max(20, args.calls // max(1, batch // 8)) if batch > 1 else args.calls
            starts = rng.integers(0, pool_rows - batch, calls + 50)
            batches = [np.ascontiguousarray(ids[s : s + batch]) for s in starts]
            per_system: dict[str, list[np.ndarray]] = {name: [] for name in systems}
            for call in systems.values():  # warm-up (and numba load) outside the rounds
                time_calls(call, batches[:50])
            for _ in range(args.rounds):
                for name, call in systems.items():
                    per_system[name].append(time_calls(call, batches[50:]))
            for name, rounds in per_system.items():
                results.append(
                    {"system": name, "batch": batch, "calls": calls, **summarize(rounds)}
                )

        batches = [ids[s : s + THROUGHPUT_BATCH] for s in range(0, pool_rows, THROUGHPUT_BATCH)]
        batches = [b for b in batches if len(b) == THROUGHPUT_BATCH]
        per_system = {name: [] for name in systems}
        for _ in range(args.rounds):
            for name, call in systems.items():
                seconds = time_calls(call, batches) / 1e6
                per_system[name].append(THROUGHPUT_BATCH * len(batches) / seconds.sum())
        throughput = {
            name: {
                "rows_per_s": float(np.median(v)),
                "rows_per_s_min": float(np.min(v)),
                "rows_per_s_max": float(np.max(v)),
            }
            for name, v in per_system.items()
        }

    report = {
        "benchmark": "ffm_inference",
        "shape": {"fields": len(cards), "values": int(sum(cards)), "k": 4},
        "threads": args.threads,
        "torch_threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "latency": results,
        "throughput_batch": THROUGHPUT_BATCH,
        "throughput": throughput,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loadavg_1m": os.getloadavg()[0],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    print_report(report)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return report


def print_report(report: dict[str, Any]) -> None:
    shape = report["shape"]
    print(
        f"\nFFM inference, {shape['fields']} fields, {shape['values']:,} values, k={shape['k']}; "
        f"threads={report['threads']} (torch {report['torch_threads']}); median of "
        f"{report['rounds']} alternating rounds; load avg {report['loadavg_1m']:.1f}\n"
    )
    print(f"{'system':<10}{'batch':>6}{'p50 us':>10}{'p95 us':>10}{'p99 us':>10}  p50 spread")
    for r in report["latency"]:
        print(
            f"{r['system']:<10}{r['batch']:>6}{r['p50_us']:>10.1f}{r['p95_us']:>10.1f}"
            f"{r['p99_us']:>10.1f}  {r['p50_min_us']:.1f}..{r['p50_max_us']:.1f}"
        )
    print(f"\nthroughput at batch {report['throughput_batch']} (rows/s, spread over rounds)")
    for name, t in report["throughput"].items():
        print(
            f"{name:<10}{t['rows_per_s']:>12,.0f}   "
            f"{t['rows_per_s_min']:,.0f}..{t['rows_per_s_max']:,.0f}"
        )
    print(f"\npeak RSS {report['peak_rss_mb']:.0f} MiB")


if __name__ == "__main__":
    main()
