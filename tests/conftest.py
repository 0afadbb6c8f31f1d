"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data samples folder `<repo>/../shared/data` (see its NOTICE.md); skip if absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not found: real-data samples absent")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Test tensors are tiny: extra intra-op threads only contend on a 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def migrated_mlflow_db(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, created and migrated once per session by cvr's own
    `ensure_store` (the same file a first run on a new output root makes)."""
    from cvr.tracking.store import ensure_store

    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    ensure_store(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def empty_mlflow_store(migrated_mlflow_db: Path) -> Callable[[Path], str]:
    """`empty_mlflow_store(output_root)` puts a copy of the migrated empty store at
    `output_root/mlflow.db` (the default `logger.tracking_uri`) and returns its URI.

    Creating a store (tables + alembic migrations) costs each new output root 2-4 s on 2 cores;
    tests about something else start from the copy. Tests of creating the store itself
    (test_concurrent_store, train.py on a new root in test_train_entry) do not use it.
    """

    def place(output_root: Path) -> str:
        output_root.mkdir(parents=True, exist_ok=True)
        db = output_root / "mlflow.db"
        shutil.copyfile(migrated_mlflow_db, db)
        return f"sqlite:///{db}"

    return place
