"""The tracking process: runs a training process's MLflow calls, by name, in order.

    python -m cvr.tracking.process REQUEST_FD REPLY_FD      (started by cvr.tracking.tracker)

It imports mlflow, its SQLAlchemy store and matplotlib first (while the training process imports
torch), then reads `(seq, kind, name, args, kwargs)` messages from REQUEST_FD until EXIT or end
of file, and answers the synchronous ones on REPLY_FD with `(seq, ok, value, earlier_errors)`.
`name` is looked up in `calls()`, an allow-list of this package's functions; nothing read from
the pipe chooses any other callable, and arguments are plain data (the pipe carries pickles,
between this package's two processes only).

End of file (the training process exited or was killed) ends this process after the calls
already sent: a run is never marked here on the training process's behalf, so a SIGKILLed
run stays RUNNING for `resume` to take over, as it did with MLflow in the training process.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from cvr.tracking.tracker import ASYNC, CHECKED, EXIT

log = logging.getLogger(__name__)

#: Longest error message sent back (an error's first line is what a user needs).
MAX_ERROR_CHARS = 500
#: The first call of every run: errors of earlier asynchronous calls are not this run's.
BEGIN_RUN = "begin_run"
#: Where set, the process writes its seconds per call (and its warm-up) there as JSON on exit
#: (scripts/startup_phases.py).
SECONDS_FILE_ENV = "CVR_TRACKING_SECONDS"


def _finish_run(
    tracking_uri: str,
    run_id: str,
    metrics: dict[str, float],
    bundle_dir: str | None = None,
    plots_logged: bool = False,
) -> str | None:
    from cvr.tracking import training_run

    bundle = Path(bundle_dir) if bundle_dir else None
    return training_run.finish_run(tracking_uri, run_id, metrics, bundle, plots_logged)


@cache
def calls() -> dict[str, Callable[..., Any]]:
    """The allow-list: every call a training process may make, by name."""
    from cvr.tracking import mlflow_runs, store, training_run

    return {
        "ping": lambda: None,
        BEGIN_RUN: lambda: None,  # handled by the Dispatcher itself
        "ensure_store": store.ensure_store,
        "start_run": mlflow_runs.start_run,
        "log_config": mlflow_runs.log_config,
        "set_tags": mlflow_runs.set_tags,
        "log_dataset_input": mlflow_runs.log_dataset_input,
        "log_training_data": training_run.log_training_record,
        "log_metrics": mlflow_runs.log_metrics,
        "log_metric_points": mlflow_runs.log_metric_points,
        "take_over": mlflow_runs.take_over,
        "log_plots": training_run.log_plots,
        "finish_run": _finish_run,
        "end_run": mlflow_runs.end_run,
    }


def describe(exc: BaseException) -> str:
    """`Type: first line of the message`, at most MAX_ERROR_CHARS."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:MAX_ERROR_CHARS] if first else type(exc).__name__


class Dispatcher:
    """Runs calls by name; keeps the errors of asynchronous ones for the next synchronous one."""

    def __init__(self) -> None:
        #: (error type, `name: Type: message`) of each failed asynchronous call, in order
        self.failed: list[tuple[str, str]] = []
        self.seconds: dict[str, float] = defaultdict(float)

    def _run(self, name: str, args: tuple, kwargs: dict) -> Any:
        function = calls().get(name)
        if function is None:
            raise KeyError(f"{name!r} is not a tracking call (known: {', '.join(calls())})")
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            self.seconds[name] += time.perf_counter() - started

    def run_async(self, name: str, args: tuple, kwargs: dict) -> None:
        if name == BEGIN_RUN:  # errors of a run that ended before it asked anything stay its own
            for _, text in self.failed:
                log.warning("an earlier run's MLflow call failed: %s", text)
            self.failed = []
            return
        try:
            self._run(name, args, kwargs)
        except Exception as exc:
            log.error("MLflow call %s failed: %s", name, describe(exc))
            text = str(exc) if type(exc).__name__ == "StoreError" else describe(exc)
            self.failed.append((type(exc).__name__, f"{name}: {text}"))

    def run_sync(
        self, name: str, args: tuple, kwargs: dict, check: bool
    ) -> tuple[bool, Any, list[str]]:
        """(ok, value or (error type, message, failed call), earlier errors reported with it).

        check: an earlier asynchronous error fails this call without running it; otherwise the
        call runs and the earlier errors come back beside its result.
        """
        failed, self.failed = self.failed, []
        earlier = [text for _, text in failed]
        if check and failed:
            kind, first = failed[0]
            if kind == "StoreError":  # the store's own one-line error, whichever call met it
                return False, (kind, first.split(": ", 1)[1], name), []
            return False, ("TrackingCallError", "; ".join(earlier), name), []
        try:
            return True, self._run(name, args, kwargs), earlier
        except Exception as exc:
            kind = type(exc).__name__
            message = str(exc) if kind == "StoreError" else describe(exc)
            return False, (kind, message, name), earlier


