"""Serving from the vector database vs from the bundle: latency, throughput, cache, memory.

    python scripts/bench_store.py [--rows-train 1000000] [--total-values 2000000] [--repeats 1] \\
        [--server] [--out outputs/bench/store.json]

A Criteo-shape FFM (the synthetic store: 39 fields, Zipf values, k=4, ~750k features seen in
1M training rows; random weights: latency does not depend on their values) is bundled and
published to a fresh Milvus Lite store (publish time and rows/s). Requests are the store's test
rows, so their feature frequencies are the training data's Zipf frequencies; the validation rows
warm an LRU cache first. Arms, each in its own process so that its peak RSS is its own:

    in_process        Predictor.load(bundle): the tables in memory (today's Predictor)
    lite_nocache      Predictor.load(bundle, embeddings=Lite path): Lite inside the process
    lite_cache_<p>    the same with an LRU hot-row cache of p% of the table's bytes (1, 5, 20)
    oop_nocache       Lite in its own process (`LiteServer`, http://127.0.0.1:PORT); the serving
                      process loads the bundle without its tables
    oop_hot_<p>       the same with a fixed cache of the hottest rows by training count
    oop_lru_5         the same with the LRU cache at 5% (LRU vs frequency at one size)
    server_*          (--server) a Milvus standalone server on 127.0.0.1 (no cache, hot 5%)

Per arm: batch-1 and batch-64 latency p50/p99 (predict_ids, one request at a time), rows/s at
batch 1024, cache hit rate per id, the share of batch-1 requests served without a database
call, the share of time inside the database's `get`, peak RSS while loading and while serving
(VmHWM, reset after load) of the serving process, and the store process's RSS where the store
has its own. Also: the cost of one `get` of 1 and 39 ids per deployment, and the curve of the
share of batch-1 requests a hot-row cache serves entirely against its size (from the training
counts and the requests, exact): where the database is the bottleneck. Prints tables and
writes JSON.
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
CURVE_SHARES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.99, 1.0)
GET_IDS = (1, 39)


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
    hot_ids = np.load(args.hot_ids) if args.hot else None
    start = time.perf_counter()
    predictor = Predictor.load(
        args.bundle,
        embeddings=args.embeddings or None,
        cache_bytes=args.cache_bytes,
        hot_ids=hot_ids,
    )
    load_s = time.perf_counter() - start
    del hot_ids
    out: dict[str, Any] = {
        "load_s": load_s,
        "rss_after_load_mb": _proc_status_kb("VmRSS") / 1024,
        "peak_rss_load_mb": _proc_status_kb("VmHWM") / 1024,
    }
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM: the serving peak from here
    tables = predictor.store_tables
    warm_rows = len(warmup) if tables is not None and not args.hot else 256
    for lo in range(0, warm_rows, 64):  # warm the kernels (and fill an LRU cache)
        predictor.predict_ids(warmup[lo : lo + 64], check=False)
    if tables is not None:
        tables.reset_stats()
    clock = time.perf_counter_ns
    phases = {"b1": (1, args.requests_b1), "b64": (64, args.requests_b64)}
    busy_ns = 0
    no_fetch = 0  # batch-1 requests served without a database call
    for name, (batch, count) in phases.items():
        times = []
        for i in range(count):
            lo = (i * batch) % (len(requests) - batch)
            ids = requests[lo : lo + batch]
            fetches = tables.fetches if tables is not None else 0
            t0 = clock()
            predictor.predict_ids(ids, check=False)
            times.append(clock() - t0)
            if batch == 1 and (tables is None or tables.fetches == fetches):
                no_fetch += 1
        if batch == 1:
            out["b1_served_from_cache"] = no_fetch / count
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
        out["tables_in_process"] = _has_table(predictor)
    else:
        out["tables_in_process"] = True
    out["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
    return out


def _has_table(predictor) -> bool:
    """True if the serving model holds any tensor with the table's row count."""
    rows = int(sum(predictor.bundle.model.cardinalities))
    tensors = [*predictor.model.parameters(), *predictor.model.buffers()]
    return any(t.ndim >= 1 and t.shape[0] == rows for t in tensors)


