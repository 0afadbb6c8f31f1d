"""A Lightning logger that writes per-epoch curves to an MLflow run, one point per epoch.

Lightning logs every metric at the global step and adds an `epoch` metric of its own, so curves
of datasets with different steps per epoch do not line up and `epoch` repeats steps. This
logger instead writes:

- `train/...` and `val/...` epoch metrics at `step = epoch` (0, 1, ..., E-1), so the UI's
  step axis is the epoch axis; `train/loss_epoch` becomes `train/loss`;
- the per-step training loss (`train/loss_step`) as `train_step/loss` at the global step, a name
  (and chart section) of its own;
- nothing else: summary metrics (`test/...`, `eff/...`, `data/...`) are logged once by the
  pipeline when the run ends (`mlflow_runs.log_summary`), and `epoch` is not logged at all.

The points go to the run's `Tracker` (cvr.tracking.tracker) as one asynchronous
`log_metric_points` call per log: this process never imports mlflow, and fit does not wait on
SQLite's commits. With `hold=True` they are kept until `release()`: the lr search's first
candidate is a Lightning run that may not be the run's model (cvr.pipelines.lr_search), so its
curves are sent once that is known, under their own names if it is, else under
`lr_search/<lr>/...`, and never mixed into the final run's curves.
"""

from __future__ import annotations

import time
from typing import Any

from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only

from cvr.tracking.mlflow_runs import display_value
from cvr.tracking.tracker import Tracker

#: Prefixes of metrics that have one value per epoch.
EPOCH_PREFIXES = ("train/", "val/")
STEP_SUFFIX = "_step"
EPOCH_SUFFIX = "_epoch"


def route(key: str) -> tuple[str, bool] | None:
    """(MLflow name, per-epoch?) for a Lightning metric key; None: not logged here.

    'train/loss_step' -> ('train_step/loss', False); 'train/loss_epoch' -> ('train/loss', True);
    'val/auc' -> ('val/auc', True); 'test/auc', 'eff/params', 'epoch' -> None.
    """
    if not key.startswith(EPOCH_PREFIXES):
        return None
    prefix, rest = key.split("/", 1)
    if rest.endswith(STEP_SUFFIX):
        return f"{prefix}_step/{rest.removesuffix(STEP_SUFFIX)}", False
    return f"{prefix}/{rest.removesuffix(EPOCH_SUFFIX)}", True


class EpochMlflowLogger(Logger):
    """Writes train/val curves of one existing MLflow run (see the module docstring)."""

    def __init__(
        self, tracker: Tracker, tracking_uri: str, run_id: str, hold: bool = False
    ) -> None:
        super().__init__()
        self.tracker = tracker
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.hold = hold
        self.held: list[tuple[str, float, int, int]] = []

    def release(self, prefix: str = "") -> None:
        """Send the held points (names prefixed with `prefix`); later points go out as logged."""
        points = [(prefix + name, *rest) for name, *rest in self.held]
        self.hold, self.held = False, []
        if points:
            self.tracker.call("log_metric_points", self.tracking_uri, self.run_id, points)

    @property
    def name(self) -> str:
        return "mlflow-epochs"

    @property
    def version(self) -> str:
        return self.run_id

    @property
    def experiment(self) -> Tracker:
        return self.tracker

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        # Params are the resolved config, logged once by the pipeline (mlflow_runs.log_config).
        return None

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        metrics = dict(metrics)
        epoch = metrics.pop("epoch", None)
        now = int(time.time() * 1000)
        points = []
        for key, value in metrics.items():
            routed = route(key)
            if routed is None:
                continue
            name, per_epoch = routed
            at = epoch if per_epoch and epoch is not None else step
            points.append((name, display_value(value), now, int(at or 0)))
        if points and self.hold:
            self.held.extend(points)
        elif points:
            self.tracker.call("log_metric_points", self.tracking_uri, self.run_id, points)
