"""cvr.startup: the entry points' garbage-collector settings around imports and exit."""

import gc

import pytest

from cvr import startup
from cvr.startup import freeze_before_exit, imports_without_gc, late_imports


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


def test_late_imports_change_nothing_unless_the_entry_point_chose_it():
    gc.unfreeze()
    try:
        with late_imports():
            assert gc.isenabled()  # a library caller (test, notebook) keeps its collector
        assert gc.get_freeze_count() == 0
        with imports_without_gc():  # what train.py does first
            pass
        gc.unfreeze()
        with late_imports():
            assert not gc.isenabled()
            made = [[i] for i in range(100)]
        assert gc.isenabled() and gc.get_freeze_count() >= len(made)
    finally:
        gc.unfreeze()
