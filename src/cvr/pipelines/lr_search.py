"""The fused backend's learning rate chosen on validation from a short grid (README "Recipe").

No one per-example AdaGrad rate suits every dataset: synthetic Criteo-like shapes (10 and 39
fields, 50k-290k rows) are best at 0.02 and lose 0.004-0.012 test AUC at 0.1, while movielens
(3 fields, 10k rows) gains 0.005-0.022 AUC and 0.012-0.028 logloss from 0.02 to 0.1 (3 seeds).
So with `optimizer.lr: null` the fused backend trains the rates of `optimizer.lr_search.grid`
the way the pipeline will (same model init, same batches in the same order, the same early
stopping on val AUC), scores each by the val logloss of the epoch its checkpoint would keep (the
best val AUC's), and the pipeline then trains the best rate as usual. Measured with
scripts/recipe_check.py: that score picks 0.02 on every synthetic shape and 0.1 on movielens
at seeds 0-2; the kept epoch's val AUC itself (1,256 val rows) picked 0.05 at seeds 1 and 2.

The search calls the kernels directly (no Lightning, no checkpoints): a candidate costs about
what its training epochs cost. `max_train_rows` bounds that cost: a larger training split
trains `default_lr` without a search. With one thread training is deterministic, so the
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
    """One rate's search run: val AUC and logloss of each epoch it trained."""

    lr: float
    val_auc: list[float] = field(default_factory=list)
    val_logloss: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def best_epoch(self) -> int | None:
        """Index of the epoch the run's checkpoint would keep: the first with the highest val
        AUC (None if no epoch has a finite one)."""
        finite = [i for i, a in enumerate(self.val_auc) if math.isfinite(a)]
        return max(finite, key=lambda i: (self.val_auc[i], -i)) if finite else None

    @property
    def best(self) -> float:
        """The best epoch's val AUC (nan without one)."""
        i = self.best_epoch
        return self.val_auc[i] if i is not None else float("nan")

    @property
    def score(self) -> float:
        """What the search ranks by, lower is better: the val logloss of the epoch the
        checkpoint would keep (nan without one)."""
        i = self.best_epoch
        return self.val_logloss[i] if i is not None else float("nan")


@dataclass
class SearchResult:
    lr: float
    candidates: list[Candidate]
    reason: str

    def metrics(self) -> dict[str, float]:
        """Summary figures for the run's metrics: each candidate's kept epoch's val AUC and
        logloss, and the search's seconds."""
        out = {}
        for c in self.candidates:
            out[f"train/lr_search/{c.lr:g}/val_auc"] = c.best
            out[f"train/lr_search/{c.lr:g}/val_logloss"] = c.score
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
    """Train one rate as the pipeline would and record val AUC and logloss per epoch, until
    the early stopping rule (or max_epochs) ends it."""
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
        scores = binary_metrics(val_labels, probs)
        auc = scores["auc"]
        out.val_auc.append(float(auc))
        out.val_logloss.append(float(scores["logloss"]))
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
    """The grid's rate with the lowest score (`Candidate.score`; the first of equals; the
    grid's first where no candidate has a best epoch), trying the rates in grid order until one
    scores worse than the best before it. A one-rate grid's rate without a search; None where
    no search runs: an explicit optimizer.lr, no grid, or more training rows than
    `max_train_rows` (logged)."""
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
            "lr search: lr %g, val AUC by epoch %s; kept epoch's val logloss %.4f (%.1f s)",
            lr,
            " ".join(f"{a:.4f}" for a in c.val_auc),
            c.score,
            c.seconds,
        )
        # The score is taken as unimodal along the grid: once a rate scores worse than the
        # best so far, the rates after it are not tried (the synthetic shapes: 0.05 is worse
        # than 0.02, so 0.1 never trains). A val split with one class scores no rate (no best
        # epoch): the grid's first trains.
        previous = min((p.score for p in candidates), default=math.inf)
        candidates.append(c)
        if not math.isfinite(c.score) or c.score > previous:
            break
    scored = [c for c in candidates if math.isfinite(c.score)]
    if not scored:
        return SearchResult(grid[0], candidates, "no finite val AUC: the grid's first rate")
    chosen = min(scored, key=lambda c: c.score)  # min keeps the first of equals
    reason = f"lowest val logloss {chosen.score:.4f} at the best-AUC epoch, of " + ", ".join(
        f"{c.lr:g}: {c.score:.4f}" for c in candidates
    )
    return SearchResult(chosen.lr, candidates, reason)


def with_lr(cfg: DictConfig, lr: float) -> DictConfig:
    """A copy of `cfg` with optimizer.lr set."""
    out = cfg.copy()
    with open_dict(out):
        out.optimizer.lr = float(lr)
    return out
