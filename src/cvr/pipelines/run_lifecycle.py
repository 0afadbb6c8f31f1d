"""Honest run states: who owns a run folder, what a signal means, what MLflow is told.

- `owner_record()`: the pid, host and start time a run writes into `run_info.json`, so a later
  `resume=true` can tell a stale run (its process gone) from one still running.
- `refuse_if_alive(info, run_dir)`: resume must not take over a run whose process is alive.
- `signals_as_exceptions()`: SIGTERM/SIGINT raise `RunKilled` (Lightning otherwise notes a
  SIGTERM and trains on), so the `except` that ends the MLflow run sees them.
- `final_status(exc)`: KILLED for a signal or an interrupt, FAILED for an error. FINISHED is set
  by the pipeline only after everything the run promised exists (`missing_outputs`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cvr.ops.temporaries import process_alive

log = logging.getLogger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunKilled(BaseException):
    """The process received SIGTERM or SIGINT; a BaseException so that no handler swallows it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


class RunInUse(RuntimeError):
    """resume=true found the run's process still alive."""


def owner_record() -> dict[str, Any]:
    """{pid, host, started_unix} of this process, for run_info.json."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started_unix": time.time()}


def refuse_if_alive(info: Mapping[str, Any], run_dir: Path) -> None:
    """Raise RunInUse if the run of `info` (its run_info.json) is still running here.

    A run recorded on another host cannot be probed; it is taken over with a warning.
    """
    pid, host = info.get("pid"), info.get("host")
    if not isinstance(pid, int) or pid == os.getpid():
        return
    if host != socket.gethostname():
        log.warning("resume: %s was run on host %s; cannot check that it stopped", run_dir, host)
        return
    if process_alive(pid):
        raise RunInUse(
            f"resume: {run_dir} is still running (pid {pid} on {host}); stop it first, or "
            "start a new run with resume=false"
        )


def final_status(exc: BaseException) -> str:
    """The MLflow status of a run ended by `exc`: KILLED (signal, Ctrl-C, exit) or FAILED."""
    if isinstance(exc, RunKilled | KeyboardInterrupt | SystemExit):
        return "KILLED"
    return "FAILED"


def missing_outputs(paths: list[Path]) -> list[Path]:
    """The promised outputs that do not exist."""
    return [p for p in paths if not p.exists()]


@contextlib.contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """Within the block SIGTERM and SIGINT raise RunKilled; previous handlers come back after.

    Only the main thread can set handlers; elsewhere the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        for s in _SIGNALS:  # a second signal must not interrupt recording the first
            signal.signal(s, signal.SIG_IGN)
        raise RunKilled(signum)

    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    for s in _SIGNALS:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def taker() -> str:
    """`pid N on HOST` of this process: who took a resumed run over (its `resumed_by` tag)."""
    return f"pid {os.getpid()} on {socket.gethostname()}"
