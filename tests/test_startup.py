"""cvr.startup: the entry points' garbage-collector settings around imports and exit."""

import gc

from cvr.startup import freeze_before_exit, imports_without_gc


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
