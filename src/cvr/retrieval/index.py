"""Inner-product indexes over item vectors: faiss index_factory, metric checks, manifests.

An index is described by a faiss factory string (`Flat`, `HNSW32`, `IVF1024,SQ8`, ...) and
always answers inner-product (or cosine) queries:

- directly, with a `METRIC_INNER_PRODUCT` index; index_factory quietly builds an L2 index for some
  types (e.g. `HNSW32,PQ8` in faiss 1.15), so every built index's metric is checked;
- or through the standard reduction to L2 (`ip_to_l2`): items get one extra coordinate
  sqrt(M² − ‖a‖²) with M the largest item norm, queries get 0, and then
  ‖q − a‖² = ‖q‖² + M² − 2 q·a, so the nearest item in L2 is the largest inner product.

On disk an index is a directory written atomically (temp dir + rename):

    index.faiss      faiss.write_index output
    manifest.json    factory, metric, dimension, ntotal, faiss version, provenance, sha256
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from cvr.ops.manifest import ManifestError, atomic_directory, sha256_file, write_json_atomic

FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
MANIFEST_FILE = "manifest.json"
METRICS = ("inner_product", "cosine")
_FAISS_METRIC_NAMES = {faiss.METRIC_INNER_PRODUCT: "inner_product", faiss.METRIC_L2: "l2"}


class IndexMetricError(ValueError):
    """faiss built an index whose metric is not the one asked for."""


def set_threads(threads: int) -> None:
    """Fix the thread count of faiss (OpenMP) and torch together, so timings say what they used."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    faiss.omp_set_num_threads(threads)
    torch.set_num_threads(threads)


def available_threads() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _metric_name(metric_type: int) -> str:
    return _FAISS_METRIC_NAMES.get(int(metric_type), f"faiss metric {int(metric_type)}")


def _sub_indexes(index: faiss.Index) -> list[faiss.Index]:
    """The index and the indexes inside it that compute distances (IVF quantizer, HNSW storage)."""
    index = faiss.downcast_index(index)
    found = [index]
    for name in ("quantizer", "storage", "index"):
        inner = getattr(index, name, None)
        if isinstance(inner, faiss.Index):
            found.extend(_sub_indexes(inner))
    return found


def check_metric(index: faiss.Index, expected: int, factory: str) -> None:
    """Raise IndexMetricError unless the index (and its quantizer/storage) use `expected`."""
    for part in _sub_indexes(index):
        if part.metric_type != expected:
            raise IndexMetricError(
                f"index_factory({factory!r}) built {type(part).__name__} with metric "
                f"{_metric_name(part.metric_type)}, expected {_metric_name(expected)}: faiss "
                f"ignores the metric for this index type; choose another factory string or "
                f"ip_to_l2: true"
            )


def format_factory(factory: str, **params: Any) -> str:
    """Fill `{nlist}`-style fields of a factory string from `params` (unused ones ignored)."""
    try:
        return factory.format(**params)
    except KeyError as exc:
        raise ValueError(f"index factory {factory!r} needs a value for {exc.args[0]!r}") from None


def l2_augment_items(
    vectors: np.ndarray, max_norm: float | None = None
) -> tuple[np.ndarray, float]:
    """Items (n, d) -> (n, d + 1) with last column sqrt(M² − ‖a‖²), and M (float)."""
    sq_norms = np.einsum("nd,nd->n", vectors, vectors, dtype=np.float64)
    if max_norm is None:
        max_norm = float(np.sqrt(sq_norms.max())) if len(vectors) else 0.0
    extra = np.sqrt(np.maximum(max_norm**2 - sq_norms, 0.0)).astype(np.float32)
    return np.concatenate([vectors, extra[:, None]], axis=1), max_norm


def l2_augment_queries(queries: np.ndarray) -> np.ndarray:
    """Queries (n, d) -> (n, d + 1) with a last column of zeros."""
    return np.concatenate([queries, np.zeros((len(queries), 1), np.float32)], axis=1)


def zero_pad(vectors: np.ndarray, columns: int) -> np.ndarray:
    """Append `columns` zero columns: inner products and L2 distances are unchanged."""
    if columns == 0:
        return vectors
    return np.concatenate([vectors, np.zeros((len(vectors), columns), np.float32)], axis=1)


