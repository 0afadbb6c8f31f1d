"""Start-up and exit of the entry points (`train.py`): the cyclic garbage collector's share.

Importing torch and Lightning (which imports torchmetrics, scipy, sympy and matplotlib) creates
about 400k objects that live as long as the process. CPython's collector walks every tracked
object on each full collection: during those imports (several full collections) and again in
interpreter teardown. Measured on a tiny run (5k rows, `scripts/bench_startup.py`), that was
about a third of the run's CPU time, for no memory back: the objects are modules, classes and
functions that never become garbage.

- `imports_without_gc()`: the collector is off while the block imports, then everything alive is
  moved to the permanent generation (`gc.freeze`), which later collections skip; collection of
  what the run itself allocates is unchanged.
- `late_import(name)`: `importlib.import_module(name)`, and the first time (the module not yet
  loaded) the same as above around it, after one collection, so garbage pending then (a previous
  sweep job's trainer, say) is freed rather than frozen. Only in a process whose entry point
  chose this with `imports_without_gc()`; elsewhere (tests, a notebook calling `train()`) it is a
  plain import, so a library call never freezes its caller's objects.
- `freeze_before_exit()`: the same for what the run imported later, so interpreter teardown does
  not walk it again. Reference counting still frees memory as usual; only cycles among frozen
  objects are never collected, and the process is about to end.
- `exit_without_teardown(code)`: after a run that succeeded, the exit handlers (`atexit`: logging's
  flush and close, the tracking process's stop, ...) and a flush of stdout/stderr, then
  `os._exit`: tearing down torch, Lightning and their ~400k objects module by module took a
  tiny run ~0.4 s and frees nothing the operating system would not.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import os
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import NoReturn

#: Set by `imports_without_gc`: this process's entry point manages the collector at start-up.
_ENTRY_POINT_CHOSE = False


@contextlib.contextmanager
def imports_without_gc() -> Iterator[None]:
    """No cyclic collection while the block runs; what it created is frozen afterwards."""
    global _ENTRY_POINT_CHOSE
    _ENTRY_POINT_CHOSE = True
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def late_import(name: str) -> ModuleType:
    """The module `name`, imported the first time as the docstring says."""
    if name in sys.modules or not _ENTRY_POINT_CHOSE:
        return importlib.import_module(name)
    gc.collect()
    with imports_without_gc():
        return importlib.import_module(name)


def freeze_before_exit() -> None:
    """Exclude every object alive now from the collections of interpreter teardown."""
    gc.freeze()


def exit_without_teardown(code: int = 0) -> NoReturn:
    """Run the exit handlers, flush the standard streams, end the process (see the docstring)."""
    atexit._run_exitfuncs()  # what a normal exit runs first: logging.shutdown among them
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing more can be written
            pass
    os._exit(code)
