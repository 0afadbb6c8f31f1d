"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch

from tests.helpers import TINY_DATA, script_in_background

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


FAST_SWEEP = [
    "trainer.max_epochs=1",
    "datamodule.batch_size=512",
    "trainer.enable_progress_bar=false",
    "print_table=false",
]
#: The tiny sweeps several modules read (tests/e2e/test_sweep.py, tests/tracking/test_notebook.py).
TINY_SWEEPS = {
    "two_by_two": ["model=fm,ffm", "embedding.dim=2,4", *TINY_DATA, *FAST_SWEEP],
    "one_fails": [
        "model=fm",
        "embedding.dim=0,2",
        *TINY_DATA,
        *FAST_SWEEP,
        # Only run states and messages are checked of this one: no profile, no bundle.
        "callbacks.efficiency_profile.enabled=false",
        "export_bundle=false",
    ],
}


@pytest.fixture(scope="session")
def tiny_sweeps(tmp_path_factory, empty_mlflow_store) -> Iterator[Callable[[str], tuple]]:
    """`train.py -m` of each of TINY_SWEEPS, all started at once, each in its own output root
    (on 2 cores one interpreter's start-up runs beside the other's); `tiny_sweeps(name)` waits
    for that one and returns (returncode, stdout, stderr, output root). Read them, never write."""
    folders = {name: tmp_path_factory.mktemp(name) for name in TINY_SWEEPS}
    with ExitStack() as running:
        procs = {}
        for name, args in TINY_SWEEPS.items():
            root = folders[name] / "out"
            empty_mlflow_store(root)
            cmd = ["train.py", "-m", f"paths.output_root={root}", *args]
            out, err = folders[name] / "stdout.txt", folders[name] / "stderr.txt"
            procs[name] = running.enter_context(script_in_background(cmd, out, err))

        def finished(name: str) -> tuple:
            procs[name].wait(timeout=600)
            folder = folders[name]
            out, err = ((folder / f).read_text() for f in ("stdout.txt", "stderr.txt"))
            return procs[name].returncode, out, err, folder / "out"

        yield finished