def get_costs(uri: str, reps: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """Latency of one `get` of n random ids (n in GET_IDS) against the live collection."""
    from cvr.vectorstore import collection as col
    from cvr.vectorstore.client import connect

    client = connect(uri)
    name = col.resolve(client, "cvr_ffm_live")
    col.ensure_loaded(client, name)
    rows = col.read_meta(client, name)["rows"]
    rng = np.random.default_rng(seed)
    out = {}
    for n in GET_IDS:
        times = []
        for _ in range(reps):
            ids = rng.choice(rows, n, replace=False).tolist()
            t0 = time.perf_counter_ns()
            client.get(
                name, ids=ids, output_fields=["vector", "linear"], consistency_level="Eventually"
            )
            times.append(time.perf_counter_ns() - t0)
        out[f"get_{n}"] = {**_percentiles_us(times), "min_us": min(times) / 1e3}
    return out


def cache_curve(order: np.ndarray, counts: np.ndarray, requests: np.ndarray, offsets: np.ndarray):
    """Exact hit shares of a cache holding the first n rows of `order` (global ids), per size.

    A batch-1 request is served without the database iff its coldest id is among them.
    """
    n_rows = len(counts)
    rank = np.empty(n_rows, dtype=np.int64)
    rank[order] = np.arange(n_rows)
    ranks = rank[requests.astype(np.int64) + offsets]
    coldest = ranks.max(axis=1)
    points = []
    for share in CURVE_SHARES:
        n = round(share * n_rows)
        points.append(
            {
                "share": share,
                "rows": n,
                "id_hit_rate": float(np.mean(ranks < n)),
                "requests_served_from_cache": float(np.mean(coldest < n)),
            }
        )
    return {
        "points": points,
        "share_for": {
            f"{int(q * 100)}pct_of_requests": float((np.quantile(coldest, q) + 1) / n_rows)
            for q in (0.5, 0.9, 0.99)
        },
        "train_count_1_share": float(np.mean(counts == 1)),
        "requests": len(requests),
    }


# --- the whole bench ------------------------------------------------------------------------------


def build_bundle(work: Path, rows_train: int, total_values: int, seed: int) -> tuple[Path, Any]:
    """The synthetic Criteo-shape store (cached) and an FFM k=4 bundle with random weights."""
    import hydra
    import torch
    from omegaconf import OmegaConf

    from cvr.models.registry import build_model
    from cvr.serving.bundle import export_from_training

    data = OmegaConf.load(ROOT / "conf" / "data" / "synthetic.yaml")
    data.seed, data.rows_train, data.total_values = seed, rows_train, total_values
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
    from milvus import default_server

    from cvr.vectorstore.lite_server import free_port

    shutil.rmtree(work / "server", ignore_errors=True)
    default_server.set_base_dir(str(work / "server"))
    default_server.listen_port = free_port()
    default_server.start()
    return default_server, f"http://127.0.0.1:{default_server.listen_port}"


def publish_timed(uri: str, bundle: Path, batch_rows: int) -> dict[str, Any]:
    from cvr.vectorstore.client import close
    from cvr.vectorstore.versions import publish

    def progress(label: str, total: int):
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"publish {label}", unit="row", mininterval=30)
        return bar.update

    start = time.perf_counter()
    result = publish(uri, bundle, batch_rows=batch_rows, progress=progress)
    total = time.perf_counter() - start
    close(uri)  # Lite: one process per data directory; the arms open it next
    return {
        "uri": uri,
        "collection": result.collection,
        "rows": result.rows,
        "batch_rows": batch_rows,
        "insert_s": result.insert_s,
        "verify_s": result.verify_s,
        "total_s": total,
        "insert_rows_per_s": result.rows / result.insert_s,
        "verify_rows_per_s": result.rows / result.verify_s,
        "publish_rows_per_s": result.rows / total,
    }


def arm_specs(uris: dict[str, str], table_bytes: int, arms: list[str] | None) -> list[dict]:
    def spec(arm: str, uri: str, share: float = 0.0, hot: bool = False) -> dict[str, Any]:
        return {"arm": arm, "embeddings": uri, "cache_bytes": int(share * table_bytes), "hot": hot}

    specs = [spec("in_process", "")]
    lite = uris["lite"]
    specs.append(spec("lite_nocache", lite))
    specs += [spec(f"lite_cache_{round(p * 100)}", lite, p) for p in CACHE_SHARES]
    oop = uris["oop"]
    specs.append(spec("oop_nocache", oop))
    specs += [spec(f"oop_hot_{round(p * 100)}", oop, p, hot=True) for p in CACHE_SHARES]
    specs.append(spec("oop_lru_5", oop, 0.05))
    if "server" in uris:
        specs.append(spec("server_nocache", uris["server"]))
        specs.append(spec("server_hot_5", uris["server"], 0.05, hot=True))
    return [s for s in specs if arms is None or s["arm"] in arms]


