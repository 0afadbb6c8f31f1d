"""Indexes from the conf/index factory strings: metric checks, IP-to-L2, manifests, refusals."""

import json
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cvr.ops.manifest import ManifestError
from cvr.retrieval.index import (
    IndexMetricError,
    MipsIndex,
    build_index,
    format_factory,
    index_bytes,
    read_index,
    read_manifest,
    set_threads,
    write_index,
)

CONF_INDEX = Path(__file__).resolve().parents[2] / "conf" / "index"
INDEX_CONFIGS = sorted(p.stem for p in CONF_INDEX.glob("*.yaml"))


def random_vectors(n, d, seed):
    rng = np.random.default_rng(seed)
    # Uneven norms, as item vectors have: inner product and cosine rankings then differ.
    return (rng.standard_normal((n, d)) * rng.uniform(0.2, 2.0, (n, 1))).astype(np.float32)


def exact_ids(items, queries, k):
    return np.argsort(-(queries @ items.T), axis=1, kind="stable")[:, :k]


def test_the_configured_index_types_are_present():
    assert {"flat", "hnsw", "ivf_flat", "ivf_sq8", "ivf_pq", "hnsw_sq8", "hnsw_l2"} <= set(
        INDEX_CONFIGS
    )


@pytest.mark.parametrize("name", INDEX_CONFIGS)
def test_every_configured_index_builds_with_the_right_metric_and_searches(name):
    node = OmegaConf.to_container(OmegaConf.load(CONF_INDEX / f"{name}.yaml"))[name]
    items, queries = random_vectors(2000, 16, 0), random_vectors(20, 16, 1)
    # Sized for 2000 16-dim vectors: 16 lists, PQ with 2 dimensions per sub-quantizer.
    factory = format_factory(node["factory"], nlist=16, m=8)
    index = build_index(items, factory, ip_to_l2=node.get("ip_to_l2", False), **_small_build(node))
    expected = faiss.METRIC_L2 if node.get("ip_to_l2") else faiss.METRIC_INNER_PRODUCT
    assert index.index.metric_type == expected and index.ntotal == 2000 and index.dim == 16
    for param, values in node.get("search", {}).items():
        index.set_search_params(**{param: max(values)})
    scores, ids = index.search(queries, 10)
    assert scores.shape == ids.shape == (20, 10) and (ids >= 0).all()
    assert (np.diff(scores, axis=1) <= 1e-4).all()  # best first
    # Every index finds most of the exact top-10 on this easy set; Flat finds all of it.
    hits = np.mean(
        [len(set(a) & set(b)) / 10 for a, b in zip(ids, exact_ids(items, queries, 10), strict=True)]
    )
    assert hits == 1.0 if node["factory"] == "Flat" else hits > 0.5
    assert index_bytes(index) > 0


def _small_build(node):
    return {
        "build_params": dict(node.get("build") or {}),
        "train_size": node.get("train_size"),
        "pad_to_multiple": 8 if "pad_to_multiple" in node else 1,
    }


def test_an_index_type_that_faiss_builds_as_l2_is_refused():
    # faiss 1.15 builds IndexHNSWPQ with METRIC_L2 whatever metric is asked for.
    with pytest.raises(IndexMetricError, match=r"'HNSW32,PQ4'.*metric l2, expected inner_product"):
        build_index(random_vectors(500, 16, 0), "HNSW32,PQ4")


def test_ip_to_l2_reduction_gives_the_exact_inner_product_ranking():
    items, queries = random_vectors(3000, 24, 2), random_vectors(50, 24, 3)
    index = build_index(items, "Flat", ip_to_l2=True)
    assert index.index.d == 25 and index.max_norm == pytest.approx(
        np.linalg.norm(items, axis=1).max(), rel=1e-6
    )
    scores, ids = index.search(queries, 10)
    np.testing.assert_array_equal(ids, exact_ids(items, queries, 10))
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ items.T, ids, 1), atol=1e-3)


def test_cosine_metric_normalizes_both_sides():
    items, queries = random_vectors(500, 8, 4), random_vectors(5, 8, 5)
    index = build_index(items, "Flat", metric="cosine")
    scores, ids = index.search(queries, 5)
    unit = items / np.linalg.norm(items, axis=1, keepdims=True)
    np.testing.assert_array_equal(ids, exact_ids(unit, queries, 5))
    assert scores.max() <= 1 + 1e-5


@pytest.fixture
def saved(tmp_path):
    items = random_vectors(1000, 12, 6)
    index = build_index(items, "IVF8,Flat")
    index.set_search_params(nprobe=4)
    provenance = {"checkpoint_sha256": "ab" * 32, "data_fingerprint": "cd" * 32}
    path = write_index(index, tmp_path / "ivf", provenance=provenance)
    return path, index, provenance


def test_write_then_read_round_trips_with_a_full_manifest(saved):
    path, index, provenance = saved
    manifest = read_manifest(path)
    for key, value in {
        "factory": "IVF8,Flat",
        "metric": "inner_product",
        "faiss_metric": "inner_product",
        "dimension": 12,
        "ntotal": 1000,
        "faiss_version": faiss.__version__,
        "provenance": provenance,
        "search_params": {"nprobe": 4},
    }.items():
        assert manifest[key] == value, key
    assert len(manifest["files"]["index.faiss"]) == 64
    loaded = read_index(path, expected_dim=12, expected_provenance=provenance)
    queries = random_vectors(10, 12, 7)
    np.testing.assert_array_equal(loaded.search(queries, 5)[1], index.search(queries, 5)[1])
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_corrupted_index_file_is_refused(saved):
    path = saved[0]
    blob = bytearray((path / "index.faiss").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (path / "index.faiss").write_bytes(bytes(blob))
    with pytest.raises(ManifestError, match=r"index\.faiss: corrupted file: sha256"):
        read_index(path)


def test_wrong_dimension_is_refused(saved):
    with pytest.raises(ManifestError, match="wrong dimension: the index holds 12-dim vectors, "):
        read_index(saved[0], expected_dim=433)


def test_metric_mismatch_is_refused(saved):
    with pytest.raises(ManifestError, match="metric mismatch: the index answers inner_product"):
        read_index(saved[0], expected_metric="cosine")


def test_metric_mismatch_between_file_and_manifest_is_refused(tmp_path):
    # A file whose index is L2 behind a manifest that claims inner product (hashes consistent).
    path = write_index(MipsIndex(faiss.IndexFlatL2(4), "Flat", 4), tmp_path / "l2")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["faiss_metric"] = "inner_product"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="metric mismatch: the file's index uses l2"):
        read_index(path)


def test_provenance_mismatch_is_refused(saved):
    path, _, provenance = saved
    with pytest.raises(ManifestError, match="provenance mismatch: checkpoint_sha256"):
        read_index(path, expected_provenance={**provenance, "checkpoint_sha256": "00"})


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    index = build_index(random_vectors(100, 4, 8), "Flat")

    def broken_write(*args):
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", broken_write)
    with pytest.raises(OSError, match="disk full"):
        write_index(index, tmp_path / "idx")
    assert list(tmp_path.iterdir()) == []


def test_set_threads_fixes_faiss_and_torch():
    before = (faiss.omp_get_max_threads(), torch.get_num_threads())
    try:
        set_threads(1)
        assert faiss.omp_get_max_threads() == 1 and torch.get_num_threads() == 1
    finally:
        faiss.omp_set_num_threads(before[0])
        torch.set_num_threads(before[1])
