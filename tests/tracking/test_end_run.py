"""Recording a run's end survives a SQLite write lock held by this process's own garbage."""

import gc
import sqlite3

import pytest
from mlflow.tracking import MlflowClient

from cvr.tracking import mlflow_runs


@pytest.mark.slow
def test_end_run_is_recorded_after_garbage_holding_the_write_lock_is_collected(tmp_path):
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    run_id = mlflow_runs.start_run(uri, "end-run", "held-lock")

    # A connection in the middle of a write, reachable only from a garbage cycle: what a signal
    # raised inside an MLflow write can leave behind.
    holder = {"conn": sqlite3.connect(db, isolation_level=None)}
    holder["conn"].execute("BEGIN IMMEDIATE")
    holder["self"] = holder
    gc.disable()  # nothing may collect it before end_run's own retry does
    try:
        del holder
        mlflow_runs.end_run(uri, run_id, "KILLED")  # waits out SQLite's busy timeout once
    finally:
        gc.enable()
    assert MlflowClient(uri).get_run(run_id).info.status == "KILLED"