def run_child(spec: dict[str, Any], args: argparse.Namespace, files: dict[str, Path]) -> dict:
    cmd = [sys.executable, __file__, "--arm", "--bundle", str(files["bundle"])]
    cmd += ["--embeddings", spec["embeddings"], "--cache-bytes", str(spec["cache_bytes"])]
    cmd += ["--requests", str(files["requests"]), "--warmup", str(files["warmup"])]
    cmd += ["--hot-ids", str(files["hot_ids"])] + (["--hot"] if spec["hot"] else [])
    cmd += ["--requests-b1", str(args.requests_b1), "--requests-b64", str(args.requests_b64)]
    cmd += ["--batches-b1024", str(args.batches_b1024)]
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
    ("cache_hit_rate", "id hit", "{:.3f}"),
    ("b1_served_from_cache", "b1 no-db", "{:.3f}"),
    ("db_time_share", "db share", "{:.2f}"),
    ("peak_rss_load_mb", "RSS load MB", "{:.0f}"),
    ("peak_rss_serving_mb", "RSS serve MB", "{:.0f}"),
    ("store_rss_mb", "store RSS MB", "{:.0f}"),
]


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _, _ in COLUMNS] + ["rss_after_load_mb", "load_s", "cache_mb"]
    out: dict[str, Any] = {}
    for key in keys:
        values = [r[key] for r in runs if key in r]
        if values:
            out[key] = float(np.median(values))
            out[f"{key}_spread"] = [float(min(values)), float(max(values))]
    out["tables_in_process"] = runs[0].get("tables_in_process")
    out["loadavg"] = [r["loadavg"] for r in runs]
    return out


def print_table(arms: dict[str, dict[str, Any]]) -> None:
    header = f"{'arm':<16}" + "".join(f"{label:>14}" for _, label, _ in COLUMNS)
    print(header)
    print("-" * len(header))
    for name, row in arms.items():
        cells = "".join(f"{fmt.format(row[k]) if k in row else '-':>14}" for k, _, fmt in COLUMNS)
        print(f"{name:<16}{cells}")


