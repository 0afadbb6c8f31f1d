"""Predictor latency and throughput: batch-1 p50/p99, batch-1024 rows/s; model-only vs end-to-end.

    python scripts/bench_predictor.py --bundle outputs/bundles/ffm [--data day_0.csv] --out b.json

End-to-end is `Predictor.predict` on raw records (dict for batch 1; list of dicts and DataFrame
for batch 1024 and for one `--large` batch, alternating): preprocessing + model + sigmoid.
Model-only is `Predictor.predict_ids` on the same records' ids. Records come from `--data` (a
file in the dataset's format, read once) or are drawn from the bundle's vocabularies. Prints a
table and writes the same numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cvr.data.readers import open_reader
from cvr.serving.predictor import Predictor

BATCH = 1024


def raw_records(predictor: Predictor, data: Path | None, n: int) -> list[dict[str, Any]]:
    """n raw records {field name: value}: the rows of `data` (cycled), else drawn examples."""
    if data is None:
        return predictor.example_records(n, seed=1)
    bundle = predictor.bundle
    reader = open_reader(bundle.reader["format"], data, bundle.schema, **bundle.reader["options"])
    rows = [row for batch in reader for row in batch.to_pylist()]
    fields = bundle.schema.fields
    records = [{f.name: row.get(f.source) for f in fields} for row in rows]
    return [records[i % len(records)] for i in range(n)]


def per_call_us(call: Callable[[Any], Any], inputs: Sequence[Any], warmup: int = 200) -> np.ndarray:
    """Wall time of each call in microseconds (float64 (len(inputs),)), after warm-up calls."""
    for item in inputs[:warmup]:
        call(item)
    times = np.empty(len(inputs))
    clock = time.perf_counter_ns
    for i, item in enumerate(inputs):
        start = clock()
        call(item)
        times[i] = clock() - start
    return times / 1e3


def latency_row(name: str, times_us: np.ndarray) -> dict[str, Any]:
    return {
        "path": name,
        "batch": 1,
        "latency_p50_us": float(np.percentile(times_us, 50)),
        "latency_p99_us": float(np.percentile(times_us, 99)),
        "latency_mean_us": float(times_us.mean()),
        "rows_per_s": float(1e6 / times_us.mean()),
    }


def throughput_row(name: str, call: Callable[[], Any], repeats: int) -> dict[str, Any]:
    call()  # warm-up
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    best = float(np.median(seconds))
    return {
        "path": name,
        "batch": BATCH,
        "latency_p50_us": best * 1e6,
        "latency_p99_us": float(np.percentile(seconds, 99)) * 1e6,
        "latency_mean_us": float(np.mean(seconds)) * 1e6,
        "rows_per_s": BATCH / best,
    }


def large_batch_rows(predictor: Predictor, n: int, repeats: int) -> list[dict[str, Any]]:
    """`Predictor.predict` on n records as a list of dicts and as a DataFrame, alternating.

    Both inputs hold the same records; each repeat times the list then the frame, so load on
    the shared machine hits both alike. Rows report the median and the spread (min, max).
    """
    if n <= 0:
        return []
    records = predictor.example_records(n, seed=2)
    frame = pd.DataFrame(records, columns=predictor.field_names)
    if not np.array_equal(predictor.predict(records), predictor.predict(frame)):
        raise RuntimeError("list of dicts and DataFrame predictions differ")
    seconds: dict[str, list[float]] = {"list of dicts": [], "DataFrame": []}
    for _ in range(repeats):
        for name, value in (("list of dicts", records), ("DataFrame", frame)):
            start = time.perf_counter()
            predictor.predict(value)
            seconds[name].append(time.perf_counter() - start)
    rows = []
    for name, times in seconds.items():
        median = float(np.median(times))
        rows.append(
            {
                "path": f"end-to-end, {name}",
                "batch": n,
                "latency_p50_us": median * 1e6,
                "latency_p99_us": float(np.max(times)) * 1e6,
                "latency_mean_us": float(np.mean(times)) * 1e6,
                "seconds_min": float(np.min(times)),
                "seconds_max": float(np.max(times)),
                "rows_per_s": n / median,
            }
        )
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    predictor = Predictor.load(args.bundle)
    if predictor.backend == "fused":
        import numba

        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    records = raw_records(predictor, Path(args.data) if args.data else None, args.records)
    ids = predictor.encode(records)
    # Every call scores the same records through both paths: the ids are those records' ids.
    if not np.array_equal(predictor.predict(records), predictor.predict_ids(ids)):
        raise RuntimeError("end-to-end and model-only predictions differ")
    single_ids = [ids[i : i + 1] for i in range(len(ids))]
    rows = [
        latency_row(
            f"model only ({predictor.backend})",
            per_call_us(lambda x: predictor.predict_ids(x, check=False), single_ids),
        ),
        latency_row("end-to-end, dict", per_call_us(predictor.predict, records)),
        latency_row("preprocessing only, dict", per_call_us(predictor.encode, records)),
    ]
    batch_records = records[:BATCH]
    batch_frame = pd.DataFrame(batch_records, columns=predictor.field_names)
    batch_ids = ids[:BATCH]
    rows += [
        throughput_row(
            f"model only ({predictor.backend})",
            lambda: predictor.predict_ids(batch_ids, check=False),
            args.repeats,
        ),
        throughput_row(
            "end-to-end, list of dicts", lambda: predictor.predict(batch_records), args.repeats
        ),
        throughput_row(
            "end-to-end, DataFrame", lambda: predictor.predict(batch_frame), args.repeats
        ),
    ]
    rows += large_batch_rows(predictor, args.large, args.large_repeats)
    return {
        "bundle": str(args.bundle),
        "model": predictor.bundle.manifest["model_class"],
        "fields": len(predictor.field_names),
        "backend": predictor.backend,
        "threads": args.threads,
        "records": len(records),
        "data": args.data,
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "rows": rows,
    }


def table(result: dict[str, Any]) -> str:
    head = f"{'path':<30}{'batch':>8}{'p50 µs':>11}{'p99 µs':>11}{'rows/s':>13}"
    lines = [
        f"{result['model']} ({result['fields']} fields), backend {result['backend']}, "
        f"{result['threads']} threads, load average {result['load_average']}",
        head,
        "-" * len(head),
    ]
    for row in result["rows"]:
        lines.append(
            f"{row['path']:<30}{row['batch']:>8}{row['latency_p50_us']:>11.1f}"
            f"{row['latency_p99_us']:>11.1f}{row['rows_per_s']:>13,.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="serving bundle folder")
    parser.add_argument("--data", default=None, help="file in the dataset's format (optional)")
    parser.add_argument("--records", type=int, default=5000, help="batch-1 calls per path")
    parser.add_argument("--repeats", type=int, default=30, help="batch-1024 calls per path")
    parser.add_argument("--threads", type=int, default=2, help="torch and numba threads")
    parser.add_argument(
        "--large", type=int, default=100_000, help="rows of the list-vs-DataFrame batch (0: skip)"
    )
    parser.add_argument("--large-repeats", type=int, default=5, help="alternating repeats")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.records < BATCH:
        parser.error(f"--records must be >= {BATCH}")
    result = run(args)
    print(table(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