def _normalized(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


@dataclass
class MipsIndex:
    """A faiss index that answers inner-product (or cosine) top-k queries over d-dim vectors."""

    index: faiss.Index
    factory: str
    dim: int
    metric: str = "inner_product"
    ip_to_l2: bool = False
    max_norm: float = 0.0
    pad: int = 0
    search_params: dict[str, Any] = field(default_factory=dict)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def set_search_params(self, **params: Any) -> None:
        """Set faiss search parameters by name (`nprobe`, `efSearch`, ...)."""
        space = faiss.ParameterSpace()
        for name, value in params.items():
            space.set_index_parameter(self.index, name, float(value))
        self.search_params.update(params)

    def prepare_queries(self, queries: np.ndarray) -> np.ndarray:
        """Queries (n, dim) as the faiss index takes them: float32, C-contiguous, transformed."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries: expected float32 (n, {self.dim}), got {queries.shape}")
        if self.metric == "cosine":
            queries = _normalized(queries)
        if self.ip_to_l2:
            queries = l2_augment_queries(queries)
        return zero_pad(queries, self.pad)

    def search_prepared(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw faiss search on `prepare_queries` output: (distances, ids int64 (n, k))."""
        return self.index.search(queries, k)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k: (scores float32 (n, k), ids int64 (n, k)), best first; ids -1 where none.

        Scores are inner products (cosines for metric 'cosine') as the index computes them:
        approximate for compressed indexes (SQ, PQ).
        """
        prepared = self.prepare_queries(queries)
        distances, ids = self.search_prepared(prepared, k)
        if self.ip_to_l2:
            # ‖q − a‖² = ‖q‖² + M² − 2 q·a  =>  q·a = (‖q‖² + M² − ‖q − a‖²) / 2
            sq_norms = np.einsum("nd,nd->n", prepared, prepared)[:, None]
            distances = ((sq_norms + self.max_norm**2 - distances) / 2).astype(np.float32)
        return distances, ids

    def manifest(self, provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "kind": "faiss_index",
            "factory": self.factory,
            "metric": self.metric,
            "faiss_metric": _metric_name(self.index.metric_type),
            "ip_to_l2": self.ip_to_l2,
            "max_norm": self.max_norm,
            "pad": self.pad,
            "dimension": self.dim,
            "index_dimension": int(self.index.d),
            "ntotal": self.ntotal,
            "search_params": dict(self.search_params),
            "faiss_version": faiss.__version__,
            "provenance": dict(provenance or {}),
        }


def build_index(
    vectors: np.ndarray,
    factory: str,
    metric: str = "inner_product",
    ip_to_l2: bool = False,
    train_size: int | None = None,
    build_params: Mapping[str, Any] | None = None,
    pad_to_multiple: int = 1,
    seed: int = 0,
) -> MipsIndex:
    """Build and fill an index over item vectors float32 (n, d).

    `factory` is a faiss index_factory string; `train_size` caps the vectors used to train
    (IVF centroids, PQ/SQ codebooks), drawn at random with `seed`. `build_params` sets faiss
    attributes by (nested) path, e.g. {'hnsw': {'efConstruction': 40}}. `pad_to_multiple`
    zero-pads the stored vectors to a multiple of that many dimensions (PQ needs its
    sub-quantizer count to divide the dimension; the SIMD SQ kernels want a multiple of 8).
    Raises IndexMetricError if faiss builds another metric.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise ValueError(f"vectors: expected a non-empty float32 (n, d) array, got {vectors.shape}")
    dim = vectors.shape[1]
    if metric == "cosine":
        vectors = _normalized(vectors)
    max_norm = 0.0
    if ip_to_l2:
        vectors, max_norm = l2_augment_items(vectors)
    pad = -vectors.shape[1] % pad_to_multiple
    vectors = zero_pad(vectors, pad)
    faiss_metric = faiss.METRIC_L2 if ip_to_l2 else faiss.METRIC_INNER_PRODUCT
    index = faiss.index_factory(vectors.shape[1], factory, faiss_metric)
    check_metric(index, faiss_metric, factory)
    for part in _sub_indexes(index):
        if hasattr(part, "do_polysemous_training"):
            # Reorders PQ codes for Hamming pre-filtering, which we never search with; it costs
            # tens of seconds even on tiny training sets.
            part.do_polysemous_training = False
    for name, value in _flatten(build_params or {}).items():
        _set_build_param(index, name, value, factory)
    if not index.is_trained:
        rng = np.random.default_rng([seed, 17])
        take = len(vectors) if train_size is None else min(train_size, len(vectors))
        sample = vectors[np.sort(rng.choice(len(vectors), take, replace=False))]
        index.train(sample)
    index.add(vectors)
    return MipsIndex(index, factory, dim, metric, ip_to_l2, max_norm, pad)


def _set_build_param(index: faiss.Index, name: str, value: Any, factory: str) -> None:
    """Set a dotted attribute path (e.g. `hnsw.efConstruction`, `pq.cp.niter`) on the first part
    of the index (itself, its quantizer or storage) that has it."""
    *path, attr = name.split(".")
    for part in _sub_indexes(index):
        target = part
        for step in path:
            target = getattr(target, step, None)
        if target is not None and hasattr(target, attr):
            setattr(target, attr, type(getattr(target, attr))(value))
            return
    raise ValueError(f"index {factory!r} has no build parameter {name!r}")


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'hnsw': {'efConstruction': 40}} -> {'hnsw.efConstruction': 40}."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# --- persistence ---------------------------------------------------------------------------------
def write_index(
    mips_index: MipsIndex,
    path: str | os.PathLike,
    provenance: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the index and its manifest into directory `path` atomically; returns `path`.

    `provenance` records what the vectors were made from (e.g. checkpoint_sha256,
    data_fingerprint); `read_index` can require those values back.
    """
    path = Path(path)
    with atomic_directory(path, overwrite=overwrite) as tmp:
        faiss.write_index(mips_index.index, str(tmp / INDEX_FILE))
        manifest = mips_index.manifest(provenance)
        manifest["created_unix"] = time.time()
        manifest["files"] = {INDEX_FILE: sha256_file(tmp / INDEX_FILE)}
        write_json_atomic(tmp / MANIFEST_FILE, manifest)
    return path


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    manifest_path = Path(path) / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ManifestError(f"{manifest_path}: missing; {path} is not a saved index directory")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION or manifest.get("kind") != "faiss_index":
        raise ManifestError(f"{manifest_path}: not a version {FORMAT_VERSION} faiss index manifest")
    return manifest


def read_index(
    path: str | os.PathLike,
    expected_dim: int | None = None,
    expected_metric: str | None = None,
    expected_provenance: Mapping[str, Any] | None = None,
) -> MipsIndex:
    """Load an index directory, refusing it (ManifestError) when anything does not match.

    Checked in order: the index file's sha256 against the manifest (corruption), the manifest's
    dimension against `expected_dim`, its metric against `expected_metric`, each key of
    `expected_provenance`, then the loaded index's own dimension, metric and ntotal against the
    manifest.
    """
    path = Path(path)
    manifest = read_manifest(path)
    index_path = path / INDEX_FILE
    if not index_path.is_file():
        raise ManifestError(f"{index_path}: missing (listed in {MANIFEST_FILE})")
    actual_sha = sha256_file(index_path)
    if actual_sha != manifest["files"][INDEX_FILE]:
        raise ManifestError(
            f"{index_path}: corrupted file: sha256 {actual_sha[:12]}… differs from the manifest's "
            f"{manifest['files'][INDEX_FILE][:12]}…"
        )
    if expected_dim is not None and manifest["dimension"] != expected_dim:
        raise ManifestError(
            f"{path}: wrong dimension: the index holds {manifest['dimension']}-dim vectors, "
            f"expected {expected_dim}"
        )
    if expected_metric is not None and manifest["metric"] != expected_metric:
        raise ManifestError(
            f"{path}: metric mismatch: the index answers {manifest['metric']}, "
            f"expected {expected_metric}"
        )
    recorded = manifest.get("provenance", {})
    for key, value in (expected_provenance or {}).items():
        if recorded.get(key) != value:
            raise ManifestError(
                f"{path}: provenance mismatch: {key} is {recorded.get(key)!r}, expected {value!r}"
            )
    index = faiss.read_index(str(index_path))
    _check_loaded(path, index, manifest)
    mips_index = MipsIndex(
        index,
        manifest["factory"],
        manifest["dimension"],
        manifest["metric"],
        manifest["ip_to_l2"],
        manifest["max_norm"],
        manifest["pad"],
    )
    if manifest.get("search_params"):
        mips_index.set_search_params(**manifest["search_params"])
    return mips_index


def _check_loaded(path: Path, index: faiss.Index, manifest: Mapping[str, Any]) -> None:
    """The file's index must be what the manifest says (guards a manifest edited by hand)."""
    if index.d != manifest["index_dimension"]:
        raise ManifestError(
            f"{path / INDEX_FILE}: wrong dimension: the file holds {index.d}-dim vectors, the "
            f"manifest says {manifest['index_dimension']}"
        )
    actual = _metric_name(index.metric_type)
    if actual != manifest["faiss_metric"]:
        raise ManifestError(
            f"{path / INDEX_FILE}: metric mismatch: the file's index uses {actual}, the manifest "
            f"says {manifest['faiss_metric']}"
        )
    if index.ntotal != manifest["ntotal"]:
        raise ManifestError(
            f"{path / INDEX_FILE}: holds {index.ntotal} vectors, the manifest says "
            f"{manifest['ntotal']}"
        )


def index_bytes(mips_index: MipsIndex) -> int:
    """Size of the index as faiss serializes it."""
    return int(faiss.serialize_index(mips_index.index).nbytes)
