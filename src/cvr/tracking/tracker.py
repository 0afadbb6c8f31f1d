"""The training process's side of MLflow: calls by name, run by a tracking process.

`import mlflow` (~2 s: its GenAI judges pull in fastapi, pandas, ...) and opening its SQLite
store cost more than the rest of a tiny run's tracking, so the training process never does
either. `train.py` calls `prestart(argv)` before it imports torch: a tracking process
(`python -m cvr.tracking.process`) imports mlflow and matplotlib on the other core meanwhile.
The pipeline then talks to it through a `Tracker`:

- `tracker.call(name, *args)`: an asynchronous call (queued, fire-and-forget) of the call
  `name` of the tracking process's registry (`cvr.tracking.process.calls()`), with plain-data
  arguments. An error in one is kept there and raised by the next checked `ask` or `drain`.
- `tracker.ask(name, *args, check=True)`: a synchronous call; returns its value. `check=False`
  runs it even after an earlier asynchronous call failed (ending a failed run as FAILED), and
  logs those earlier errors as warnings instead of raising them.
- Calls run in the order they were made, so an `ask` returns once everything before it is
  committed: `end_run(..., "FINISHED")` is recorded only after the run's curves, plots and
  summary are.

One tracking process serves every run of the training process (a sweep's jobs, a test session
calling `train()`), and exits when the training process closes its pipe or dies: SIGKILL of the
training process leaves its run RUNNING, as before, for `resume` to take over. The tracking
process dying fails the run with `TrackingProcessError`, one line naming it.

`logger.tracking_process=false` runs the same registry in this process instead (`LocalTracker`),
importing mlflow here: the path every run took before.

Only the standard library is imported here: `train.py` imports this module before torch.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

#: Message kinds on the pipe (the tracking process reads the same constants).
ASYNC, CHECKED, UNCHECKED, EXIT = "async", "checked", "unchecked", "exit"
#: Arguments of train.py that turn MLflow off: no tracking process is started for them.
_NO_LOGGER_ARGS = ("logger=none", "logger.enabled=false", "logger.enabled=False")
#: The argument that keeps tracking in the training process (`LocalTracker`).
_LOCAL_ARG = "logger.tracking_process=f"
#: Set by a launcher for every process but the main one (as cvr.backends.distributed reads
#: them; that module imports torch, which this one must not).
_RANK_VARIABLES = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK")
#: Seconds to wait for the tracking process to exit after its pipe is closed.
EXIT_WAIT_S = 30.0


class TrackingProcessError(RuntimeError):
    """The tracking process died or could not start; the message names it."""


class TrackingCallError(RuntimeError):
    """A call of the tracking process failed; the message names the call and the error."""


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGTERM/SIGINT wait until a message is written whole: a RunKilled raised between the
    header and the body of a message would leave the pipe unreadable for the end_run after it."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = {signal.SIGTERM, signal.SIGINT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _rebuild_error(value: tuple[str, str, str]) -> Exception:
    """The exception a failed call raises here: the store's own one-line errors keep their type
    (train.py prints them as `error: ...`); anything else names the call that failed."""
    kind, message, name = value
    if kind == "StoreError":
        from cvr.tracking.store import StoreError

        return StoreError(message)
    if kind == "TrackingCallError":  # earlier asynchronous calls, each `name: Type: message`
        return TrackingCallError(f"MLflow call failed in the tracking process: {message}")
    return TrackingCallError(f"MLflow call {name} failed in the tracking process: {message}")


class Tracker:
    """What the pipeline calls (see the module docstring); subclasses carry the calls."""

    def call(self, name: str, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError

    def ask(self, name: str, *args: Any, check: bool = True, **kwargs: Any) -> Any:
        raise NotImplementedError

    def drain(self) -> None:
        """Wait until every call made so far is done; raise the first asynchronous error."""
        self.ask("ping")

    def close(self) -> None:
        """Drain, then release the tracker (the tracking process exits)."""
        raise NotImplementedError


class LocalTracker(Tracker):
    """The registry run in this process, mlflow imported here (`logger.tracking_process=false`).

    Asynchronous calls still defer their errors to the next checked `ask`, as the process does.
    """

    def __init__(self) -> None:
        from cvr.tracking.process import Dispatcher

        self._dispatcher = Dispatcher()

    def call(self, name: str, *args: Any, **kwargs: Any) -> None:
        self._dispatcher.run_async(name, args, kwargs)

    def ask(self, name: str, *args: Any, check: bool = True, **kwargs: Any) -> Any:
        ok, value, earlier = self._dispatcher.run_sync(name, args, kwargs, check)
        return _result(ok, value, earlier)

    def close(self) -> None:
        self.drain()


def _result(ok: bool, value: Any, earlier: list[str]) -> Any:
    for error in earlier:  # an unchecked call ran after these failed: the run is failing anyway
        log.warning("an earlier MLflow call failed in the tracking process: %s", error)
    if ok:
        return value
    raise _rebuild_error(value)


class ProcessTracker(Tracker):
    """A tracking process (`python -m cvr.tracking.process`) and the two pipes to it."""

    def __init__(self) -> None:
        from multiprocessing.connection import Connection

        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        command = [sys.executable, "-m", "cvr.tracking.process", str(request_read)]
        command.append(str(reply_write))
        try:
            # Its own session: a Ctrl-C in the terminal reaches the training process only, which
            # then records KILLED through this one.
            self.process = subprocess.Popen(
                command, pass_fds=(request_read, reply_write), start_new_session=True
            )
        except OSError as exc:
            raise TrackingProcessError(f"cannot start the tracking process ({exc})") from None
        finally:
            os.close(request_read)
            os.close(reply_write)
        self._requests = Connection(request_write, readable=False)
        self._replies = Connection(reply_read, writable=False)
        self._seq = 0
        self.claimed = False

    def __repr__(self) -> str:
        return f"tracking process (pid {self.process.pid}, python -m cvr.tracking.process)"

    def alive(self) -> bool:
        return self.process.poll() is None and not self._requests.closed

    def _died(self) -> TrackingProcessError:
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        how = f"exited with code {code}" if code is not None else "stopped answering"
        self._close_pipes()
        return TrackingProcessError(
            f"{self!r} {how}; the run's MLflow record is incomplete (logger=none trains "
            "without MLflow)"
        )

    def _send(self, message: tuple) -> None:
        try:
            with _signals_held():
                self._requests.send(message)
        except (OSError, ValueError):  # BrokenPipeError: it is gone; ValueError: pipe closed
            raise self._died() from None

    def call(self, name: str, *args: Any, **kwargs: Any) -> None:
        self._seq += 1
        self._send((self._seq, ASYNC, name, args, kwargs))

    def ask(self, name: str, *args: Any, check: bool = True, **kwargs: Any) -> Any:
        self._seq += 1
        seq = self._seq
        self._send((seq, CHECKED if check else UNCHECKED, name, args, kwargs))
        while True:
            try:
                answered, ok, value, earlier = self._replies.recv()
            except (EOFError, OSError):
                raise self._died() from None
            # A reply to an ask that a signal interrupted while it waited: not this one's.
            if answered == seq:
                return _result(ok, value, earlier)

    def close(self) -> None:
        if not self.alive():
            return
        try:
            self.drain()
        finally:
            self.stop()

    def stop(self) -> None:
        """Tell the process to exit (it finishes what it was sent first) and reap it."""
        if self._requests.closed:
            return
        try:
            self._requests.send((0, EXIT, "", (), {}))
        except OSError:
            pass
        self._close_pipes()
        try:
            self.process.wait(timeout=EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def discard(self) -> None:
        """End a tracking process that was never used (it has no run to finish)."""
        self._close_pipes()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def _close_pipes(self) -> None:
        for conn in (self._requests, self._replies):
            if not conn.closed:
                conn.close()


#: The tracking process train.py started before its imports, until a run claims it.
_PRESTARTED: ProcessTracker | None = None
#: The tracking process every run of this process uses, once one has claimed it.
_SHARED: ProcessTracker | None = None


def will_log(argv: list[str], environ: Mapping[str, str] = os.environ) -> bool:
    """Whether a train.py command line may log to MLflow: not for `logger=none` (or
    `logger.enabled=false`, `logger.tracking_process=false`), nor in a launched DDP rank > 0."""
    if any(a in _NO_LOGGER_ARGS or a.lower().startswith(_LOCAL_ARG) for a in argv):
        return False
    return all(int(environ.get(name) or 0) == 0 for name in _RANK_VARIABLES)


def prestart(argv: list[str]) -> None:
    """Start the tracking process now if this command may log to MLflow (see `will_log`); the
    first run that logs claims it, and it is ended at exit if none does."""
    global _PRESTARTED
    if _PRESTARTED is None and _SHARED is None and will_log(argv):
        try:
            _PRESTARTED = ProcessTracker()
        except TrackingProcessError as exc:  # the run will try again, and fail there if it must
            log.warning("%s", exc)


def discard_prestarted() -> None:
    """The run does not log to MLflow: end the tracking process started for it, if any."""
    global _PRESTARTED
    if _PRESTARTED is not None:
        _PRESTARTED.discard()
        _PRESTARTED = None


def tracker_for(logger_cfg: Mapping[str, Any]) -> Tracker:
    """The tracker of a run with this `logger` config: the shared tracking process (the one
    train.py prestarted, else a new one), or a LocalTracker for `tracking_process: false`."""
    global _PRESTARTED, _SHARED
    if not logger_cfg.get("tracking_process", True):
        discard_prestarted()
        return LocalTracker()
    if _SHARED is not None and not _SHARED.alive():
        _SHARED.discard()
        _SHARED = None
    if _SHARED is None:
        _SHARED, _PRESTARTED = _PRESTARTED or ProcessTracker(), None
    return _SHARED


@atexit.register
def _end_at_exit() -> None:
    discard_prestarted()
    if _SHARED is not None:
        _SHARED.stop()  # every run already drained it when it ended
