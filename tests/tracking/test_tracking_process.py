"""The tracking process (cvr.tracking.process) behind a Tracker, on a real SQLite MLflow store:
calls land in order, asynchronous errors surface at the next checked call, close drains, end of
file (the training process killed) ends it, its death fails the caller with one line; and the
in-process LocalTracker keeps the same contract."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from cvr.pipelines.errors import one_line
from cvr.tracking.tracker import (
    LocalTracker,
    ProcessTracker,
    TrackingCallError,
    TrackingProcessError,
    will_log,
)
from tests.helpers import REPO


@pytest.fixture(scope="module")
def process_tracker():
    tracker = ProcessTracker()
    yield tracker
    tracker.close()


@pytest.fixture(params=["process", "local"])
def tracker(request, process_tracker):
    return process_tracker if request.param == "process" else LocalTracker()


@pytest.fixture
def store_root(tmp_path, empty_mlflow_store):
    """tmp_path with a migrated empty store (creating one costs each test 2-4 s)."""
    empty_mlflow_store(tmp_path)
    return tmp_path


def _new_run(tracker, tmp_path, name="run"):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = tracker.ask("start_run", uri, "tracker-test", run_name=name, tags={"who": "test"})
    return uri, run_id


def test_calls_land_in_order_and_end_run_waits_for_them(tracker, store_root):
    uri, run_id = _new_run(tracker, store_root)
    tracker.call("log_config", uri, run_id, {"model": {"dim": 4}, "paths": {"root": "/x"}})
    tracker.call("set_tags", uri, run_id, {"backend": "fused"})
    for epoch in range(30):  # queued faster than SQLite commits: merged into fewer writes
        tracker.call("log_metric_points", uri, run_id, [("val/auc", 0.5 + epoch / 100, 0, epoch)])
    tracker.call("log_metrics", uri, run_id, {"test/auc": 0.7512345678})
    tracker.ask("end_run", uri, run_id, "FINISHED")

    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.dim"] == "4"
    assert run.data.tags["path.paths.root"] == "/x" and run.data.tags["backend"] == "fused"
    assert run.data.metrics["test/auc"] == 0.751235  # display_value: 6 significant digits
    history = MlflowClient(uri).get_metric_history(run_id, "val/auc")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(30))


def test_an_async_error_fails_the_next_checked_call_and_the_run_can_end_failed(tracker, store_root):
    uri, run_id = _new_run(tracker, store_root)
    tracker.call("set_tags", uri, "no-such-run", {"a": "b"})  # fails in the tracking process
    tracker.call("set_tags", uri, run_id, {"after": "yes"})  # later calls still run
    with pytest.raises(TrackingCallError, match=r"set_tags: .*no-such-run"):
        tracker.ask("end_run", uri, run_id, "FINISHED")
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "RUNNING"  # FINISHED was not recorded
    assert client.get_run(run_id).data.tags["after"] == "yes"
    tracker.ask("end_run", uri, run_id, "FAILED", check=False)  # the except path's call
    assert client.get_run(run_id).info.status == "FAILED"
    tracker.drain()  # the error was reported once


def test_only_registered_calls_run(tracker):
    tracker.call("os.remove", "/etc/passwd")
    with pytest.raises(TrackingCallError, match=r"'os.remove' is not a tracking call"):
        tracker.drain()
    with pytest.raises(TrackingCallError, match=r"MLflow call __import__ failed"):
        tracker.ask("__import__", "os")


def test_a_bad_store_is_the_stores_one_line_error(tracker, tmp_path):
    from cvr.tracking.store import StoreError

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot create the MLflow store folder") as raised:
        tracker.ask("start_run", f"sqlite:///{blocker}/sub/mlflow.db", "x", run_name="r")
    assert one_line(raised.value).startswith("error: ")


def test_a_store_error_of_an_async_call_keeps_its_one_line_and_a_new_run_starts_clean(
    tracker, tmp_path
):
    from cvr.tracking.store import StoreError

    blocker = tmp_path / "file"
    blocker.write_text("")
    bad = f"sqlite:///{blocker}/sub/mlflow.db"
    tracker.call("ensure_store", bad)  # what train() sends first, before it needs the run
    with pytest.raises(StoreError, match=r"^\S+file/sub: cannot create the MLflow store folder"):
        tracker.ask("start_run", bad, "x", run_name="r")
    tracker.call("ensure_store", bad)  # a run that then failed before asking anything
    tracker.call("begin_run")  # the next run: that error was not its own
    tracker.drain()


def test_close_drains_the_queue(store_root):
    tracker = ProcessTracker()
    uri, run_id = _new_run(tracker, store_root)
    points = [("train/loss", 1.0 / (i + 1), 0, i) for i in range(200)]
    for i in range(0, 200, 10):
        tracker.call("log_metric_points", uri, run_id, points[i : i + 10])
    tracker.call("end_run", uri, run_id, "FINISHED")
    tracker.close()  # returns only after the process ran everything and exited
    assert tracker.process.returncode == 0
    client = MlflowClient(uri)
    assert len(client.get_metric_history(run_id, "train/loss")) == 200
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_dead_tracking_process_fails_the_run_with_one_line_naming_it(tmp_path):
    tracker = ProcessTracker()
    pid = tracker.process.pid
    tracker.process.kill()
    tracker.process.wait()
    with pytest.raises(TrackingProcessError) as raised:
        for _ in range(100):  # the first writes may still fit in the pipe's buffer
            tracker.call("set_tags", "sqlite:///x.db", "run", {"a": "b"})
        tracker.ask("ping")
    message = one_line(raised.value)
    assert message.startswith(f"error: tracking process (pid {pid}, python -m cvr.tracking")
    assert "exited with code -9" in message and "\n" not in message


#: A training process that starts a run, logs a point, prints what the test needs, then hangs.
_TRAINING_PROCESS = """
import json, sys, time
from cvr.tracking.tracker import ProcessTracker
tracker = ProcessTracker()
uri = sys.argv[1]
run_id = tracker.ask("start_run", uri, "killed", run_name="killed")
tracker.call("log_metric_points", uri, run_id, [("val/auc", 0.6, 0, 0)])
tracker.ask("ping")
print(json.dumps({"run_id": run_id, "tracker_pid": tracker.process.pid}), flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_the_tracking_process_exits_when_the_training_process_is_killed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trainer = subprocess.Popen(
        [sys.executable, "-c", _TRAINING_PROCESS, uri],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        started = json.loads(trainer.stdout.readline())
    finally:
        trainer.send_signal(signal.SIGKILL)
        trainer.wait(timeout=60)
    pid = started["tracker_pid"]
    deadline = time.time() + 60
    while time.time() < deadline and _alive(pid):
        time.sleep(0.1)
    assert not _alive(pid), f"tracking process {pid} outlived its training process"
    run = MlflowClient(uri).get_run(started["run_id"])
    assert run.info.status == "RUNNING"  # left for resume to take over, never marked for it
    assert len(MlflowClient(uri).get_metric_history(started["run_id"], "val/auc")) == 1


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, exited but not yet reaped by init, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        (["data=criteo"], {}, True),
        (["logger=none"], {}, False),
        (["logger.enabled=false"], {}, False),
        (["logger.tracking_process=false"], {}, False),
        ([], {"LOCAL_RANK": "1"}, False),  # a DDP process the launcher started
        ([], {"LOCAL_RANK": "0"}, True),
    ],
)
def test_which_commands_start_a_tracking_process(argv, environ, expected):
    assert will_log(argv, environ) is expected
