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
- `torchmetrics_without_scipy_or_matplotlib()`: Lightning imports torchmetrics, whose `__init__`
  and audio metrics import `scipy.signal` (and with it scipy.stats, .interpolate, .optimize...)
  only to patch a name for an audio metric (~1.5 s of a tiny run's ~5 s of imports), and whose
  plot helpers import `matplotlib.pyplot` for `Metric.plot` (~0.6 s): nothing this project calls
  (no torchmetrics audio metric, no scipy; the run's own plots are drawn by the tracking process,
  cvr.tracking). Inside the block torchmetrics sees neither; a later `import scipy` or
  `import matplotlib` works as usual, while `Metric.plot` in that process says matplotlib is
  missing.
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
import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Iterator, Sequence
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


class _AfterExec(importlib.abc.MetaPathFinder):
    """Runs `then(module)` right after module `name` is executed (first import only)."""

    def __init__(self, name: str, then) -> None:
        self.name, self.then = name, then

    def find_spec(self, name: str, path: Sequence[str] | None, target=None):
        if name != self.name:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        execute = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            self.then(module)

        spec.loader.exec_module = exec_module
        return spec


@contextlib.contextmanager
def torchmetrics_without_scipy_or_matplotlib() -> Iterator[None]:
    """torchmetrics, imported inside the block, skips scipy.signal and pyplot (docstring)."""
    if "torchmetrics" in sys.modules:
        yield
        return
    try:
        from lightning_utilities.core import imports as requirements
    except ImportError:  # no Lightning: nothing imports torchmetrics
        yield
        return
    available = requirements.package_available  # what torchmetrics/__init__ asks
    requirements.package_available = lambda name: name != "scipy" and available(name)

    def neither(module: ModuleType) -> None:  # what .functional.audio and .utilities.plot ask
        for flag in ("_SCIPI_AVAILABLE", "_MATPLOTLIB_AVAILABLE"):
            if hasattr(module, flag):
                setattr(module, flag, False)

    hook = _AfterExec("torchmetrics.utilities.imports", neither)
    sys.meta_path.insert(0, hook)
    try:
        yield
    finally:
        requirements.package_available = available
        sys.meta_path.remove(hook)


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
