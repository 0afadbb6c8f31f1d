"""Hydra sweeps under DDP: the processes Lightning starts must run this job, not the sweep.

Lightning's subprocess launcher starts ranks 1..N-1 as `python <script> <sys.argv[1:]>
hydra.run.dir=<HydraConfig run.dir> ...`. In a `-m` sweep that command line is the whole sweep
(every child would run every job), and `hydra.run.dir` is not the job's folder. So before fit,
rank 0 of a sweep job rewrites both to this one job: its own overrides, `hydra.mode=RUN`, and
the job's output folder as the run folder. Outside a sweep, or with one process, nothing changes.

The next job of the sweep runs in the same rank-0 process, where the launcher left its
environment (LOCAL_RANK, MASTER_PORT, ...) and process group: Lightning would then take the
ranks as started by someone else and wait for processes that are gone. `forget_previous_launch`
clears both before the next job's trainer is built.
"""

from __future__ import annotations

import os
import sys

import torch
from omegaconf import read_write

#: What Lightning's subprocess launcher sets in the launching process's environment.
_LAUNCH_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def forget_previous_launch() -> bool:
    """In rank 0 of a sweep, undo an earlier job's DDP launch; True if there was one."""
    if not _in_sweep() or os.environ.get("LOCAL_RANK", "0") != "0":
        return False
    launched = "MASTER_PORT" in os.environ
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for name in _LAUNCH_ENV:
        os.environ.pop(name, None)
    return launched


def launch_only_this_job(world_size: int) -> bool:
    """Point Lightning's DDP launcher at this sweep job alone; True if anything was changed."""
    if world_size <= 1 or not _in_sweep():
        return False
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task, "hydra.mode=RUN"]
    with read_write(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    return True
