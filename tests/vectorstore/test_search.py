"""Milvus index rows for the retrieval bench: recall against exact search, with a filter."""

from __future__ import annotations

import numpy as np

from cvr.retrieval.bench import exact_search
from cvr.vectorstore import search
from cvr.vectorstore.client import connect

INDEXES = [
    {"name": "milvus_flat", "type": "FLAT", "build": {}, "search": [{}]},
    {"name": "milvus_ivf_flat", "type": "IVF_FLAT", "build": {"nlist": 16}},
    {"name": "milvus_hnsw", "type": "HNSW", "build": {"M": 8, "efConstruction": 32}},
]
INDEXES[1]["search"] = [{"nprobe": 16}]
INDEXES[2]["search"] = [{"ef": 64}]


def test_milvus_rows_measure_recall_against_exact_search_with_and_without_a_filter(lite_uri):
    rng = np.random.default_rng(0)
    items = rng.standard_normal((1500, 12)).astype(np.float32)
    queries = rng.standard_normal((12, 12)).astype(np.float32)
    groups = rng.integers(0, 6, len(items)).astype(np.int64)
    truth = exact_search(items, queries, 100)
    rows = search.milvus_rows(items, queries, truth, groups, lite_uri, INDEXES, budget_s=0.2)
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == {
        "milvus_flat[]",
        "milvus_flat+filter[]",
        "milvus_ivf_flat[nprobe=16]",
        "milvus_ivf_flat+filter[nprobe=16]",
        "milvus_hnsw[ef=64]",
        "milvus_hnsw+filter[ef=64]",
    }
    # Exhaustive search (FLAT; IVF probing every list) is exact, with or without the filter.
    for name in ("milvus_flat[]", "milvus_flat+filter[]", "milvus_ivf_flat[nprobe=16]"):
        assert by_name[name]["recall_at_10"] == 1.0, name
    assert by_name["milvus_hnsw[ef=64]"]["recall_at_10"] > 0.8
    for row in rows:
        assert row["build_built"]["index_type"] == row["factory"].removeprefix("milvus:")
        assert row["qps_single"] > 0 and row["single_queries_timed"] >= 5
    assert by_name["milvus_hnsw[ef=64]"]["build_asked"] == {"M": 8, "efConstruction": 32}
    # What Milvus reports it built: the asked parameters (Lite drops pymilvus 3's flat ones).
    assert by_name["milvus_hnsw[ef=64]"]["build_built"]["params"] == {"M": 8, "efConstruction": 32}
    assert by_name["milvus_ivf_flat[nprobe=16]"]["build_built"]["params"] == {"nlist": 16}


def test_a_filtered_search_returns_only_items_of_the_group(lite_uri):
    rng = np.random.default_rng(1)
    items = rng.standard_normal((400, 8)).astype(np.float32)
    groups = np.arange(400) % 7
    client = connect(lite_uri)
    search.publish_items(client, "items", items, groups)
    search.build_index(client, "items", "FLAT", {})
    found = search.search_ids(client, "items", items[:3], 10, {}, where="group == 3")
    assert (groups[found] == 3).all()
    ids, _ = search.filtered_truth(items, items[:3], groups, np.array([3, 3, 3]), 10)
    assert np.array_equal(np.sort(found, axis=1), np.sort(ids, axis=1))


def test_retrieve_command_adds_milvus_rows_next_to_faiss(tmp_path):
    import json

    from tests.helpers import run_script
    from tests.retrieval.test_bench import RETRIEVE_TINY

    tiny = [o for o in RETRIEVE_TINY if not o.startswith(("index", "save_indexes"))]
    result = run_script(
        [
            "retrieve.py",
            f"paths.output_root={tmp_path}",
            f"hydra.run.dir={tmp_path / 'run'}",
            *tiny,
            "index=[flat]",
            "save_indexes=[]",
            "logger=none",
            "milvus.enabled=true",
            "milvus.single_query_budget_s=0.05",
        ],
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "run" / "retrieval.json").read_text())["rows"]
    names = [row["name"] for row in rows]
    assert names[0] == "flat" and "milvus_hnsw+filter[ef=128]" in names
    assert "milvus_ivf_flat[nprobe=32]" in result.stdout  # in the printed table
    ivf = next(r for r in rows if r["name"] == "milvus_ivf_flat[nprobe=8]")
    assert ivf["build_built"]["params"] == {"nlist": 128} and 0 < ivf["recall_at_10"] <= 1
    assert ivf["speedup_single"] > 0  # relative to faiss's exact search, like every row
