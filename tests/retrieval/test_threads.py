"""faiss and torch each bring an OpenMP runtime: both import orders must work in one process."""

import subprocess
import sys

import pytest

SCRIPT = """
import {first}
import {second}
import numpy as np

faiss.omp_set_num_threads(2)
torch.set_num_threads(2)
items = np.random.default_rng(0).standard_normal((500, 16)).astype(np.float32)
items /= np.linalg.norm(items, axis=1, keepdims=True)  # unit rows: each is its own best match
index = faiss.IndexFlatIP(16)
index.add(items)
_, ids = index.search(items[:5], 3)
assert (ids[:, 0] == np.arange(5)).all(), ids
a = torch.randn(64, 64)
assert torch.allclose(a @ torch.eye(64), a)
# And faiss again after torch has run its own thread pool.
_, ids = index.search(items[5:10], 1)
assert (ids[:, 0] == np.arange(5, 10)).all(), ids
print("ok", faiss.omp_get_max_threads(), torch.get_num_threads())
"""


@pytest.mark.parametrize("first, second", [("faiss", "torch"), ("torch", "faiss")])
def test_search_and_matmul_work_in_either_import_order(first, second):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(first=first, second=second)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok 2 2"
