"""FunnelModule: a CTRModule that trains one funnel task (`cvr.tasks`) and scores every space.

Training is the CTRModule's (the backend trains on what `FunnelDataModule` hands it: one label
for ctr/cvr/ctcvr, [click, click AND conversion] for ESMM, whose (B, 2) logits the autograd
backend's BCE takes as they are). Evaluation batches carry the (n, 4) targets of
`cvr.funnel_metrics`; the module predicts the heads its task has (pctr, pcvr, pctcvr) and logs
`<split>/<metric>` for every metric of `funnel_metrics`, plus the generic `auc`, `logloss`,
`ne`, `calibration`, `oracle_auc`, `oracle_logloss` of the task's primary head on its own rows
(so callbacks, tables and reports that read `val/auc` keep working).
"""

from __future__ import annotations

import numpy as np
import torch

from cvr.backends.distributed import gather_concat
from cvr.funnel_metrics import HEADS, TARGETS, funnel_metrics, primary_metrics
from cvr.models.esmm import ESMM
from cvr.models.module import CTRModule
from cvr.tasks import Task

_CLICK, _CTCVR, _TRUE_PCTR, _TRUE_PCVR = range(len(TARGETS))


class FunnelModule(CTRModule):
    """CTRModule for `task`; see the module doc. Extra kwargs go to CTRModule."""

    def __init__(self, model: torch.nn.Module, backend, task: Task, **kwargs) -> None:
        super().__init__(model, backend, **kwargs)
        if (task.name == "esmm") != isinstance(model, ESMM):
            raise ValueError(
                f"task={task.name} needs {'an' if task.name == 'esmm' else 'a non-'}"
                f"ESMM model, got {type(model).__name__}"
            )
        self.task = task

    def head_probabilities(self, ids: torch.Tensor) -> torch.Tensor:
        """float32 (B, 3) in `HEADS` order; NaN for a head this task's model does not have."""
        out = torch.full((len(ids), len(HEADS)), float("nan"))
        if isinstance(self.model, ESMM):
            heads = self.model.head_probabilities(ids)
            for column, name in enumerate(HEADS):
                out[:, column] = heads[name].float().cpu()
        else:
            probs = torch.sigmoid(self.predict_logits(ids)).float().cpu()
            out[:, HEADS.index(self.task.primary)] = probs
        return out

    def _collect(self, split: str, batch) -> None:
        ids, targets = batch
        preds = self.head_probabilities(ids)
        self._outputs.setdefault(split, []).append((targets.cpu().numpy(), preds.numpy()))

    def primary_scores(self, targets: np.ndarray, preds: np.ndarray) -> dict[str, float]:
        """The generic metrics of the task's primary head on the rows and label it trains on."""
        head = preds[:, HEADS.index(self.task.primary)]
        truth = {
            "pctr": targets[:, _TRUE_PCTR],
            "pcvr": targets[:, _TRUE_PCVR],
            "pctcvr": targets[:, _TRUE_PCTR] * targets[:, _TRUE_PCVR],
        }[self.task.primary]
        label = targets[:, _CLICK] if self.task.primary == "pctr" else targets[:, _CTCVR]
        rows = targets[:, _CLICK] > 0.5 if self.task.primary == "pcvr" else slice(None)
        return primary_metrics(label[rows], head[rows], truth[rows])

    def _score(self, split: str) -> dict[str, float]:
        outputs = self._outputs.pop(split, [])
        if not outputs:
            return {}
        targets = np.concatenate([o[0] for o in outputs])
        preds = np.concatenate([o[1] for o in outputs])
        # Each process scored its own rows; the metrics are of all of them, each row once.
        targets, preds = gather_concat(targets, preds)
        scores = {**funnel_metrics(targets, preds), **self.primary_scores(targets, preds)}
        if "oracle_auc" in scores:
            scores["auc_gap"] = scores["oracle_auc"] - scores["auc"]
        metrics = {f"{split}/{k}": float(v) for k, v in scores.items()}
        metrics[f"{split}/rows"] = float(len(targets))
        self.last_metrics.update(metrics)
        return metrics

    def on_validation_epoch_end(self) -> None:
        # The CTRModule's, with only the monitored and generic figures on the progress bar.
        metrics = self._score("val")
        if not metrics:
            return
        if not self.trainer.sanity_checking:
            self.best_val_auc = max(self.best_val_auc, metrics["val/auc"])
            metrics["val/auc_best"] = self.best_val_auc
        shown = {self.task.monitor, "val/auc", "val/logloss", "val/auc_best"}
        # Scored on the gathered split, so the same on every process: nothing for Lightning to
        # reduce (a lazy reduction deadlocks DDP; see CTRModule.training_step).
        self.log_dict({k: v for k, v in metrics.items() if k in shown}, prog_bar=True)
        self.log_dict({k: v for k, v in metrics.items() if k not in shown})
