"""data.engine=dask builds the same store as the local engine, on a real 2-worker LocalCluster."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cvr.data.build import build_file_store
from cvr.data.store import EncodedStore

pytest.importorskip("dask.distributed")

FIELDS = [
    {"name": "n1", "kind": "numeric"},
    {"name": "q1", "kind": "numeric"},
    {"name": "c1"},
    {"name": "c2"},
]


def _write(path, rows, seed):
    rng = np.random.default_rng(seed)
    lines = ["label,n1,q1,c1,c2,t"]
    for _ in range(rows):
        n1 = "" if rng.random() < 0.1 else str(int(rng.lognormal(1, 2)))
        lines.append(
            f"{int(rng.random() < 0.3)},{n1},{rng.random():.4f},"
            f"u{int(rng.zipf(1.3)) % 500},v{int(rng.integers(40))},{int(rng.integers(100))}"
        )
    path.write_text("\n".join(lines) + "\n")


def _build(tmp_path, engine, split, **extra):
    files = sorted(str(p) for p in tmp_path.glob("part_*.csv"))
    return build_file_store(
        "d",
        "csv",
        path=files,
        schema={"fields": FIELDS, "labels": ["click"], "split": split},
        preprocess={"numeric_rule": {"q1": "quantile"}, "min_count": 2},
        label_columns={"click": "label"},
        cache_root=tmp_path / engine,
        chunk_rows=700,
        engine=engine,
        **extra,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "split",
    [
        {"method": "random", "val": 0.1, "test": 0.2, "seed": 3},
        {"method": "time", "time_column": "t", "val": 0.1, "test": 0.1},
    ],
)
def test_dask_store_equals_local_store(tmp_path, split):
    for i in range(3):
        _write(tmp_path / f"part_{i}.csv", 3000 + 500 * i, seed=i)
    local = _build(tmp_path, "local", split)
    # Blocks of ~20 kB: every file is cut into several byte ranges, so line numbers, headers
    # and the order of blocks all matter.
    dask = _build(
        tmp_path,
        "dask",
        split,
        dask={"workers": 2, "processes": False, "block_bytes": 20_000},
    )
    assert dask.fingerprint == local.fingerprint
    print("fingerprint", local.fingerprint)
    a = EncodedStore.open(local.path)
    b = EncodedStore.open(dask.path)
    assert a.meta["files"] == b.meta["files"]  # arrays and preprocessor.json, byte for byte
    assert json.loads((a.path / "preprocessor.json").read_text()) == json.loads(
        (b.path / "preprocessor.json").read_text()
    )
    assert a.meta["lines"] == b.meta["lines"]
    assert sum(a.rows(s) for s in ("train", "val", "test")) == 3 * 3000 + 1500


@pytest.mark.slow
def test_dask_store_equals_local_store_across_worker_processes(tmp_path):
    """Worker processes: the plan, blocks and fitted preprocessor travel pickled."""
    split = {"method": "random", "val": 0.1, "test": 0.2, "seed": 3}
    for i in range(2):
        _write(tmp_path / f"part_{i}.csv", 2000, seed=i)
    local = _build(tmp_path, "local", split)
    dask = _build(
        tmp_path, "dask", split, dask={"workers": 2, "processes": True, "block_bytes": 20_000}
    )
    assert dask.fingerprint == local.fingerprint
    assert EncodedStore.open(dask.path).meta["files"] == EncodedStore.open(local.path).meta["files"]
