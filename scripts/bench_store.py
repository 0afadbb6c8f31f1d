"""Serving from the vector database vs from the bundle: latency, throughput, cache, memory.

    python scripts/bench_store.py [--rows-train 1000000] [--repeats 2] [--server] \\
        [--out outputs/bench/store.json]

A Criteo-shape FFM (the synthetic store: 39 fields, Zipf values, k=4; random weights: latency
does not depend on their values) is bundled and published to a fresh Milvus Lite store (publish
time and rows/s). Requests are the store's test rows, so their feature frequencies are the
training data's Zipf frequencies; the validation rows warm the cache first. Arms, each in its
own process so that its peak RSS is its own, alternated `--repeats` times:

    in_process        Predictor.load(bundle): the tables in memory (today's Predictor)
    lite_nocache      Predictor.load(bundle, embeddings=Lite URI)
    lite_cache_<p>    the same with a hot-row cache of p% of the table's bytes (1, 5, 20)
    server_*          (--server) the same against a Milvus standalone server on 127.0.0.1

Per arm: batch-1 and batch-64 latency p50/p99 (predict_ids, one request at a time), rows/s at
batch 1024, cache hit rate, the share of time spent inside the database's `get`, RSS after
load, peak RSS while loading and peak RSS while serving (VmHWM, reset after load). Lite runs
inside the serving process, so its RSS includes the database; a server's does not. Prints a
table (medians over repeats, with the spread) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE_SHARES = (0.01, 0.05, 0.20)


# --- one arm, in its own process -----------------------------------------------------------------


def _proc_status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return -1


def _percentiles_us(times_ns: list[int]) -> dict[str, float]:
    t = np.asarray(times_ns, dtype=np.float64) / 1e3
    return {"p50_us": float(np.percentile(t, 50)), "p99_us": float(np.percentile(t, 99))}


def run_arm(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from cvr.serving.predictor import Predictor

    torch.set_num_threads(1)
    requests = np.load(args.requests)
    warmup = np.load(args.warmup)
    start = time.perf_counter()
    predictor = Predictor.load(
        args.bundle, embeddings=args.embeddings or None, cache_bytes=args.cache_bytes
    )
    load_s = time.perf_counter() - start
    out: dict[str, Any] = {
        "load_s": load_s,
        "rss_after_load_mb": _proc_status_kb("VmRSS") / 1024,
        "peak_rss_load_mb": _proc_status_kb("VmHWM") / 1024,
    }
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM: the serving peak from here
    tables = predictor.store_tables
    for lo in range(0, len(warmup), 64):  # warm the kernels and fill the cache
        predictor.predict_ids(warmup[lo : lo + 64], check=False)
    if tables is not None:
        tables.reset_stats()
    clock = time.perf_counter_ns
    phases = {"b1": (1, args.requests_b1), "b64": (64, args.requests_b64)}
    busy_ns = 0
    for name, (batch, count) in phases.items():
        times = []
        for i in range(count):
            lo = (i * batch) % (len(requests) - batch)
            ids = requests[lo : lo + batch]
            t0 = clock()
            predictor.predict_ids(ids, check=False)
            times.append(clock() - t0)
        busy_ns += sum(times)
        out.update({f"{name}_{k}": v for k, v in _percentiles_us(times).items()})
    seconds = []
    for i in range(args.batches_b1024):
        lo = (i * 1024) % (len(requests) - 1024)
        t0 = clock()
        predictor.predict_ids(requests[lo : lo + 1024], check=False)
        seconds.append((clock() - t0) / 1e9)
    busy_ns += int(sum(seconds) * 1e9)
    out["b1024_rows_per_s"] = float(1024 / np.median(seconds))
    out["peak_rss_serving_mb"] = _proc_status_kb("VmHWM") / 1024
    if tables is not None:
        stats = tables.stats()
        out["cache_hit_rate"] = stats["cache_hit_rate"]
        out["cache_mb"] = stats["cache_bytes"] / 2**20
        out["db_time_share"] = stats["fetch_s"] / (busy_ns / 1e9)
    out["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
    return out


# --- the whole bench ------------------------------------------------------------------------------


def build_bundle(work: Path, rows_train: int, seed: int) -> tuple[Path, Any]:
    """The synthetic Criteo-shape store (cached) and an FFM k=4 bundle with random weights."""
    import hydra
    import torch
    from omegaconf import OmegaConf

    from cvr.models.registry import build_model
    from cvr.serving.bundle import export_from_training

    data = OmegaConf.load(ROOT / "conf" / "data" / "synthetic.yaml")
    data.seed, data.rows_train = seed, rows_train
    data.cache_root = str(ROOT / "outputs" / "cache")
    store = hydra.utils.instantiate(data, _convert_="all")
    cfg = OmegaConf.create(
        {
            "data": OmegaConf.to_container(data),
            "model": {"_target_": "cvr.models.ctr.FFM"},
            "embedding": OmegaConf.to_container(OmegaConf.load(ROOT / "conf/embedding/full.yaml")),
        }
    )
    cfg.embedding.dim = 4
    model = build_model(cfg, store.cardinalities)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.01)
    bundle = export_from_training(model, store, cfg, {}, work / "bundle", overwrite=True)
    return bundle, store


def start_server(work: Path):
    import socket

    from milvus import default_server

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    shutil.rmtree(work / "server", ignore_errors=True)
    default_server.set_base_dir(str(work / "server"))
    default_server.listen_port = port
    default_server.start()
    return default_server, f"http://127.0.0.1:{port}"


def publish_timed(uri: str, bundle: Path) -> dict[str, Any]:
    from cvr.vectorstore.client import close
    from cvr.vectorstore.versions import publish

    def progress(label: str, total: int):
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"publish {label}", unit="row", mininterval=30)
        return bar.update

    start = time.perf_counter()
    result = publish(uri, bundle, progress=progress)
    total = time.perf_counter() - start
    close(uri)  # Lite: one process per data directory; the arms open it next
    return {
        "uri": uri,
        "collection": result.collection,
        "rows": result.rows,
        "insert_s": result.insert_s,
        "verify_s": result.verify_s,
        "total_s": total,
        "insert_rows_per_s": result.rows / result.insert_s,
        "publish_rows_per_s": result.rows / total,
    }


def arm_specs(lite: str, server: str | None, table_bytes: int) -> list[dict[str, Any]]:
    specs = [{"arm": "in_process", "embeddings": "", "cache_bytes": 0}]
    for prefix, uri in (("lite", lite), ("server", server)):
        if uri is None:
            continue
        specs.append({"arm": f"{prefix}_nocache", "embeddings": uri, "cache_bytes": 0})
        for share in CACHE_SHARES:
            specs.append(
                {
                    "arm": f"{prefix}_cache_{round(share * 100)}pct",
                    "embeddings": uri,
                    "cache_bytes": int(share * table_bytes),
                }
            )
    return specs


def run_child(spec: dict[str, Any], args: argparse.Namespace, files: dict[str, Path]) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--arm",
        "--bundle",
        str(files["bundle"]),
        "--embeddings",
        spec["embeddings"],
        "--cache-bytes",
        str(spec["cache_bytes"]),
        "--requests",
        str(files["requests"]),
        "--warmup",
        str(files["warmup"]),
        "--requests-b1",
        str(args.requests_b1),
        "--requests-b64",
        str(args.requests_b64),
        "--batches-b1024",
        str(args.batches_b1024),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"arm {spec['arm']} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


COLUMNS = [
    ("b1_p50_us", "b1 p50 us", "{:.0f}"),
    ("b1_p99_us", "b1 p99 us", "{:.0f}"),
    ("b64_p50_us", "b64 p50 us", "{:.0f}"),
    ("b64_p99_us", "b64 p99 us", "{:.0f}"),
    ("b1024_rows_per_s", "b1024 rows/s", "{:,.0f}"),
    ("cache_hit_rate", "hit rate", "{:.3f}"),
    ("db_time_share", "db share", "{:.2f}"),
    ("peak_rss_load_mb", "peak RSS load MB", "{:.0f}"),
    ("peak_rss_serving_mb", "peak RSS serve MB", "{:.0f}"),
]


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _, _ in COLUMNS] + ["rss_after_load_mb", "load_s", "cache_mb"]
    out: dict[str, Any] = {}
    for key in keys:
        values = [r[key] for r in runs if key in r]
        if values:
            out[key] = float(np.median(values))
            out[f"{key}_spread"] = [float(min(values)), float(max(values))]
    out["loadavg"] = [r["loadavg"] for r in runs]
    return out


def print_table(arms: dict[str, dict[str, Any]]) -> None:
    header = f"{'arm':<20}" + "".join(f"{label:>18}" for _, label, _ in COLUMNS)
    print(header)
    print("-" * len(header))
    for name, row in arms.items():
        cells = "".join(f"{fmt.format(row[k]) if k in row else '-':>18}" for k, _, fmt in COLUMNS)
        print(f"{name:<20}{cells}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-train", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--requests-b1", type=int, default=2000)
    parser.add_argument("--requests-b64", type=int, default=100)
    parser.add_argument("--warmup-rows", type=int, default=5000, help="val rows that warm up")
    parser.add_argument("--batches-b1024", type=int, default=10)
    parser.add_argument("--server", action="store_true", help="also serve from Milvus standalone")
    parser.add_argument("--work", default=str(ROOT / "outputs" / "bench" / "store"))
    parser.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "store.json"))
    # The child process of one arm:
    parser.add_argument("--arm", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bundle", help=argparse.SUPPRESS)
    parser.add_argument("--embeddings", default="", help=argparse.SUPPRESS)
    parser.add_argument("--cache-bytes", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--requests", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.arm:
        print(json.dumps(run_arm(args)))
        return 0

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    bundle, store = build_bundle(work, args.rows_train, args.seed)
    cards = store.cardinalities
    num_rows, vector_dim = sum(cards), len(cards) * 4
    table_bytes = num_rows * (vector_dim + 1) * 4
    files = {"bundle": bundle, "requests": work / "requests.npy", "warmup": work / "warmup.npy"}
    np.save(files["requests"], np.ascontiguousarray(store.ids("test")[:20_000], dtype=np.int32))
    warmup = store.ids("val")[: args.warmup_rows]
    np.save(files["warmup"], np.ascontiguousarray(warmup, dtype=np.int32))
    print(f"table: {num_rows:,} rows x {vector_dim} floats + linear = {table_bytes / 2**20:.0f} MB")

    lite = str(work / "vectors.db")
    shutil.rmtree(lite, ignore_errors=True)
    publishes = {"lite": publish_timed(lite, bundle)}
    server = server_uri = None
    if args.server:
        server, server_uri = start_server(work)
        publishes["server"] = publish_timed(server_uri, bundle)
    for name, p in publishes.items():
        print(
            f"publish {name}: {p['rows']:,} rows, insert {p['insert_s']:.1f} s "
            f"({p['insert_rows_per_s']:,.0f} rows/s), verify {p['verify_s']:.1f} s, "
            f"total {p['publish_rows_per_s']:,.0f} rows/s"
        )
    try:
        specs = arm_specs(lite, server_uri, table_bytes)
        runs: dict[str, list[dict[str, Any]]] = {s["arm"]: [] for s in specs}
        for repeat in range(args.repeats):
            order = specs if repeat % 2 == 0 else specs[::-1]  # alternate the order
            for spec in order:
                runs[spec["arm"]].append(run_child(spec, args, files))
                print(f"  repeat {repeat + 1}: {spec['arm']} done", flush=True)
    finally:
        if server is not None:
            server.stop()
    arms = {name: summarise(r) for name, r in runs.items()}
    for spec in specs:
        arms[spec["arm"]]["cache_bytes"] = spec["cache_bytes"]
    print_table(arms)
    result = {
        "table": {"rows": num_rows, "vector_dim": vector_dim, "bytes": table_bytes},
        "store": str(store.path),
        "publish": publishes,
        "arms": arms,
        "runs": runs,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
