"""Shared test helpers: compose the real Hydra config, shrunk, and run the real pipeline."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

TINY_DATA = [
    "data.rows_train=3000",
    "data.rows_val=1000",
    "data.rows_test=1000",
    "data.num_fields=6",
    "data.user_fields=2",
    "data.item_fields=2",
    "data.total_values=2000",
]


def compose_train(tmp_path: Path, overrides: list[str]):
    """The resolved train config with outputs under tmp_path, as Hydra would build it."""
    from cvr.pipelines.train import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[f"paths.output_root={tmp_path}", *overrides],
            return_hydra_config=True,
        )
    run_dir = (
        tmp_path
        / "runs"
        / f"job{len(list((tmp_path / 'runs').glob('*'))) if (tmp_path / 'runs').exists() else 0}"
    )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.runtime.cwd = str(REPO)
        cfg.hydra.job.num = 0
        cfg.hydra.job.id = "test"
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    return cfg


def run_script(args: list[str], cwd: Path = REPO, timeout: int = 600, env=None):
    """Run a repo entry point in a subprocess; returns CompletedProcess (text)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


@contextmanager
def script_in_background(
    args: list[str], stdout: Path, stderr: Path | None = None, cwd: Path = REPO
) -> Iterator[subprocess.Popen]:
    """Start a repo entry point in its own process group, its output into files (stderr into
    `stdout` unless given its own); yields the Popen. On 2 cores a run started beside another
    uses the core the other leaves idle (interpreter start-ups, a DDP launch starting its
    processes one after the other). Still running when the block ends (a failed assertion):
    killed with its group."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with stdout.open("w") as out, (stderr or Path(os.devnull)).open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=cwd,
            stdout=out,
            stderr=err if stderr else subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def sigkill_mid_first_epoch(
    cmd: list[str], output_root: Path, before_batch: int, process_group: bool = False
) -> dict | None:
    """Start `cmd` (a train.py run writing under output_root) and SIGKILL it once its last.ckpt
    is part-way through the first epoch (0 < batches_in_epoch < before_batch); the state of that
    checkpoint, or None if the run ended first. process_group: the run gets its own process
    group and the kill reaches all of it (a DDP launch: rank 0 and the rank it started)."""
    import time

    import torch

    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=process_group,
    )
    deadline = time.time() + 300
    caught = None
    while time.time() < deadline and proc.poll() is None:
        for ckpt in (output_root / "runs").glob("*/checkpoints/last.ckpt"):
            try:
                state = torch.load(ckpt, map_location="cpu", weights_only=True)
            except (OSError, RuntimeError, EOFError):  # re-pointed or replaced while read
                continue
            if state["epoch"] == 0 and 0 < state["batches_in_epoch"] < before_batch:
                if process_group:
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    os.kill(proc.pid, signal.SIGKILL)
                caught = state
                break
        if caught is not None:
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    if caught is not None:
        assert proc.returncode == -signal.SIGKILL, proc.returncode
    return caught
