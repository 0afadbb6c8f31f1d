"""Benchmark pieces (recall, names, Pareto front) and the real `python retrieve.py` command."""

import itertools
import json
import math
import shutil

import mlflow
import numpy as np
import pytest
from omegaconf import OmegaConf

from cvr.ops.manifest import ManifestError
from cvr.retrieval.bench import (
    BenchSettings,
    IndexConfig,
    add_speedups,
    benchmark,
    best_point,
    exact_scores,
    mlflow_metrics,
    pareto_front,
    results_table,
    tie_aware_recall,
)
from tests.helpers import run_script


def test_tie_aware_recall_counts_equal_scores_and_ignores_missing_and_repeats():
    # Exact top-3 scores 5, 4, 4: an item scoring 4 that exact search did not return still counts.
    truth = np.array([[5.0, 4.0, 4.0]])
    retrieved_ids = np.array([[0, 7, 9]])
    assert tie_aware_recall(np.array([[5.0, 4.0, 4.0 - 1e-7]]), truth, 3, retrieved_ids) == 1.0
    assert tie_aware_recall(np.array([[5.0, 4.0, 3.9]]), truth, 3, retrieved_ids) == 2 / 3
    missing = np.array([[0, 7, -1]])
    assert tie_aware_recall(np.array([[5.0, 4.0, -np.inf]]), truth, 3, missing) == 2 / 3
    repeated = np.array([[0, 7, 7]])
    assert tie_aware_recall(np.array([[5.0, 4.0, 4.0]]), truth, 3, repeated) == 2 / 3
    assert tie_aware_recall(np.array([[5.0, 4.0, 4.0]]), truth, 1, retrieved_ids) == 1.0


def test_exact_scores_are_the_inner_products_and_minus_inf_for_missing():
    rng = np.random.default_rng(0)
    items, queries = rng.standard_normal((50, 6)), rng.standard_normal((3, 6))
    ids = np.array([[0, 5], [49, -1], [2, 2]])
    scores = exact_scores(queries.astype(np.float32), items.astype(np.float32), ids)
    assert scores[1, 1] == -np.inf
    np.testing.assert_allclose(scores[0], items[[0, 5]] @ queries[0], rtol=1e-5)


def test_index_config_names_settings_and_fills_the_factory():
    config = IndexConfig.from_dict(
        "ivf_pq",
        {"factory": "IVF{nlist},PQ{m}", "pad_to_multiple": 8, "search": {"nprobe": [1, 4]}},
    )
    assert config.factory_string(1_000_000, 433) == "IVF1024,PQ55"  # 434 -> 440 dims / 8
    assert [config.setting_name(p) for p in config.settings()] == [
        "ivf_pq_nprobe1",
        "ivf_pq_nprobe4",
    ]
    hnsw = IndexConfig.from_dict("hnsw", {"factory": "HNSW32", "search": {"efSearch": [64]}})
    assert hnsw.setting_name(hnsw.settings()[0]) == "hnsw_ef64"
    with pytest.raises(ValueError, match=r"index\.hnsw: unknown keys \['ef'\]"):
        IndexConfig.from_dict("hnsw", {"factory": "HNSW32", "ef": 3})


def test_benchmark_rows_table_metrics_and_pareto_front():
    rng = np.random.default_rng(1)
    items = rng.standard_normal((3000, 16)).astype(np.float32)
    queries = rng.standard_normal((40, 16)).astype(np.float32)
    configs = [
        IndexConfig.from_dict("flat", {"factory": "Flat"}),
        IndexConfig.from_dict(
            "ivf_flat", {"factory": "IVF{nlist},Flat", "search": {"nprobe": [1, 64]}}
        ),
    ]
    built = []
    rows = benchmark(
        items,
        queries,
        configs,
        BenchSettings(threads=1, single_query_budget_s=0.05),
        on_built=lambda config, index: built.append((config.name, index.ntotal)),
    )
    add_speedups(rows, "flat")
    assert [r["name"] for r in rows] == ["flat", "ivf_flat_nprobe1", "ivf_flat_nprobe64"]
    assert built == [("flat", 3000), ("ivf_flat", 3000)]
    flat, coarse, full = rows
    assert flat["recall_at_1"] == flat["recall_at_10"] == flat["recall_at_100"] == 1.0
    assert full["recall_at_10"] == 1.0  # nprobe = nlist (64 lists) visits every item
    assert coarse["recall_at_10"] < 1.0
    assert flat["speedup_single"] == 1.0
    for row in rows:
        assert row["qps_single"] > 0 and row["latency_p99_us"] >= row["latency_p50_us"] > 0
        assert row["index_bytes"] > 0 and row["build_s"] >= 0 and row["single_queries_timed"] >= 20
    table = results_table(rows)
    assert "ivf_flat_nprobe64" in table and "R@10" in table
    metrics = mlflow_metrics(rows)
    assert metrics["retrieval/ivf_flat_nprobe64/recall_at_10"] == 1.0
    assert not [name for name in metrics if "@" in name]
    front = pareto_front(rows)
    assert front[0]["recall_at_10"] == 1.0
    assert all(a["qps_single"] < b["qps_single"] for a, b in itertools.pairwise(front))


