"""Wall seconds per phase of one `train.py` run, for `bench_startup.py --phases`.

    python scripts/startup_phases.py OUT.json train.py [overrides ...]   (cwd: the checkout)

Runs train.py as `python train.py` would, with timers wrapped around the pipeline's phases as
their modules are first imported (an import hook, so nothing is imported earlier than train.py
itself would import it and the run's garbage-collector settings are its own). Phases nest:
`MLflow run start` includes the mlflow import + store open and the params; `fit` includes
`checkpoints`, `epoch curves` and `efficiency profile`. `imports + Hydra start` is process start
to Hydra's first composition; `exit` (process teardown after the last Python code) is added by
the caller, which sees the process end. MLflow's calls run in the tracking process
(cvr.tracking.process): what the training process spends on them is its waits on that process
(`waits on the tracking process`), and the tracking process's own seconds per call, which run
beside training, are the `tracking process: <call>` rows.
"""

from __future__ import annotations

import atexit
import importlib.abc
import importlib.machinery
import json
import os
import runpy
import sys
import time
from collections import defaultdict
from pathlib import Path

STARTED = time.time()
#: cvr.tracking.process.SECONDS_FILE_ENV (not imported: nothing is imported before train.py)
SECONDS_ENV = "CVR_TRACKING_SECONDS"
TOTALS: dict[str, float] = defaultdict(float)
FIRST: dict[str, float] = {}
#: module -> [(attribute path, phase)]
TARGETS = {
    "hydra._internal.hydra": [("Hydra.compose_config", "Hydra composition")],
    "cvr.pipelines.train": [
        ("start_tracking", "MLflow run start (waits for the tracking process)"),
        ("build_module", "backend + numba kernels"),
        ("fit_and_test", "fit_and_test"),
    ],
    "cvr.tracking.tracker": [
        ("ProcessTracker.__init__", "tracking process start (spawn)"),
        ("ProcessTracker.ask", "waits on the tracking process (all asks)"),
        ("LocalTracker.call", "MLflow calls in this process"),
        ("LocalTracker.ask", "MLflow calls in this process"),
    ],
    "cvr.tracking.training_run": [
        ("training_record", "MLflow dataset + tags record"),
        # Run in this process only by a checkout without a tracking process (--before), or
        # with logger.tracking_process=false:
        ("log_training_data", "MLflow dataset + tags"),
        ("finish_run", "finish_run (MLflow)"),
    ],
    "cvr.tracking.plots": [("log_run_artifacts", "  plots + summary.md")],
    "cvr.tracking.store": [("ensure_store", "  mlflow import + store open")],
    "cvr.tracking.mlflow_runs": [("log_config", "  params + config.yaml")],
    "cvr.serving.pyfunc": [("log_pyfunc_model", "  log model (pyfunc)")],
    "cvr.tracking.epoch_logger": [("EpochMlflowLogger.log_metrics", "  epoch curves (MLflow)")],
    "cvr.serving.bundle": [("export_from_training", "bundle export")],
    # The search's later rates (the first is the run's own fit): cvr.pipelines.lr_search
    "cvr.pipelines.lr_search": [("train_candidate", "lr search: kernel-only candidates")],
    "cvr.checkpointing": [
        ("AtomicCheckpointIO.save_checkpoint", "  checkpoints"),
        ("AtomicCheckpointIO.teardown", "  checkpoints"),  # the fsyncs when the stage ends
    ],
    "cvr.callbacks": [("profile_model", "  efficiency profile")],
    "lightning.pytorch.trainer.trainer": [
        ("Trainer.__init__", "Trainer construction"),
        ("Trainer.fit", "fit"),
        ("Trainer.test", "test"),
    ],
}


def timed(fn, phase):
    def wrapper(*args, **kwargs):
        start = time.time()
        FIRST.setdefault(phase, start - STARTED)
        try:
            return fn(*args, **kwargs)
        finally:
            TOTALS[phase] += time.time() - start

    return wrapper


def patch(module) -> None:
    for path, phase in TARGETS[module.__name__]:
        owner, _, attr = path.rpartition(".")
        holder = getattr(module, owner, None) if owner else module
        if holder is None or not hasattr(holder, attr):
            continue  # another checkout (bench_startup --before) without this phase
        setattr(holder, attr, timed(getattr(holder, attr), phase))


class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in TARGETS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            patch(module)

        spec.loader.exec_module = exec_module
        return spec


def report(out: str) -> None:
    phases = dict(TOTALS)
    if "Hydra composition" in FIRST:
        phases["imports + Hydra start"] = FIRST["Hydra composition"]
    # Seconds per call in the tracking process (cvr.tracking.process), which writes them when it
    # exits: at train.py's exit, before this (atexit runs the later registration first).
    seconds_file = Path(os.environ[SECONDS_ENV])
    if seconds_file.is_file():
        for name, seconds in json.loads(seconds_file.read_text()).items():
            phases[f"tracking process: {name}"] = seconds
    with open(out, "w") as f:
        json.dump({"phases": phases, "started": STARTED, "ended": time.time()}, f)


if __name__ == "__main__":
    out, script, *overrides = sys.argv[1:]
    os.environ[SECONDS_ENV] = f"{out}.tracking.json"
    sys.meta_path.insert(0, Hook())
    atexit.register(report, out)
    sys.argv = [script, *overrides]
    sys.path.insert(0, ".")
    runpy.run_path(script, run_name="__main__")
