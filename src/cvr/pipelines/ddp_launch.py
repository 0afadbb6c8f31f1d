"""Hydra sweeps under DDP: the processes Lightning starts must run this job, not the sweep.

Lightning's subprocess launcher starts ranks 1..N-1 as `python <script> <sys.argv[1:]>
hydra.run.dir=<HydraConfig run.dir> ...`. In a `-m` sweep that command line is the whole sweep
(every child would run every job), and `hydra.run.dir` is not the job's folder. So before fit,
rank 0 of a sweep job rewrites both to this one job: its own overrides, `hydra.mode=RUN`, and
the job's output folder as the run folder. Outside a sweep, or with one process, nothing changes.
"""

from __future__ import annotations

import sys

from omegaconf import open_dict


def launch_only_this_job(world_size: int) -> bool:
    """Point Lightning's DDP launcher at this sweep job alone; True if anything was changed."""
    if world_size <= 1:
        return False
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return False
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return False
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task, "hydra.mode=RUN"]
    with open_dict(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    return True
