"""What a finished training run reports: the epochs it ran and why it stopped, the best
epoch's val figures, the oracle's, and the table printed at its end."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

from cvr.data.store import EncodedStore
from cvr.metrics import binary_metrics


def oracle_metrics(store: EncodedStore, split: str, label: str) -> dict[str, float]:
    probs = store.oracle(split, label)
    if probs is None:
        return {}
    metrics = binary_metrics(store.labels(split, label), probs)
    return {f"{split}/oracle_auc": metrics["auc"], f"{split}/oracle_logloss": metrics["logloss"]}


#: Per-space rows of a funnel task (cvr.funnel_metrics), printed under the generic ones.
FUNNEL_TABLE_ROWS = (
    "ctr_auc",
    "ctcvr_auc",
    "cvr_auc_clicked",
    "oracle_cvr_auc_clicked",
    "cvr_auc_all",
    "oracle_cvr_auc_all",
    "cvr_logloss_all",
    "oracle_cvr_logloss_all",
    "ctr_calibration",
    "ctcvr_calibration",
    "cvr_calibration_clicked",
    "cvr_calibration_all",
)
#: Efficiency figures printed under the quality table (all are logged to MLflow).
_TABLE_EFFICIENCY = (
    "eff/params",
    "eff/embedding_bytes",
    "eff/latency_b1_p50_us",
    "eff/latency_b1_p99_us",
    "eff/throughput_b4096_per_s",
    "eff/train_samples_per_s",
    "eff/epoch_seconds",
)


def training_summary(trainer: L.Trainer, best_checkpoint: str) -> dict[str, float]:
    """Epochs run, the best epoch (1-based, from the best checkpoint's `epochNN-` file name;
    absent if there is none) and whether early stopping ended the run (1.0) or max_epochs (0.0).
    """
    out = {"train/epochs_run": float(trainer.current_epoch)}
    if trainer.max_epochs and trainer.max_epochs > 0:
        out["train/max_epochs"] = float(trainer.max_epochs)
    # (EarlyStopping.stopped_epoch is 0 both when it never stopped and when it stopped after the
    # first epoch, so ask whether the loop was told to stop.)
    stopper = trainer.early_stopping_callback
    limit = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
    out["train/stopped_early"] = float(
        stopper is not None
        and trainer.should_stop
        and (limit is None or trainer.current_epoch < limit)
    )
    match = re.match(r"epoch(\d+)", Path(best_checkpoint).name) if best_checkpoint else None
    if match:
        out["train/best_epoch"] = float(int(match.group(1)) + 1)
    return out


class ValidationByEpoch(L.Callback):
    """Every validated epoch's val/... figures (0-based epoch -> metrics), so the summary can
    show those of the best epoch, the one tested and exported, and not only the last's."""

    def __init__(self) -> None:
        self.by_epoch: dict[int, dict[str, float]] = {}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = getattr(pl_module, "last_metrics", None) or {}
        self.by_epoch[trainer.current_epoch] = {
            k: float(v) for k, v in metrics.items() if k.startswith("val/") and np.isscalar(v)
        }

    # Kept in the checkpoint: a resumed run knows the epochs before it (the lr search's first
    # candidate needs them all, and `best` the best epoch's).
    def state_dict(self) -> dict[str, Any]:
        return {"by_epoch": {int(e): dict(m) for e, m in self.by_epoch.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.by_epoch = {int(e): dict(m) for e, m in state_dict.get("by_epoch", {}).items()}

    def best(self, summary: dict[str, float]) -> dict[str, float]:
        """`val/best/<name>`: the val figures of summary's train/best_epoch ({} if unknown, e.g.
        a run resumed from a checkpoint older than this state)."""
        epoch = summary.get("train/best_epoch")
        figures = self.by_epoch.get(int(epoch) - 1, {}) if epoch is not None else {}
        return {f"val/best/{k.removeprefix('val/')}": v for k, v in figures.items()}


def stop_line(metrics: dict[str, float]) -> str | None:
    """'epochs 7 of 50, best 5: early stopping (val/auc stopped improving)' or None."""
    if "train/epochs_run" not in metrics:
        return None
    line = f"epochs {int(metrics['train/epochs_run'])}"
    if "train/max_epochs" in metrics:
        line += f" of {int(metrics['train/max_epochs'])}"
    if "train/best_epoch" in metrics:
        line += f", best {int(metrics['train/best_epoch'])}"
    if metrics.get("train/stopped_early"):
        return line + ": early stopping (validation stopped improving)"
    if metrics.get("train/epochs_run") == metrics.get("train/max_epochs"):
        return line + ": reached trainer.max_epochs"
    return line + ": training ended"


def metrics_table(metrics: dict[str, float]) -> str:
    rows = ["auc", "logloss", "ne", "calibration", "oracle_auc", "oracle_logloss", "auc_gap"]
    rows += list(FUNNEL_TABLE_ROWS)  # task=...: each space's figures (absent rows are skipped)
    # The val column is of the best epoch (the tested checkpoint's) wherever that is known.
    best = any(k.startswith("val/best/") for k in metrics)
    val_head = "val (best)" if best else "val (last)" if "train/best_epoch" in metrics else "val"
    lines = [f"{'metric':<16}{val_head:>12}{'test':>12}", "-" * 40]
    stopped = stop_line(metrics)
    if stopped:
        lines.insert(0, stopped)
    for name in rows:
        val = metrics.get(f"val/best/{name}" if best else f"val/{name}")
        test = metrics.get(f"test/{name}")
        if val is None and test is None:
            continue
        cells = "".join(f"{v:>12.5f}" if v is not None else f"{'':>12}" for v in (val, test))
        lines.append(f"{name:<16}{cells}")
    efficiency = [(k, metrics[k]) for k in _TABLE_EFFICIENCY if k in metrics]
    if efficiency:
        lines += ["-" * 40, "efficiency"]
        lines += [f"  {k.removeprefix('eff/'):<26}{v:>12,.1f}" for k, v in efficiency]
    return "\n".join(lines)
