"""Several runs starting at once on a fresh output root share one SQLite MLflow store safely."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import REPO

# One training job's use of the store: create its run (the first touch of a new store), log,
# end. Every process waits for the `go` file so that all of them open the new store together.
WORKER = """
import sys, time
from pathlib import Path
go, uri, i = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
from cvr.tracking import mlflow_runs
while not go.exists():
    time.sleep(0.01)
run_id = mlflow_runs.start_run(uri, "cvr", f"job{i}")
mlflow_runs.log_metrics(uri, run_id, {"val/auc": 0.5}, step=0)
mlflow_runs.end_run(uri, run_id, "FINISHED")
print("done", run_id)
"""


@pytest.mark.slow
def test_four_processes_starting_together_on_a_fresh_root_all_finish(tmp_path):
    db = tmp_path / "outputs" / "mlflow.db"
    uri = f"sqlite:///{db}"
    go = tmp_path / "go"
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(go), uri, str(i)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    time.sleep(1.0)  # let every interpreter reach the wait (imports); not an assertion on time
    go.touch()
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err[-3000:]
        assert out.startswith("done")
    runs = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("cvr").experiment_id]
    )
    assert sorted(r.info.run_name for r in runs) == [f"job{i}" for i in range(4)]
    assert all(r.info.status == "FINISHED" for r in runs)
    tables = {row[0] for row in sqlite3.connect(db).execute("select name from sqlite_master")}
    assert not [t for t in tables if t.startswith("_alembic_tmp")]
