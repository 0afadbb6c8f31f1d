"""Crash safety: SIGKILL mid-epoch, `resume=true`, same end as an uninterrupted run."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from cvr.pipelines.train import train
from tests.helpers import TINY_DATA, compose_train, sigkill_mid_first_epoch

ARGS = [
    *TINY_DATA,
    "data.rows_train=20000",
    "model=ffm",
    "trainer.max_epochs=2",
    "datamodule.batch_size=256",
    "trainer.enable_progress_bar=false",
    "callbacks.early_stopping=null",
    "logger=none",
    "print_table=false",
]


def only_run_dir(root):
    (run_dir,) = [p for p in (root / "runs").iterdir() if (p / "metrics.json").exists()]
    return run_dir


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    """The killed run is a real train.py process; the uninterrupted reference and the resume
    run the same train() in this process (two interpreter start-ups fewer). FFM trains on one
    fused thread (backend.threads=1), so the process it trains in does not change its result."""
    reference_root, crash_root = tmp_path / "reference", tmp_path / "crash"
    reference = train(compose_train(reference_root, ARGS))

    cmd = [
        sys.executable,
        "train.py",
        f"paths.output_root={crash_root}",
        *ARGS,
        "checkpoint_every_n_steps=5",
    ]
    last = sigkill_mid_first_epoch(cmd, crash_root, before_batch=78)
    if last is None:
        pytest.skip("training finished before a mid-epoch checkpoint could be caught")

    metrics = train(compose_train(crash_root, [*ARGS, "resume=true"]))
    run_dir = only_run_dir(crash_root)
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["resumed_from"] and info["resumed_from"] != str(run_dir), info
    assert metrics["train/global_step"] == reference["train/global_step"]
    assert metrics["train/global_step"] > last["global_step"]
    for key in ("val/auc", "test/auc", "test/logloss"):
        assert metrics[key] == pytest.approx(reference[key], abs=1e-6), key


def test_a_run_resumed_after_its_best_epoch_still_tests_that_epoch(tmp_path):
    # Every resume writes a new run folder, where Lightning's ModelCheckpoint forgot the best
    # score: the first epoch after the resume became the best, worse or not.
    args = [
        "data=synthetic",
        "data.rows_train=5000",
        "data.rows_val=1000",
        "data.rows_test=1000",
        "optimizer.lr=0.02",
        "logger=none",
        "export_bundle=false",
        "callbacks.efficiency_profile.enabled=false",
        "trainer.enable_progress_bar=false",
        "print_table=false",
    ]
    done = train(compose_train(tmp_path, args))
    assert (
        done["train/stopped_early"] == 1.0 and done["train/best_epoch"] < done["train/epochs_run"]
    )
    again = compose_train(tmp_path, [*args, "resume=true"])
    resumed = train(again)
    info = json.loads((Path(again.paths.output_dir) / "run_info.json").read_text())
    assert info["resumed_from"]
    assert resumed["train/best_epoch"] == done["train/best_epoch"]
    for key in ("val/best/auc", "test/auc", "test/logloss"):
        assert resumed[key] == pytest.approx(done[key], abs=1e-9), key


def test_unsynced_checkpoints_are_fsynced_when_the_stage_ends(tmp_path, monkeypatch):
    from cvr.checkpointing import AtomicCheckpointIO, load_checkpoint

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")))
    io = AtomicCheckpointIO(sync_each=False)
    kept, dropped = tmp_path / "epoch01.ckpt", tmp_path / "epoch00.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, dropped)
    io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, kept)
    assert synced == []  # renamed into place unsynced: a killed process still leaves them whole
    io.remove_checkpoint(dropped)
    io.teardown()
    assert synced == [str(kept)]  # the ones still there, once, when fit or test ends
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert torch.equal(load_checkpoint(kept)["state_dict"]["w"], torch.zeros(3))
    io.teardown()
    assert synced == [str(kept)]
