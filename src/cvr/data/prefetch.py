"""`prefetch`: iterate in a background thread, a few items ahead (pipeline stages on 2 cores)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any


def prefetch(items: Iterable[Any], depth: int = 2, name: str = "cvr-prefetch") -> Iterator[Any]:
    """Iterate `items` in a background thread, `depth` items ahead.

    The stages of a store build spend their time in numba, Arrow and hashlib, which release the
    GIL, so producing the next item overlaps consuming this one on another core. Exceptions
    reach the consumer; closing the iterator early stops the thread.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def run() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put((True, item))
            q.put((True, done))
        except BaseException as exc:
            q.put((False, exc))

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.01)
