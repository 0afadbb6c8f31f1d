"""Crash safety: SIGKILL mid-epoch, `resume=true`, same end as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers import REPO, TINY_DATA

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


def run_train(output_root, extra=()):
    cmd = [sys.executable, "train.py", f"paths.output_root={output_root}", *ARGS, *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def only_run_dir(root):
    (run_dir,) = [p for p in (root / "runs").iterdir() if (p / "metrics.json").exists()]
    return run_dir


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    reference_root, crash_root = tmp_path / "reference", tmp_path / "crash"
    done = run_train(reference_root)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = json.loads((only_run_dir(reference_root) / "metrics.json").read_text())

    # Warm the data cache so the killed run spends its time training.
    cmd = [
        sys.executable,
        "train.py",
        f"paths.output_root={crash_root}",
        *ARGS,
        "checkpoint_every_n_steps=5",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    last = None
    while time.time() < deadline and proc.poll() is None:
        found = list((crash_root / "runs").glob("*/checkpoints/last.ckpt"))
        if found:
            state = torch.load(found[0], map_location="cpu", weights_only=True)
            # Kill once a checkpoint exists that is part-way through the first epoch.
            if 0 < state["batches_in_epoch"] < 78 and state["epoch"] == 0:
                os.kill(proc.pid, signal.SIGKILL)
                last = state
                break
        time.sleep(0.05)
    proc.wait(timeout=60)
    if last is None:
        pytest.skip("training finished before a mid-epoch checkpoint could be caught")
    assert proc.returncode == -signal.SIGKILL

    resumed = run_train(crash_root, ["resume=true"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run_dir = only_run_dir(crash_root)
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["resumed_from"] and info["resumed_from"] != str(run_dir), info
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train/global_step"] == reference["train/global_step"]
    assert metrics["train/global_step"] > last["global_step"]
    for key in ("val/auc", "test/auc", "test/logloss"):
        assert metrics[key] == pytest.approx(reference[key], abs=1e-6), key
