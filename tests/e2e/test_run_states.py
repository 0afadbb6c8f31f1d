"""Honest run states and intact checkpoints: truncated last.ckpt, SIGTERM, live-run takeover."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from cvr.checkpointing import AtomicCheckpointIO, DiskFullError, load_checkpoint
from cvr.pipelines import run_lifecycle
from cvr.pipelines.errors import one_line
from cvr.pipelines.train import train
from tests.helpers import REPO, TINY_DATA, compose_train

QUIET = [
    "trainer.enable_progress_bar=false",
    "callbacks.efficiency_profile.enabled=false",
    "print_table=false",
]


# --- checkpoints ---------------------------------------------------------------------------------


def test_checkpoints_are_written_beside_their_destination_then_renamed(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpt" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((Path(src), Path(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    ((src, dst),) = seen
    assert src.parent == path.parent and dst == path  # same folder: a rename, never a copy
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.zeros(3))


def test_a_full_disk_leaves_the_previous_checkpoint_and_says_where(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskFullError, match=r"disk full while writing .*last\.ckpt"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left


def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, caplog):
    args = [*TINY_DATA, "logger=none", "trainer.max_epochs=2", "export_bundle=false", *QUIET]
    first = compose_train(tmp_path, args)
    train(first)
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.unlink()  # by default a link to the best checkpoint: a new file takes the name
    last.write_bytes(data[: len(data) // 2])  # what a full disk left under the final name
    again = compose_train(tmp_path, [*args, "resume=true"])
    with caplog.at_level(logging.WARNING):
        metrics = train(again)
    assert "does not load" in caplog.text and "resuming from" in caplog.text
    assert "epoch" in caplog.text.split("resuming from", 1)[1]
    info = json.loads((Path(again.paths.output_dir) / "run_info.json").read_text())
    assert Path(info["resumed_from"]).name.startswith("epoch")
    assert metrics["train/global_step"] == 2  # resumed at the end of epoch 2: nothing lost


# --- run states ----------------------------------------------------------------------------------


def test_final_status_and_liveness_probe():
    assert run_lifecycle.final_status(run_lifecycle.RunKilled(signal.SIGTERM)) == "KILLED"
    assert run_lifecycle.final_status(KeyboardInterrupt()) == "KILLED"
    assert run_lifecycle.final_status(ValueError("x")) == "FAILED"
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        info = {**run_lifecycle.owner_record(), "pid": sleeper.pid}
        with pytest.raises(run_lifecycle.RunInUse, match=f"pid {sleeper.pid}"):
            run_lifecycle.refuse_if_alive(info, Path("run"))
    finally:
        sleeper.kill()
        sleeper.wait()
    run_lifecycle.refuse_if_alive(info, Path("run"))  # gone: may be taken over


def _run_args(*extra: str) -> list[str]:
    return [*TINY_DATA, "datamodule.batch_size=64", "callbacks.early_stopping=null", *QUIET, *extra]


def _status(root: Path, run_id: str) -> str:
    return MlflowClient(f"sqlite:///{root / 'mlflow.db'}").get_run(run_id).info.status


@pytest.mark.slow
def test_sigterm_marks_killed_resume_refuses_a_live_run_then_takes_over(
    tmp_path, empty_mlflow_store
):
    """A real train.py process and a real SIGTERM; the refusal and the takeover run in this
    process (the same train(); the CLI's one-line exit 2 is tests/e2e/test_config_check's),
    which saves two interpreter start-ups."""
    root = tmp_path / "out"
    empty_mlflow_store(root)
    proc = subprocess.Popen(
        [
            sys.executable,
            "train.py",
            f"paths.output_root={root}",
            *_run_args("trainer.max_epochs=200"),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(1200):  # polls until the first epoch checkpoint exists
            if list(root.glob("runs/*/checkpoints/last.ckpt")) or proc.poll() is not None:
                break
            time.sleep(0.25)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        (info_path,) = root.glob("runs/*/run_info.json")
        info = json.loads(info_path.read_text())
        assert info["pid"] == proc.pid and info["host"]

        run_dir = info_path.parent
        # An explicit run folder (any config) is refused while its process lives, with the
        # one-line message train.py prints before exiting 2.
        busy = compose_train(root, _run_args("trainer.max_epochs=2", f"resume={run_dir}"))
        with pytest.raises(run_lifecycle.RunInUse) as refused:
            train(busy)
        message = one_line(refused.value)
        assert message == (
            f"error: resume: {run_dir} is still running (pid {proc.pid} on {info['host']}); "
            "stop it first, or start a new run with resume=false"
        )
        assert proc.poll() is None  # the refusal did not touch the live run
        assert _status(root, info["mlflow_run_id"]) == "RUNNING"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert _status(root, info["mlflow_run_id"]) == "KILLED"

    # max_steps=1: the resumed run ends at once (Lightning refuses a smaller max_epochs).
    again = ["trainer.max_epochs=200", "+trainer.max_steps=1", f"resume={run_dir}"]
    train(compose_train(root, _run_args(*again)))
    run = MlflowClient(f"sqlite:///{root / 'mlflow.db'}").get_run(info["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["resumed_from_status"] == "KILLED"


def test_a_run_whose_bundle_never_appeared_is_not_finished(
    tmp_path, monkeypatch, empty_mlflow_store
):
    import cvr.serving.bundle as bundle_module

    empty_mlflow_store(tmp_path)

    # An export that returns without writing (what a kill mid-export used to leave): the run
    # must not be reported FINISHED.
    monkeypatch.setattr(bundle_module, "export_from_training", lambda *a, **k: None)
    cfg = compose_train(tmp_path, [*TINY_DATA, "trainer.max_epochs=1", *QUIET])
    with pytest.raises(RuntimeError, match=r"run ended without .*bundle.manifest\.json"):
        train(cfg)
    client = MlflowClient(cfg.logger.tracking_uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name(cfg.logger.experiment).experiment_id]
    )
    assert run.info.status == "FAILED"
