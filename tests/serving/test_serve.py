"""The README's `mlflow models serve` command works as written: start it, two requests, stop it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from cvr.serving.pyfunc import log_pyfunc_model
from cvr.tracking import mlflow_runs
from cvr.tracking.training_run import logged_model_id
from tests.helpers import REPO
from tests.serving.test_bundle import make_file_bundle


def _readme_serve_command() -> str:
    lines = [ln for ln in (REPO / "README.md").read_text().splitlines() if "models serve" in ln]
    assert len(lines) == 1, lines
    return lines[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(port: int, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _wait_ready(port: int, proc: subprocess.Popen, log_path) -> None:
    for _ in range(600):  # polls, not a timing assertion
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"server never answered /ping: {log_path.read_text()[-3000:]}")


@pytest.mark.slow
def test_readme_serve_command_scores_rows_and_returns_clean_errors(tmp_path):
    # The README's command runs from the project root: give it one (.venv + outputs/mlflow.db).
    root = tmp_path / "project"
    (root / "outputs").mkdir(parents=True)
    (root / ".venv").symlink_to(REPO / ".venv")
    bundle, _, _ = make_file_bundle(tmp_path)
    uri = f"sqlite:///{root / 'outputs' / 'mlflow.db'}"
    run_id = mlflow_runs.start_run(uri, "cvr", "served", artifact_root=str(root / "mlartifacts"))
    log_pyfunc_model(uri, run_id, bundle)
    model_id = logged_model_id(uri, run_id, "model")
    assert model_id, "the logged model has no id to serve by"
    port = _free_port()
    command = _readme_serve_command().replace("<run_id>", run_id).replace("<model_id>", model_id)
    command = re.sub(r"--port \d+", f"--port {port}", command)
    # A PATH without the venv, as a user's shell has it: the command must still find uvicorn.
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "MLFLOW_TRACKING_URI")}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            ["bash", "-c", command],
            cwd=root,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_ready(port, proc, log_path)
        status, body = _post(port, {"dataframe_records": [{"colour": "red"}, {"site": "s1"}]})
        assert status == 200, body
        assert len(body["predictions"]) == 2
        status, body = _post(port, {"dataframe_records": [{"price": "cheap"}]})
        assert status == 400
        assert "field 'price'" in body["message"]
        assert "stack_trace" not in body
        text = json.dumps(body)
        assert str(REPO) not in text and ".py" not in text, text
    finally:
        if proc.poll() is None:  # an early exit was already reported by _wait_ready
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