def get_costs_child(uri: str, reps: int) -> dict[str, Any]:
    """get_costs in a fresh process (in-process Lite must own the data directory)."""
    cmd = [sys.executable, __file__, "--get-costs", uri, "--get-reps", str(reps)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"get costs on {uri} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-train", type=int, default=1_000_000)
    parser.add_argument("--total-values", type=int, default=2_000_000, help="values to draw from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--requests-b1", type=int, default=600)
    parser.add_argument("--requests-b64", type=int, default=30)
    parser.add_argument("--warmup-rows", type=int, default=2048, help="val rows that warm up")
    parser.add_argument("--batches-b1024", type=int, default=3)
    parser.add_argument("--get-reps", type=int, default=200, help="gets per size, get costs")
    parser.add_argument("--publish-batch", type=int, default=8192, help="rows per insert")
    parser.add_argument("--arms", nargs="*", help="only these arms (default: all)")
    parser.add_argument(
        "--reuse-publish",
        action="store_true",
        help="reuse the stores of an earlier run's publish of the same bundle (its figures)",
    )
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
    parser.add_argument("--hot-ids", help=argparse.SUPPRESS)
    parser.add_argument("--hot", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--get-costs", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.get_costs:
        print(json.dumps(get_costs(args.get_costs, args.get_reps)))
        return 0
    if args.arm:
        print(json.dumps(run_arm(args)))
        return 0

    from cvr.vectorstore.lite_server import LiteServer
    from cvr.vectorstore.table import feature_counts, hot_ids_by_count

    started = time.perf_counter()
    uptime = {"start": _uptime()}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    bundle, store = build_bundle(work, args.rows_train, args.total_values, args.seed)
    cards = store.cardinalities
    num_rows, vector_dim = sum(cards), len(cards) * 4
    table_bytes = num_rows * (vector_dim + 1) * 4
    offsets = np.concatenate([[0], np.cumsum(cards)[:-1]]).astype(np.int64)
    files = {
        "bundle": bundle,
        "requests": work / "requests.npy",
        "warmup": work / "warmup.npy",
        "hot_ids": work / "hot_ids.npy",
    }
    requests = np.ascontiguousarray(store.ids("test")[:20_000], dtype=np.int32)
    np.save(files["requests"], requests)
    warmup = store.ids("val")[: args.warmup_rows]
    np.save(files["warmup"], np.ascontiguousarray(warmup, dtype=np.int32))
    counts = feature_counts(store.ids("train"), cards)  # the training frequency of every row
    hot_ids = hot_ids_by_count(counts, cards)
    np.save(files["hot_ids"], hot_ids)
    curve = cache_curve(hot_ids, counts, requests, offsets)
    curve_by_count = cache_curve(np.argsort(-counts, kind="stable"), counts, requests, offsets)
    print(f"table: {num_rows:,} rows x {vector_dim} floats + linear = {table_bytes / 2**20:.0f} MB")

    lite = work / "vectors.db"  # for the arms with Lite inside the serving process
    oop_dir = work / "vectors_oop.db"  # for the Lite server process (one owner per directory)
    lite_server = LiteServer(oop_dir)
    publishes = reused_publish(work, bundle) if args.reuse_publish else None
    if publishes is None:
        for path in (lite, oop_dir):
            shutil.rmtree(path, ignore_errors=True)
        # Published through Lite in its own process: pymilvus's packing and Lite's engine then
        # run on two cores instead of sharing one interpreter.
        lite_server.start()
        publishes = {"lite": publish_timed(lite_server.uri, bundle, args.publish_batch)}
        lite_server.stop()
        shutil.copytree(oop_dir, lite)
        (work / "publish.json").write_text(
            json.dumps({"bundle": _fingerprint(bundle), **publishes})
        )
    lite_server.start()
    uris = {"lite": str(lite), "oop": lite_server.uri}
    server = None
    try:
        if args.server:
            server, uris["server"] = start_server(work)
            publishes["server"] = publish_timed(uris["server"], bundle, args.publish_batch)
        for name, p in publishes.items():
            print(
                f"publish {name}{' (reused)' if p.get('reused') else ''}: {p['rows']:,} rows, "
                f"insert {p['insert_s']:.1f} s ({p['insert_rows_per_s']:,.0f} rows/s), verify "
                f"{p['verify_s']:.1f} s ({p['verify_rows_per_s']:,.0f} rows/s), "
                f"total {p['total_s']:.1f} s"
            )
        uptime["after_publish"] = _uptime()
        gets = {"lite_in_process": get_costs_child(uris["lite"], args.get_reps)}
        gets["lite_own_process"] = get_costs(uris["oop"], args.get_reps)
        if "server" in uris:
            gets["server"] = get_costs(uris["server"], args.get_reps)
        specs = arm_specs(uris, table_bytes, args.arms)
        runs: dict[str, list[dict[str, Any]]] = {s["arm"]: [] for s in specs}
        for repeat in range(args.repeats):
            order = specs if repeat % 2 == 0 else specs[::-1]  # alternate the order
            for spec in order:
                result = run_child(spec, args, files)
                if spec["embeddings"] == uris["oop"]:
                    result["store_rss_mb"] = lite_server.rss_mb()
                runs[spec["arm"]].append(result)
                print(f"  repeat {repeat + 1}: {spec['arm']} done", flush=True)
        store_peak_rss_mb = lite_server.peak_rss_mb()
    finally:
        lite_server.stop()
        if server is not None:
            server.stop()
    uptime["end"] = _uptime()
    arms = {name: summarise(r) for name, r in runs.items()}
    for spec in specs:
        arms[spec["arm"]]["cache_bytes"] = spec["cache_bytes"]
        arms[spec["arm"]]["hot"] = spec["hot"]
    print_table(arms)
    print("\nget latency (us), p50 / p99:")
    for where, g in gets.items():
        cells = ", ".join(f"{k}: {v['p50_us']:.0f} / {v['p99_us']:.0f}" for k, v in g.items())
        print(f"  {where:<18}{cells}")
    print(
        "\nhottest-rows cache: share of table -> id hit, b1 requests served whole "
        "(OOV rows first, then by training count | by training count only):"
    )
    for pt, pc in zip(curve["points"], curve_by_count["points"], strict=True):
        print(
            f"  {pt['share']:>5.0%}  {pt['id_hit_rate']:.4f}  "
            f"{pt['requests_served_from_cache']:.4f}  |  {pc['id_hit_rate']:.4f}  "
            f"{pc['requests_served_from_cache']:.4f}"
        )
    print(f"  table share needed: {curve['share_for']} | {curve_by_count['share_for']}")
    result = {
        "table": {"rows": num_rows, "vector_dim": vector_dim, "bytes": table_bytes},
        "store": str(store.path),
        "publish": publishes,
        "get_costs": gets,
        "cache_curve": curve,
        "cache_curve_by_count_only": curve_by_count,
        "arms": arms,
        "runs": runs,
        "lite_server_peak_rss_mb": store_peak_rss_mb,
        "repeats": args.repeats,
        "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "cpu_count": os.cpu_count(),
        "uptime": uptime,
        "wall_s": time.perf_counter() - started,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({result['wall_s']:.0f} s)")
    return 0


def _fingerprint(bundle: Path) -> str:
    from cvr.ops.manifest import fingerprint
    from cvr.serving.bundle import read_manifest

    return fingerprint(read_manifest(bundle)["files"])


def reused_publish(work: Path, bundle: Path) -> dict[str, Any] | None:
    """The figures of an earlier publish of this very bundle into `work` (--reuse-publish)."""
    sidecar = work / "publish.json"
    dirs = (work / "vectors.db", work / "vectors_oop.db")
    if not sidecar.is_file() or not all(d.is_dir() for d in dirs):
        return None
    record = json.loads(sidecar.read_text())
    if record.pop("bundle", None) != _fingerprint(bundle):
        return None
    return {name: {**p, "reused": True} for name, p in record.items()}


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