#: Asynchronous calls whose consecutive requests for one run merge into one write (one SQLite
#: commit): epoch curves that queued while the process was busy.
_MERGEABLE = ("log_metric_points",)


def _merge_queued(requests: Any, message: tuple, held: list[tuple]) -> tuple:
    """`message` with the mergeable requests queued right behind it folded in; the first other
    request read is left in `held`."""
    seq, kind, name, args, kwargs = message
    if kind != ASYNC or name not in _MERGEABLE or kwargs:
        return message
    points = list(args[2])
    while not held and requests.poll():
        try:
            following = requests.recv()
        except EOFError:
            break
        same = following[1:3] == (ASYNC, name) and tuple(following[3][:2]) == tuple(args[:2])
        if not same or following[4]:
            held.append(following)
            break
        points += following[3][2]
    return seq, kind, name, (*args[:2], points), kwargs


def serve(requests: Any, replies: Any, dispatcher: Dispatcher) -> None:
    """Run the requests in order until EXIT or end of file."""
    held: list[tuple] = []
    while True:
        if held:
            message = held.pop()
        else:
            try:
                message = requests.recv()
            except EOFError:
                return
        seq, kind, name, args, kwargs = _merge_queued(requests, message, held)
        if kind == EXIT:
            return
        if kind == ASYNC:
            dispatcher.run_async(name, args, kwargs)
            continue
        ok, value, earlier = dispatcher.run_sync(name, args, kwargs, kind == CHECKED)
        try:
            replies.send((seq, ok, value, earlier))
        except OSError:  # the training process is gone
            return


def warm_up() -> None:
    """What the calls will need, imported before the first one arrives."""
    import mlflow
    import mlflow.store.tracking.sqlalchemy_store
    import mlflow.tracking  # noqa: F401

    calls()  # the registry's modules
    # matplotlib is imported by the first drawing (cvr.tracking.plots)
    from cvr.tracking.plots import warm_up_drawing

    warm_up_drawing()  # first drawings are slow: now, not while a run waits for its plots


def main(argv: list[str]) -> None:
    from multiprocessing.connection import Connection

    from cvr.quiet import quiet_third_party
    from cvr.startup import imports_without_gc

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the training process decides when to stop
    requests = Connection(int(argv[0]), writable=False)
    replies = Connection(int(argv[1]), readable=False)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s",
    )
    quiet_third_party()
    started = time.perf_counter()
    with imports_without_gc():  # as train.py's imports (cvr.startup)
        warm_up()
    dispatcher = Dispatcher()
    dispatcher.seconds["warm-up (imports, first figure)"] = time.perf_counter() - started
    serve(requests, replies, dispatcher)
    if os.environ.get(SECONDS_FILE_ENV):
        Path(os.environ[SECONDS_FILE_ENV]).write_text(json.dumps(dispatcher.seconds))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # everything is committed; interpreter teardown would only walk mlflow's objects


if __name__ == "__main__":
    main(sys.argv[1:])
