"""Item vectors in a Milvus collection with an ANN index: the retrieval bench's Milvus rows.

    rows = milvus_rows(items, queries, truth_ids, groups, uri, indexes)

The exact item vectors of `cvr.retrieval.mips` go into one collection (`id`, `vector`, and a
scalar `group`: the item's value of its first item field, e.g. its advertiser). Each index
(IVF_FLAT, HNSW, ...) is built in turn, and what Milvus reports it built is recorded next to
what was asked (Milvus Lite replaces build parameters with its own). Each search setting gives
one row in the faiss rows' format (recall@1/@10 against exact search, single-query latency and
QPS, batch QPS), plus a row searched with a scalar filter (`group == g`, g the group of the
query's exact best item), whose recall is against exact search over that group's items.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cvr.retrieval.bench import exact_scores, tie_aware_recall
from cvr.vectorstore import collection as col
from cvr.vectorstore.client import connect

log = logging.getLogger(__name__)

COLLECTION = "cvr_items_bench"
BATCH_ROWS = 4096


def publish_items(client, name: str, items: np.ndarray, groups: np.ndarray) -> None:
    """(Re)create collection `name` holding items float32 (m, d) with their int64 groups."""
    from pymilvus import DataType

    if client.has_collection(name):
        client.drop_collection(name)
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(items.shape[1]))
    schema.add_field("group", DataType.INT64)
    client.create_collection(name, schema=schema, consistency_level="Strong")
    for lo in range(0, len(items), BATCH_ROWS):
        vectors = items[lo : lo + BATCH_ROWS].tolist()
        group = groups[lo : lo + BATCH_ROWS].tolist()
        rows = zip(vectors, group, strict=True)
        client.insert(
            name, [{"id": lo + i, "vector": v, "group": g} for i, (v, g) in enumerate(rows)]
        )
    client.flush(name)


def build_index(client, name: str, index_type: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Replace the collection's vector index; returns what Milvus reports it built."""
    client.release_collection(name)
    for existing in client.list_indexes(name):
        client.drop_index(name, existing)
    built = col.ensure_index(client, name, "vector", index_type, "IP", params)
    client.load_collection(name)
    return built


def search_ids(
    client, name: str, queries: np.ndarray, k: int, params: Mapping[str, Any], where: str = ""
) -> np.ndarray:
    """Ids int64 (n, k) of the top-k inner products (-1 where fewer were found)."""
    hits = client.search(
        name,
        data=queries.tolist(),
        limit=k,
        search_params={"metric_type": "IP", "params": dict(params)},
        filter=where,
        output_fields=[],
    )
    out = np.full((len(queries), k), -1, dtype=np.int64)
    for row, found in enumerate(hits):
        ids = [h["id"] for h in found][:k]
        out[row, : len(ids)] = ids
    return out


