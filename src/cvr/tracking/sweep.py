"""MLflow parent runs for Hydra multiruns.

`python train.py -m ...` opens one parent run when the multirun starts and closes it when it ends;
each job is a child run tagged with the sweep id. The parent run id travels to the jobs through a
file in the sweep folder, so it also works for launchers that run jobs in other processes.
A failed job is recorded (its run marked FAILED) and the sweep goes on with the next job.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from cvr.ops.manifest import write_json_atomic
from cvr.tracking import mlflow_runs

log = logging.getLogger(__name__)

PARENT_FILE = "mlflow_parent.json"
FAILED_FILE = "job_failed.json"


def sweep_context() -> dict[str, Any] | None:
    """{'parent_run_id', 'sweep_id'} for a job inside a multirun with tracking, else None."""
    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:
        return None
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    path = Path(hydra_cfg.sweep.dir) / PARENT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def swept_keys(overrides: list[str]) -> list[str]:
    """The keys a multirun varies: 'model=fm,ffm' -> 'model'; 'trainer.max_epochs=2' is fixed."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.key_or_group for o in parsed if o.is_sweep_override()]


def record_job_failure(output_dir: str | Path, error: BaseException) -> None:
    write_json_atomic(Path(output_dir) / FAILED_FILE, {"error": f"{type(error).__name__}: {error}"})


class MlflowSweepCallback(Callback):
    """Opens the sweep's parent run before the first job and closes it after the last."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.logger.get("enabled"):
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        sweep_id = sweep_dir.name
        overrides = list(config.hydra.overrides.task)
        run_id = mlflow_runs.start_run(
            config.logger.tracking_uri,
            config.logger.experiment,
            run_name=f"sweep-{sweep_id}",
            tags={
                "sweep_id": sweep_id,
                "sweep_role": "parent",
                "sweep_overrides": " ".join(overrides)[:5000],
                "sweep_dir": str(sweep_dir),
                "git_commit": mlflow_runs.git_commit(),
            },
            artifact_root=config.logger.get("artifact_root"),
        )
        write_json_atomic(
            sweep_dir / PARENT_FILE,
            {
                "parent_run_id": run_id,
                "sweep_id": sweep_id,
                "tracking_uri": config.logger.tracking_uri,
                # Children are named by what varies (tracking.run_names).
                "swept_keys": swept_keys(overrides),
            },
        )
        log.info("sweep %s: MLflow parent run %s", sweep_id, run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failed = sorted(p.parent.name for p in sweep_dir.glob(f"*/{FAILED_FILE}"))
        parent_file = sweep_dir / PARENT_FILE
        if parent_file.is_file():
            parent = json.loads(parent_file.read_text())
            log_sweep_report(config, parent, sweep_dir)
            mlflow_runs.end_run(
                parent["tracking_uri"], parent["parent_run_id"], "FAILED" if failed else "FINISHED"
            )
        if failed:
            log.error(
                "sweep finished with failed jobs: %s (see %s/*/%s)", failed, sweep_dir, FAILED_FILE
            )
            report_failed_jobs(sweep_dir, failed)
            sys.exit(1)  # a sweep with failed jobs is not a success


def report_failed_jobs(sweep_dir: Path, failed: list[str]) -> None:
    """Print each failed job (its number, overrides and error) to stderr, one line each."""
    total = len([p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()])
    print(f"sweep {sweep_dir.name}: {len(failed)} of {total} jobs failed", file=sys.stderr)
    for job in failed:
        error = json.loads((sweep_dir / job / FAILED_FILE).read_text()).get("error", "?")
        overrides_file = sweep_dir / job / ".hydra" / "overrides.yaml"
        overrides = ""
        if overrides_file.is_file():
            overrides = " ".join(str(o) for o in OmegaConf.load(overrides_file))
        print(f"  job {job} [{overrides}]: {error}", file=sys.stderr)


def log_sweep_report(config: DictConfig, parent: dict[str, Any], sweep_dir: Path) -> None:
    """The trade-off report (Pareto fronts, plots) of the sweep's children, on the parent run.

    A report that cannot be made (no finished child, no efficiency metrics) is a warning, not a
    failed sweep: `scripts/report.py --sweep <id>` can make it later.
    """
    from cvr.tracking.report import load_runs, log_report, write_report

    try:
        runs = load_runs(parent["tracking_uri"], config.logger.experiment, parent["sweep_id"])
        if runs.empty:
            return
        files = write_report(runs, sweep_dir / "report")
        log_report(parent["tracking_uri"], parent["parent_run_id"], files)
    except (LookupError, ValueError, KeyError, OSError) as error:
        log.warning("sweep %s: no trade-off report (%s)", parent["sweep_id"], error)
