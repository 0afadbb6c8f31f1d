"""Retrieval benchmark: every configured index against exact search, on the same vectors.

For each index and each search setting (nprobe, efSearch, ...) it reports

- recall@1/10/100 against exact inner-product search, tie-aware: a retrieved item counts when its
  exact score is >= the k-th exact score − 1e-6 (items with equal scores are interchangeable);
- QPS one query at a time on one thread (and p50/p99 latency in µs), and QPS for all queries in
  one batch on all threads;
- build time (train + add) and index bytes as `faiss.serialize_index` writes them.

Recall@1 and @10, and the timings, come from searches with k = `timed_k` (10); recall@100 from a
second, untimed search with k = 100 (HNSW explores max(efSearch, k) candidates, so timing it at
k = 100 would hide the small efSearch settings).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvr.retrieval.index import MipsIndex, build_index, format_factory, index_bytes, set_threads

log = logging.getLogger(__name__)

RECALL_KS = (1, 10, 100)
TIE_TOLERANCE = 1e-6
#: Short names of search parameters in row names: `hnsw_ef64`, `ivf_flat_nprobe16`.
_PARAM_LABELS = {"efSearch": "ef", "nprobe": "nprobe"}
_QUERY_BLOCK = 128


@dataclass
class IndexConfig:
    """One conf/index/*.yaml entry: how to build an index and which search settings to try."""

    name: str
    factory: str
    ip_to_l2: bool = False
    nlist: int | None = None
    m: int | None = None
    pad_to_multiple: int = 1
    train_size: int | None = None
    build: dict[str, Any] = field(default_factory=dict)
    search: dict[str, list[Any]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, name: str, node: Mapping[str, Any]) -> IndexConfig:
        known = set(cls.__dataclass_fields__) - {"name"}
        unknown = sorted(set(node) - known)
        if unknown:
            raise ValueError(
                f"index.{name}: unknown keys {unknown}; expected some of {sorted(known)}"
            )
        node = dict(node)
        node["build"] = dict(node.get("build") or {})
        node["search"] = dict(node.get("search") or {})
        node["pad_to_multiple"] = node.get("pad_to_multiple") or 1
        return cls(name=name, **node)

    def factory_string(self, ntotal: int, dim: int) -> str:
        """The factory with `{nlist}` / `{m}` filled for `ntotal` vectors of `dim` dimensions.

        nlist None = a power of two near sqrt(ntotal); m None = one PQ code byte per 8 of the
        dimensions the index stores (after the IP-to-L2 column and the padding).
        """
        nlist = self.nlist or 2 ** max(round(math.log2(math.sqrt(ntotal))), 1)
        stored = dim + int(self.ip_to_l2)
        stored += -stored % self.pad_to_multiple
        return format_factory(self.factory, nlist=nlist, m=self.m or max(stored // 8, 1))

    def settings(self) -> list[dict[str, Any]]:
        """Every combination of the search parameter lists ([{}] when there are none)."""
        names = list(self.search)
        values = [v if isinstance(v, list | tuple) else [v] for v in self.search.values()]
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]

    def setting_name(self, params: Mapping[str, Any]) -> str:
        parts = [f"{_PARAM_LABELS.get(k, k.lower())}{v}" for k, v in params.items()]
        return "_".join([self.name, *parts])


# --- ground truth and recall ---------------------------------------------------------------------
def exact_search(items: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Ids int64 (n, k) of the k largest inner products, by exhaustive search (IndexFlatIP)."""
    return build_index(items, "Flat").search(queries, k)[1]


def exact_scores(queries: np.ndarray, items: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """float64 (n, k): queries[r] · items[ids[r, c]]; −inf where ids is −1 (nothing found)."""
    out = np.full(ids.shape, -np.inf)
    for start in range(0, len(ids), _QUERY_BLOCK):  # blocks bound the (block, k, d) gather
        block = ids[start : start + _QUERY_BLOCK]
        gathered = items[np.maximum(block, 0)].astype(np.float64)
        q = queries[start : start + _QUERY_BLOCK].astype(np.float64)
        scores = np.einsum("nkd,nd->nk", gathered, q)
        out[start : start + _QUERY_BLOCK] = np.where(block >= 0, scores, -np.inf)
    return out


def tie_aware_recall(
    retrieved_scores: np.ndarray, truth_scores: np.ndarray, k: int, retrieved_ids: np.ndarray
) -> float:
    """Mean over queries of |{retrieved in top k with score >= k-th true score − tol}| / k.

    retrieved_scores, retrieved_ids: (n, >= k) exact scores of what the index returned (ids −1
    for none); truth_scores: (n, >= k) exact scores of the exact top-k.
    """
    threshold = np.sort(truth_scores[:, :k], axis=1)[:, 0:1] - TIE_TOLERANCE
    ids = retrieved_ids[:, :k]
    # A repeated id would count twice; indexes should not return any, but do not trust it.
    repeated = np.zeros_like(ids, dtype=bool)
    order = np.argsort(ids, axis=1, kind="stable")
    sorted_ids = np.take_along_axis(ids, order, axis=1)
    np.put_along_axis(repeated, order[:, 1:], sorted_ids[:, 1:] == sorted_ids[:, :-1], axis=1)
    hits = (retrieved_scores[:, :k] >= threshold) & (ids >= 0) & ~repeated
    return float(hits.sum(axis=1).mean() / k)


# --- timing --------------------------------------------------------------------------------------
def single_query_latencies_us(
    index: MipsIndex, prepared: np.ndarray, k: int, budget_s: float, min_queries: int = 20
) -> np.ndarray:
    """Latency (µs, float64) of queries searched one at a time on one thread.

    Stops after `budget_s` seconds once `min_queries` are timed (exact search over millions of
    items takes long per query). Two untimed queries warm the caches first.
    """
    set_threads(1)
    for row in prepared[:2]:
        index.search_prepared(row[None], k)
    latencies = []
    started = time.perf_counter()
    for row in prepared:
        t0 = time.perf_counter_ns()
        index.search_prepared(row[None], k)
        latencies.append((time.perf_counter_ns() - t0) / 1e3)
        if len(latencies) >= min_queries and time.perf_counter() - started > budget_s:
            break
    return np.asarray(latencies)


def batch_search(
    index: MipsIndex, prepared: np.ndarray, k: int, threads: int
) -> tuple[float, np.ndarray]:
    """(seconds, ids (n, k)) of one search call for all queries on `threads` threads."""
    set_threads(threads)
    t0 = time.perf_counter()
    _, ids = index.search_prepared(prepared, k)
    return time.perf_counter() - t0, ids


# --- the benchmark -------------------------------------------------------------------------------
@dataclass
class BenchSettings:
    timed_k: int = 10
    threads: int = 2
    single_query_budget_s: float = 3.0
    seed: int = 0


def benchmark(
    items: np.ndarray,
    queries: np.ndarray,
    configs: Sequence[IndexConfig],
    settings: BenchSettings,
    on_built: Callable[[IndexConfig, MipsIndex], None] | None = None,
    truth_ids: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """One row per (index, search setting); see the module docstring for the columns.

    items float32 (m, d), queries float32 (n, d). `on_built(config, index)` is called once per
    index after its measurements (e.g. to save it). `truth_ids` (n, 100): the exact top 100 if
    already known (`exact_search`). Indexes are built one at a time and dropped, so at most one
    copy of the vectors besides `items` is alive.
    """
    set_threads(settings.threads)
    if truth_ids is None:
        truth_ids = exact_search(items, queries, max(RECALL_KS))
    truth = exact_scores(queries, items, truth_ids)
    rows = []
    for config in configs:
        factory = config.factory_string(*items.shape)
        log.info("building %s (%s) over %d vectors", config.name, factory, len(items))
        set_threads(settings.threads)
        t0 = time.perf_counter()
        index = build_index(
            items,
            factory,
            ip_to_l2=config.ip_to_l2,
            train_size=config.train_size,
            build_params=config.build,
            pad_to_multiple=config.pad_to_multiple,
            seed=settings.seed,
        )
        build_s = time.perf_counter() - t0
        size = index_bytes(index)
        prepared = index.prepare_queries(queries)
        for params in config.settings():
            index.set_search_params(**params)
            # Exact search's top 100 is the ground truth itself: skip a second full scan.
            exact = config.factory == "Flat" and not config.ip_to_l2
            top_100 = truth_ids if exact else None
            row = _measure(index, prepared, queries, items, truth, settings, top_100)
            row.update(
                name=config.setting_name(params),
                index=config.name,
                factory=factory,
                params=dict(params),
                build_s=build_s,
                index_bytes=size,
                ntotal=index.ntotal,
                dim=index.dim,
            )
            log.info(
                "%s: recall@10 %.4f, %.0f QPS", row["name"], row["recall_at_10"], row["qps_single"]
            )
            rows.append(row)
        if on_built is not None:
            on_built(config, index)
        del index
    return rows


def _measure(
    index: MipsIndex,
    prepared: np.ndarray,
    queries: np.ndarray,
    items: np.ndarray,
    truth: np.ndarray,
    settings: BenchSettings,
    top_100: np.ndarray | None = None,
) -> dict[str, Any]:
    batch_s, ids = batch_search(index, prepared, settings.timed_k, settings.threads)
    if top_100 is None:
        _, ids_100 = batch_search(index, prepared, max(RECALL_KS), settings.threads)
    else:
        ids_100 = top_100
    latencies = single_query_latencies_us(
        index, prepared, settings.timed_k, settings.single_query_budget_s
    )
    found = {settings.timed_k: ids, max(RECALL_KS): ids_100}
    scores = {k: exact_scores(queries, items, v) for k, v in found.items()}
    row: dict[str, Any] = {}
    for k in RECALL_KS:
        source = settings.timed_k if k <= settings.timed_k else max(RECALL_KS)
        row[f"recall_at_{k}"] = tie_aware_recall(scores[source], truth, k, found[source])
    row.update(
        qps_single=1e6 / float(latencies.mean()),
        qps_batch=len(prepared) / batch_s,
        latency_p50_us=float(np.percentile(latencies, 50)),
        latency_p99_us=float(np.percentile(latencies, 99)),
        single_queries_timed=len(latencies),
        threads_batch=settings.threads,
    )
    return row


def add_speedups(rows: list[dict[str, Any]], baseline: str) -> None:
    """Add `speedup_single` / `speedup_batch`: QPS relative to the row named `baseline`."""
    base = next((r for r in rows if r["name"] == baseline), None)
    if base is None:
        raise ValueError(f"baseline {baseline!r} is not among the measured rows")
    for row in rows:
        row["speedup_single"] = row["qps_single"] / base["qps_single"]
        row["speedup_batch"] = row["qps_batch"] / base["qps_batch"]


def best_point(rows: Sequence[Mapping[str, Any]], target_recall: float) -> dict[str, Any] | None:
    """The fastest single-thread row reaching `target_recall` recall@10, else the best recall."""
    reaching = [r for r in rows if r["recall_at_10"] >= target_recall]
    if reaching:
        row = max(reaching, key=lambda r: r["qps_single"])
    elif rows:
        row = max(rows, key=lambda r: (r["recall_at_10"], r["qps_single"]))
    else:
        return None
    return {
        "name": row["name"],
        "recall_at_10": row["recall_at_10"],
        "speedup_single": row["speedup_single"],
        "reaches_target": bool(reaching),
        "target_recall_at_10": target_recall,
    }


# --- reporting -----------------------------------------------------------------------------------
_COLUMNS = [
    ("name", "{:<22}", 22),
    ("recall_at_1", "{:>7.4f}", 7),
    ("recall_at_10", "{:>7.4f}", 7),
    ("recall_at_100", "{:>7.4f}", 7),
    ("qps_single", "{:>10.1f}", 10),
    ("speedup_single", "{:>8.1f}x", 9),
    ("qps_batch", "{:>10.1f}", 10),
    ("latency_p50_us", "{:>10.0f}", 10),
    ("latency_p99_us", "{:>10.0f}", 10),
    ("build_s", "{:>8.1f}", 8),
    ("index_bytes", "{:>10.1f}", 10),
]
_HEADERS = {
    "recall_at_1": "R@1",
    "recall_at_10": "R@10",
    "recall_at_100": "R@100",
    "qps_single": "QPS 1thr",
    "speedup_single": "vs exact",
    "qps_batch": "QPS batch",
    "latency_p50_us": "p50 µs",
    "latency_p99_us": "p99 µs",
    "build_s": "build s",
    "index_bytes": "MiB",
}


def results_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width text table, one line per row."""
    header = " ".join(f"{_HEADERS.get(key, key):>{width}}" for key, _, width in _COLUMNS)
    lines = [header.replace(f"{'name':>22}", f"{'index / setting':<22}"), "-" * len(header)]
    for row in rows:
        cells = []
        for key, fmt, width in _COLUMNS:
            value = row.get(key)
            if key == "index_bytes" and value is not None:
                value = value / 2**20
            cells.append(fmt.format(value) if value is not None else " " * width)
        lines.append(" ".join(cells))
    return "\n".join(lines)


def mlflow_metrics(
    rows: Sequence[Mapping[str, Any]], prefix: str = "retrieval"
) -> dict[str, float]:
    """`retrieval/<row name>/<figure>` for every numeric figure (no `@`: MLflow drops it)."""
    out = {}
    for row in rows:
        for key, value in row.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[f"{prefix}/{row['name']}/{key}"] = float(value)
    return out


def pareto_front(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Rows no other row beats on both recall@10 and single-thread QPS, by recall."""
    ordered = sorted(rows, key=lambda r: (-r["recall_at_10"], -r["qps_single"]))
    front, best_qps = [], -math.inf
    for row in ordered:
        if row["qps_single"] > best_qps:
            front.append(row)
            best_qps = row["qps_single"]
    return front


def pareto_plot(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """PNG of recall@10 against single-thread QPS (log scale), one marker per index type."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in tests
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    markers = itertools.cycle("os^Dv<>phX*")
    for index_name in dict.fromkeys(r["index"] for r in rows):
        mine = [r for r in rows if r["index"] == index_name]
        ax.plot(
            [r["recall_at_10"] for r in mine],
            [r["qps_single"] for r in mine],
            marker=next(markers),
            linestyle=":",
            label=index_name,
        )
    front = pareto_front(rows)
    ax.plot(
        [r["recall_at_10"] for r in front],
        [r["qps_single"] for r in front],
        color="black",
        linewidth=1.5,
        alpha=0.5,
        label="Pareto front",
    )
    ax.set_yscale("log")
    ax.set_xlabel("recall@10 (tie-aware, vs exact search)")
    ax.set_ylabel("queries per second (one query at a time, 1 thread)")
    ax.set_title(title or "Recall against speed")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