def filtered_truth(
    items: np.ndarray, queries: np.ndarray, groups: np.ndarray, wanted: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k ids and scores (n, k) among the items of each query's wanted group."""
    ids = np.full((len(queries), k), -1, dtype=np.int64)
    for q, g in enumerate(wanted):  # a reference, once per benchmark: clarity over speed
        members = np.flatnonzero(groups == g)
        scores = items[members] @ queries[q]
        top = members[np.argsort(-scores, kind="stable")[:k]]
        ids[q, : len(top)] = top
    return ids, exact_scores(queries, items, ids)


def milvus_rows(
    items: np.ndarray,
    queries: np.ndarray,
    truth_ids: np.ndarray,
    groups: np.ndarray,
    uri: str,
    indexes: Sequence[Mapping[str, Any]],
    k: int = 10,
    budget_s: float = 2.0,
) -> list[dict[str, Any]]:
    """Rows of the retrieval bench for each Milvus index and search setting (module docstring).

    indexes: [{"name", "type", "build": {...}, "search": [{...}, ...]}, ...].
    """
    client = connect(uri)
    start = time.perf_counter()
    publish_items(client, COLLECTION, items, groups)
    insert_s = time.perf_counter() - start
    truth = exact_scores(queries, items, truth_ids)
    wanted = groups[truth_ids[:, 0]]
    _, f_truth = filtered_truth(items, queries, groups, wanted, k)
    rows = []
    for spec in indexes:
        t0 = time.perf_counter()
        built = build_index(client, COLLECTION, spec["type"], spec.get("build", {}))
        build_s = time.perf_counter() - t0
        log.info("milvus %s: asked %s, built %s", spec["name"], spec.get("build"), built)
        for params in spec.get("search", [{}]):
            setting = ",".join(f"{key}={value}" for key, value in params.items())
            base = {
                "index": spec["name"],
                "factory": f"milvus:{spec['type']}",
                "params": dict(params),
                "build_asked": dict(spec.get("build", {})),
                "build_built": json.loads(json.dumps(built, default=str)),
                "build_s": build_s,
                "insert_s": insert_s,
                "index_bytes": None,
                "ntotal": len(items),
                "dim": int(items.shape[1]),
            }
            t0 = time.perf_counter()
            ids = search_ids(client, COLLECTION, queries, k, params)
            batch_s = time.perf_counter() - t0
            scores = exact_scores(queries, items, ids)
            latencies = _single_latencies_us(client, queries, k, params, budget_s)
            rows.append(
                {
                    **base,
                    "name": f"{spec['name']}[{setting}]",
                    "recall_at_1": tie_aware_recall(scores, truth, 1, ids),
                    "recall_at_10": tie_aware_recall(scores, truth, 10, ids),
                    **_latency_figures(latencies),
                    "qps_batch": len(queries) / batch_s,
                }
            )
            latencies, f_found = _filtered_search(client, queries, k, params, wanted, budget_s)
            n = len(f_found)
            f_scores = exact_scores(queries[:n], items, f_found)
            rows.append(
                {
                    **base,
                    "name": f"{spec['name']}+filter[{setting}]",
                    "filter": "group == <group of the query's exact best item>",
                    "recall_at_1": tie_aware_recall(f_scores, f_truth[:n], 1, f_found),
                    "recall_at_10": tie_aware_recall(f_scores, f_truth[:n], 10, f_found),
                    **_latency_figures(latencies),
                }
            )
    client.drop_collection(COLLECTION)
    return rows


def _single_latencies_us(client, queries, k, params, budget_s, min_queries=5) -> np.ndarray:
    latencies: list[float] = []
    started = time.perf_counter()
    for q in queries:
        t0 = time.perf_counter_ns()
        search_ids(client, COLLECTION, q[None], k, params)
        latencies.append((time.perf_counter_ns() - t0) / 1e3)
        if len(latencies) >= min_queries and time.perf_counter() - started > budget_s:
            break
    return np.asarray(latencies)


def _filtered_search(client, queries, k, params, wanted, budget_s, min_queries=5):
    """Queries one at a time with their group filter (a filter is per request)."""
    latencies, found = [], []
    started = time.perf_counter()
    for q, g in zip(queries, wanted, strict=True):
        t0 = time.perf_counter_ns()
        found.append(search_ids(client, COLLECTION, q[None], k, params, f"group == {int(g)}")[0])
        latencies.append((time.perf_counter_ns() - t0) / 1e3)
        if len(latencies) >= min_queries and time.perf_counter() - started > budget_s:
            break
    return np.asarray(latencies), np.stack(found)


def _latency_figures(latencies_us: np.ndarray) -> dict[str, float]:
    qps = 1e6 / float(latencies_us.mean())
    return {
        "qps_single": qps,
        "qps_batch": qps,  # overwritten where a batch call exists (a filter is per request)
        "latency_p50_us": float(np.percentile(latencies_us, 50)),
        "latency_p99_us": float(np.percentile(latencies_us, 99)),
        "single_queries_timed": len(latencies_us),
    }
