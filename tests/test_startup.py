"""cvr.startup: the entry points' garbage-collector settings around imports and exit."""

import gc
import sys
import weakref

import pytest

from cvr import startup
from cvr.startup import freeze_before_exit, imports_without_gc, late_import


@pytest.fixture(autouse=True)
def no_entry_point_choice(monkeypatch):
    """Each test starts as a library caller would (restored after: the choice is per process)."""
    monkeypatch.setattr(startup, "_ENTRY_POINT_CHOSE", False)


def test_no_collection_inside_the_block_and_its_objects_are_frozen_after():
    gc.unfreeze()
    assert gc.isenabled()
    try:
        before = gc.get_freeze_count()
        with imports_without_gc():
            assert not gc.isenabled()
            made = [[i] for i in range(1000)]  # tracked objects, like an import's
        assert gc.isenabled()
        assert gc.get_freeze_count() >= before + len(made)
        assert not any(o is made for o in gc.get_objects())  # frozen: not in any generation
    finally:
        gc.unfreeze()


def test_a_disabled_collector_stays_disabled():
    gc.disable()
    try:
        with imports_without_gc():
            pass
        assert not gc.isenabled()
    finally:
        gc.unfreeze()
        gc.enable()


def test_freeze_before_exit_moves_live_objects_to_the_permanent_generation():
    gc.unfreeze()
    try:
        kept = [[i] for i in range(100)]
        freeze_before_exit()
        assert gc.get_freeze_count() >= len(kept)
    finally:
        gc.unfreeze()


def test_late_import_is_a_plain_import_unless_the_entry_point_chose_it(monkeypatch):
    gc.unfreeze()
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    try:
        assert late_import("colorsys").__name__ == "colorsys"
        assert gc.get_freeze_count() == 0  # a library caller's (test, notebook) objects stay
    finally:
        gc.unfreeze()


def test_late_import_freezes_only_a_first_import_after_collecting(monkeypatch):
    with imports_without_gc():  # what train.py does first
        pass
    gc.unfreeze()
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    try:
        gc.disable()  # so that no automatic collection frees it first
        pending = weakref.ref(Node())  # garbage in a cycle, not yet collected
        assert pending() is not None
        gc.enable()
        late_import("colorsys")
        assert pending() is None  # collected before the freeze, not frozen forever
        assert gc.isenabled() and gc.get_freeze_count() > 0
        gc.unfreeze()
        late_import("colorsys")  # already loaded: no collection, nothing frozen
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()


class Node:
    def __init__(self):
        self.me = self


def test_exit_without_teardown_runs_exit_handlers_and_flushes_then_exits_with_the_code():
    import subprocess

    code = (
        "import atexit, sys\n"
        "from cvr.startup import exit_without_teardown\n"
        "atexit.register(lambda: print('handler ran'))\n"
        "sys.stdout.write('buffered, no newline')\n"
        "exit_without_teardown(3)\n"
        "print('never')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 3, result.stderr
    assert result.stdout == "buffered, no newlinehandler ran\n"


def test_torchmetrics_without_scipy_or_matplotlib_keeps_both_out_of_lightnings_import_only():
    import subprocess

    code = (
        "import sys\n"
        "from cvr.startup import torchmetrics_without_scipy_or_matplotlib\n"
        "from lightning_utilities.core import imports\n"
        "before = imports.package_available\n"
        "with torchmetrics_without_scipy_or_matplotlib():\n"
        "    import lightning.pytorch, torchmetrics\n"
        "assert 'torchmetrics' in sys.modules and 'scipy.signal' not in sys.modules\n"
        "assert 'matplotlib' not in sys.modules\n"
        "assert imports.package_available is before and imports.package_available('scipy')\n"
        "assert not any(type(f).__name__ == '_AfterExec' for f in sys.meta_path)\n"
        "import scipy.signal\n"  # a later import is a plain one
        "print(scipy.signal.windows.hamming(3).shape)\n"
        "import matplotlib.pyplot\n"
        "print(matplotlib.pyplot.figure().get_size_inches().shape)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "(3,)\n(2,)\n"


def test_the_training_entry_imports_neither_matplotlib_nor_scipy_signal():
    # The training process draws no plots (the tracking process does) and calls no scipy: each
    # was ~0.6-1.5 s of a tiny run's imports (cvr.startup, cvr.tracking.plots).
    import subprocess
    from pathlib import Path

    code = (
        "import sys, train\n"
        "print(sorted(m for m in ('matplotlib', 'scipy.signal') if m in sys.modules))\n"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"