TRAIN_TINY = [
    "model=ffm",
    "data.num_fields=6",
    "data.user_fields=2",
    "data.item_fields=2",
    "data.total_values=3000",
    "data.rows_train=3000",
    "data.rows_val=500",
    "data.rows_test=500",
    "datamodule.batch_size=512",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
]


def test_best_point_is_the_fastest_row_reaching_the_target_recall():
    rows = [
        {"name": "a", "recall_at_10": 0.99, "qps_single": 10.0, "speedup_single": 1.0},
        {"name": "b", "recall_at_10": 0.96, "qps_single": 90.0, "speedup_single": 9.0},
        {"name": "c", "recall_at_10": 0.90, "qps_single": 500.0, "speedup_single": 50.0},
    ]
    assert best_point(rows, 0.95)["name"] == "b"
    missed = best_point(rows, 0.999)
    assert missed["name"] == "a" and not missed["reaches_target"]


RETRIEVE_TINY = [
    # Overrides inside a list override are quoted: Hydra's grammar does not allow a bare `=`.
    "train.overrides=[" + ",".join(f"'{o}'" for o in TRAIN_TINY) + "]",
    "catalogue.num_items=2000",
    "queries.num=50",
    "index=[flat,hnsw,ivf_flat]",
    "index.hnsw.search.efSearch=[16,64]",
    "index.ivf_flat.search.nprobe=[1,8]",
    "bench.single_query_budget_s=0.05",
    "save_indexes=[hnsw]",
]


def test_retrieve_command_trains_benchmarks_and_logs_to_mlflow(tmp_path):
    result = run_script(
        [
            "retrieve.py",
            f"paths.output_root={tmp_path}",
            f"hydra.run.dir={tmp_path / 'run'}",
            *RETRIEVE_TINY,
        ],
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "hnsw_ef64" in result.stdout and "R@10" in result.stdout and "x exact" in result.stdout
    assert "distinct items across the exact top-10 lists" in result.stdout

    results = json.loads((tmp_path / "run" / "retrieval.json").read_text())
    assert results["items"] == 2000 and results["queries"] == 50
    assert results["dim"] == 4 * 2 * 4 + 1  # 4 query fields x 2 item fields x k=4, + 1
    names = [row["name"] for row in results["rows"]]
    assert names == ["flat", "hnsw_ef16", "hnsw_ef64", "ivf_flat_nprobe1", "ivf_flat_nprobe8"]
    assert results["rows"][0]["recall_at_10"] == 1.0
    assert (tmp_path / "run" / "retrieval_pareto.png").stat().st_size > 1000
    manifest = json.loads((tmp_path / "run" / "indexes" / "hnsw" / "manifest.json").read_text())
    assert manifest["dimension"] == 33 and manifest["ntotal"] == 2000
    assert manifest["provenance"]["checkpoint_sha256"] == results["source"]["checkpoint_sha256"]
    assert results["entity"]["neighbours"][0] == results["entity"]["value"]

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("cvr").experiment_id])
    retrieval = [r for r in runs if r.data.tags.get("task") == "retrieval"]
    training = [r for r in runs if r.data.tags.get("task") != "retrieval"]
    assert len(retrieval) == 1 and len(training) == 1
    run = retrieval[0]
    assert run.data.tags["source_run_id"] == training[0].info.run_id == results["source"]["run_id"]
    assert math.isfinite(run.data.metrics["retrieval/hnsw_ef64/recall_at_10"])
    assert run.data.metrics["retrieval/flat/recall_at_100"] == 1.0
    assert "retrieval/ivf_flat_nprobe8/qps_single" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"retrieval_pareto.png", "retrieval.json", "config.yaml"} <= artifacts

    # The training run folder is reusable: `run_dir=` rebuilds the same model from it.
    from cvr.pipelines.retrieve import load_source

    source = load_source(None, tmp_path / "run" / "train")
    assert source.checkpoint_sha256 == results["source"]["checkpoint_sha256"]
    assert source.run_info["mlflow_run_id"] == training[0].info.run_id
    # A run whose config no longer builds the data it trained on is refused.
    moved = tmp_path / "edited"
    shutil.copytree(tmp_path / "run" / "train", moved)
    config = OmegaConf.load(moved / ".hydra" / "config.yaml")
    config.data.rows_test = 400
    OmegaConf.save(config, moved / ".hydra" / "config.yaml")
    with pytest.raises(ManifestError, match="the model was trained on dataset"):
        load_source(None, moved)


def test_retrieve_refuses_a_missing_checkpoint(tmp_path):
    from cvr.pipelines.retrieve import load_source

    with pytest.raises(FileNotFoundError, match="checkpoint: no file at"):
        load_source(tmp_path / "nope.ckpt", None)
    with pytest.raises(FileNotFoundError, match="no checkpoint under"):
        load_source(None, tmp_path)
