"""The fused backend's learning rate chosen on validation from a short grid (README "Recipe").

No one per-example AdaGrad rate suits every dataset: synthetic Criteo-like shapes (10 and 39
fields, 50k-290k rows) are best at 0.02 and lose 0.004-0.012 test AUC at 0.1, while movielens
(3 fields, 10k rows) gains 0.022 AUC and 0.026 logloss from 0.02 to 0.1. Validation AUC picks
the better rate on each (measured with scripts/recipe_check.py), so with `optimizer.lr: null`
the fused backend trains every rate of `optimizer.lr_search.grid` the way the pipeline will
(same model init, same batches in the same order, the same early stopping on val AUC), keeps
the one whose best epoch scores highest, and the pipeline then trains that rate as usual.

The search calls the kernels directly (no Lightning, no checkpoints): a candidate costs about
what its training epochs cost. `max_train_rows` bounds that cost: a larger training split keeps
the first rate of the grid, the default. With one thread training is deterministic, so the
pipeline's run at the chosen rate repeats the candidate's exactly.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from cvr.data.datamodule import BlockOrder, SliceBatches
from cvr.data.store import EncodedStore
from cvr.metrics import binary_metrics
from cvr.models.registry import build_model
from cvr.pipelines.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    """One rate's search run: val AUC of each epoch it trained."""

    lr: float
    val_auc: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def best(self) -> float:
        finite = [a for a in self.val_auc if math.isfinite(a)]
        return max(finite) if finite else float("nan")


@dataclass
class SearchResult:
    lr: float
    candidates: list[Candidate]
    reason: str

    def metrics(self) -> dict[str, float]:
        """Summary figures for the run's metrics: each candidate's best val AUC, search time."""
        out = {f"train/lr_search/{c.lr:g}/val_auc": c.best for c in self.candidates}
        if self.candidates:
            out["train/lr_search_seconds"] = sum(c.seconds for c in self.candidates)
        return out


def search_settings(cfg: DictConfig) -> dict[str, Any] | None:
    """`optimizer.lr_search` as a plain dict, or None where no search applies (an explicit
    `optimizer.lr`, or an optimiser config without a search)."""
    search = cfg.optimizer.get("lr_search")
    if cfg.optimizer.get("lr") is not None or not search or not search.get("grid"):
        return None
    return OmegaConf.to_container(search, resolve=True)


def stopping(cfg: DictConfig) -> tuple[int, float, int]:
    """(patience, min_delta, max_epochs) the pipeline's early stopping and trainer use."""
    stop = (cfg.get("callbacks") or {}).get("early_stopping") or {}
    patience = int(stop.get("patience", 10**9)) if stop else 10**9
    min_delta = float(stop.get("min_delta", 0.0)) if stop else 0.0
    return patience, min_delta, int(cfg.trainer.max_epochs)


def train_candidate(
    cfg: DictConfig,
    store: EncodedStore,
    label: str,
    lr: float,
    options: dict[str, Any],
    threads: int,
) -> Candidate:
    """Train one rate as the pipeline would and record val AUC per epoch, until the early
    stopping rule (or max_epochs) ends it."""
    from cvr.kernels import FusedTrainer, fused_logits

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model = build_model(cfg, store.cardinalities)
    trainer = FusedTrainer(model, lr=lr, threads=threads, **options)
    batch = int(cfg.datamodule.batch_size)
    batches = SliceBatches(store.ids("train"), store.labels("train", label), batch)
    order = BlockOrder(len(batches), int(cfg.seed), bool(cfg.datamodule.get("shuffle", True)))
    val_ids = np.asarray(store.ids("val"))
    val_labels = np.asarray(store.labels("val", label), dtype=np.float32)
    patience, min_delta, max_epochs = stopping(cfg)
    out = Candidate(lr)
    started = time.perf_counter()
    best, waited = -math.inf, 0
    for epoch in range(max_epochs):
        order.set_epoch(epoch)
        for b in order:
            ids, labels = batches[b]
            trainer.train_batch(ids.numpy(), labels.numpy())
        probs = torch.sigmoid(torch.from_numpy(fused_logits(model, val_ids))).numpy()
        auc = binary_metrics(val_labels, probs)["auc"]
        out.val_auc.append(float(auc))
        if not math.isfinite(auc):  # one class in val: the pipeline stops here too
            break
        if auc - min_delta > best:
            best, waited = auc, 0
        else:
            waited += 1
            if waited >= patience:
                break
    out.seconds = time.perf_counter() - started
    return out


def choose_lr(
    cfg: DictConfig, store: EncodedStore, label: str, threads: int = 1
) -> SearchResult | None:
    """The grid's rate with the best val AUC (the first of equals; the grid's first where no
    candidate has a finite val AUC), trying the rates in grid order until one scores below the
    best before it. A one-rate grid's rate without a search; None where no search runs: an
    explicit optimizer.lr, no grid, or more training rows than `max_train_rows` (logged)."""
    settings = search_settings(cfg)
    if settings is None:
        return None
    grid = [float(x) for x in settings["grid"]]
    if any(not x > 0 for x in grid):
        raise ConfigError(f"optimizer.lr_search.grid: every rate must be > 0, got {grid}")
    limit = settings.get("max_train_rows")
    rows = store.rows("train")
    if len(grid) == 1:
        return SearchResult(grid[0], [], "optimizer.lr_search.grid has one rate")
    if limit is not None and rows > int(limit):
        log.info(
            "lr search skipped: %d training rows > optimizer.lr_search.max_train_rows=%d",
            rows,
            int(limit),
        )
        return None
    options = dict(OmegaConf.to_container(cfg.optimizer.fused, resolve=True) or {})
    candidates: list[Candidate] = []
    for lr in grid:
        c = train_candidate(cfg, store, label, lr, options, threads)
        log.info(
            "lr search: lr %g, val AUC by epoch %s (%.1f s)",
            lr,
            " ".join(f"{a:.4f}" for a in c.val_auc),
            c.seconds,
        )
        # Val AUC is taken as unimodal along the grid: once a rate scores below the best so
        # far, the rates after it are not tried (on the synthetic shapes 0.05 < 0.02 saves 0.1).
        # A val split with one class scores no rate: the grid's first trains.
        previous = max((p.best for p in candidates), default=-math.inf)
        candidates.append(c)
        if not math.isfinite(c.best) or c.best < previous:
            break
    scored = [c for c in candidates if math.isfinite(c.best)]
    if not scored:
        return SearchResult(grid[0], candidates, "no finite val AUC: the grid's first rate")
    chosen = max(scored, key=lambda c: c.best)  # max keeps the first of equals
    reason = f"best val AUC {chosen.best:.4f} of " + ", ".join(
        f"{c.lr:g}: {c.best:.4f}" for c in candidates
    )
    return SearchResult(chosen.lr, candidates, reason)


def with_lr(cfg: DictConfig, lr: float) -> DictConfig:
    """A copy of `cfg` with optimizer.lr set."""
    out = cfg.copy()
    with open_dict(out):
        out.optimizer.lr = float(lr)
    return out
