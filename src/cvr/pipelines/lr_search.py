"""The fused backend's learning rate chosen on validation from a short grid (README "Recipe").

No one per-example AdaGrad rate suits every dataset: synthetic Criteo-like shapes (10 and 39
fields, 50k-290k rows) are best at 0.02 and lose 0.004-0.012 test AUC at 0.1, while movielens
(3 fields, 10k rows) gains 0.005-0.022 AUC and 0.012-0.028 logloss from 0.02 to 0.1 (3 seeds).
So with `optimizer.lr: null` the fused backend trains the rates of `optimizer.lr_search.grid`
the way the pipeline will (same model init, same batches in the same order, the same early
stopping on val AUC), scores each by the val logloss of the epoch its checkpoint would keep (the
best val AUC's), and the pipeline then trains the best rate as usual. Measured with
scripts/recipe_check.py: that score picks 0.02 on every Criteo-shape synthetic set, 0.1 on
movielens at seeds 0-2 and 0.2 on the implicit-feedback shapes (data=synthetic_implicit*); the
kept epoch's val AUC itself (1,256 val rows) picked 0.05 at seeds 1 and 2.

The grid's first rate is not trained twice: the pipeline's own Lightning run at that rate is the
first candidate (`candidate_from_run`, its val figures per epoch and its checkpoint's kept
epoch), and only the later rates train here, through the kernels directly (no Lightning, no
checkpoints): such a candidate costs about what its training epochs cost. With one thread both
paths are deterministic and give the same val figures at every epoch (tests/e2e/
test_lr_search.py), so the walk chooses as if every rate had trained here. Only where a later
rate wins does the pipeline train again, at that rate. `max_train_rows` bounds the cost: a larger
training split trains `default_lr` without a search. The outcome is written to the run folder
(`write_outcome`, `lr_search.json`) so that a resumed run reuses it (`read_outcome`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from cvr.data.datamodule import BlockOrder, SliceBatches
from cvr.data.store import EncodedStore
from cvr.metrics import binary_metrics
from cvr.models.registry import build_model
from cvr.ops.manifest import write_json_atomic
from cvr.pipelines.errors import ConfigError

log = logging.getLogger(__name__)

#: The search's outcome in the run folder, read by a resumed run (`read_outcome`).
OUTCOME_FILE = "lr_search.json"


@dataclass
class Candidate:
    """One rate's search run: val AUC and logloss of each epoch it trained."""

    lr: float
    val_auc: list[float] = field(default_factory=list)
    val_logloss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    #: The epoch the pipeline's run kept (0-based), for the candidate that is that run.
    kept_epoch: int | None = None
    #: True for the pipeline's own run (`candidate_from_run`): not a cost of the search.
    is_run: bool = False

    @property
    def best_epoch(self) -> int | None:
        """Index of the epoch the run's checkpoint keeps or would keep: the first with the
        highest val AUC (None if no epoch has a finite one)."""
        if self.kept_epoch is not None:
            return self.kept_epoch
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
        if self.candidates:  # what the search added: the run's own training is not counted
            out["train/lr_search_seconds"] = sum(c.seconds for c in self.candidates if not c.is_run)
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


def search_grid(cfg: DictConfig, store: EncodedStore) -> list[float] | None:
    """The rates to try, checked; None where no search runs: an explicit optimizer.lr, no grid,
    or more training rows than `max_train_rows` (logged)."""
    settings = search_settings(cfg)
    if settings is None:
        return None
    grid = [float(x) for x in settings["grid"]]
    if any(not x > 0 for x in grid):
        raise ConfigError(f"optimizer.lr_search.grid: every rate must be > 0, got {grid}")
    limit = settings.get("max_train_rows")
    rows = store.rows("train")
    if len(grid) > 1 and limit is not None and rows > int(limit):
        log.info(
            "lr search skipped: %d training rows > optimizer.lr_search.max_train_rows=%d",
            rows,
            int(limit),
        )
        return None
    return grid


def candidate_from_run(
    lr: float, val_by_epoch: dict[int, dict[str, float]], kept_epoch: int | None, seconds: float
) -> Candidate | None:
    """The pipeline's own run at `lr` as a candidate: its val AUC and logloss per epoch
    (0-based epoch -> `val/...` figures) and the epoch its checkpoint kept; None (logged) if
    epochs are missing (a run resumed from a checkpoint without its val history)."""
    epochs = sorted(val_by_epoch)
    if not epochs or epochs != list(range(len(epochs))):
        log.info(
            "lr search: the run's val figures miss epochs (%s); lr %g trains again", epochs, lr
        )
        return None
    auc = [float(val_by_epoch[e].get("val/auc", math.nan)) for e in epochs]
    logloss = [float(val_by_epoch[e].get("val/logloss", math.nan)) for e in epochs]
    return Candidate(lr, auc, logloss, seconds, kept_epoch=kept_epoch, is_run=True)


def choose_lr(
    cfg: DictConfig,
    store: EncodedStore,
    label: str,
    threads: int = 1,
    first: Candidate | None = None,
) -> SearchResult | None:
    """The grid's rate with the lowest score (`Candidate.score`; the first of equals; the
    grid's first where no candidate has a best epoch), trying the rates in grid order until
    `optimizer.lr_search.walk_patience` in a row score worse than the best before them.
    `first`, the pipeline's run at the grid's first rate, stands for that rate instead of
    training it here. A one-rate grid's rate without a search; None where no search runs
    (`search_grid`)."""
    grid = search_grid(cfg, store)
    if grid is None:
        return None
    if len(grid) == 1:
        return SearchResult(grid[0], [], "optimizer.lr_search.grid has one rate")
    if first is not None and first.lr != grid[0]:
        raise ValueError(f"the run trained lr {first.lr:g}, not the grid's first {grid[0]:g}")
    options = dict(OmegaConf.to_container(cfg.optimizer.fused, resolve=True) or {})
    # how many rates in a row may score worse than the best before the walk stops (README Recipe)
    walk_patience = int((search_settings(cfg) or {}).get("walk_patience", 1))
    candidates: list[Candidate] = []
    worse = 0
    for lr in grid:
        if first is not None and lr == grid[0]:
            c = first
        else:
            c = train_candidate(cfg, store, label, lr, options, threads)
        log.info(
            "lr search: lr %g%s, val AUC by epoch %s; kept epoch's val logloss %.4f (%.1f s)",
            lr,
            " (this run)" if c.is_run else "",
            " ".join(f"{a:.4f}" for a in c.val_auc),
            c.score,
            c.seconds,
        )
        # The score is taken as nearly unimodal along the grid: once `walk_patience` rates in a
        # row score worse than the best so far, the rates after them are not tried (the
        # synthetic shapes: 0.05 and 0.1 are worse than 0.02, so 0.2 never trains). A val split
        # with one class scores no rate (no best epoch): the grid's first trains.
        previous = min((p.score for p in candidates), default=math.inf)
        candidates.append(c)
        worse = worse + 1 if c.score > previous else 0
        if not math.isfinite(c.score) or worse >= walk_patience:
            break
    scored = [c for c in candidates if math.isfinite(c.score)]
    if not scored:
        return SearchResult(grid[0], candidates, "no finite val AUC: the grid's first rate")
    chosen = min(scored, key=lambda c: c.score)  # min keeps the first of equals
    reason = f"lowest val logloss {chosen.score:.4f} at the best-AUC epoch, of " + ", ".join(
        f"{c.lr:g}: {c.score:.4f}" for c in candidates
    )
    return SearchResult(chosen.lr, candidates, reason)


def write_outcome(run_dir: Path, result: SearchResult) -> None:
    """`result` as `run_dir/lr_search.json` (atomic), for a resumed run to reuse."""
    payload = {"lr": result.lr, "reason": result.reason}
    payload["candidates"] = [asdict(c) for c in result.candidates]
    write_json_atomic(Path(run_dir) / OUTCOME_FILE, payload)


def read_outcome(run_dir: Path) -> SearchResult | None:
    """The outcome an earlier run wrote to `run_dir` (None if it wrote none: its search had
    not finished). A file that does not parse fails naming it."""
    path = Path(run_dir) / OUTCOME_FILE
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text())
        candidates = [Candidate(**c) for c in payload["candidates"]]
        return SearchResult(float(payload["lr"]), candidates, str(payload["reason"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not an lr search outcome ({exc})") from None


def resumed_outcome(
    run_dir: Path, checkpoint_lr: float | None, grid: list[float]
) -> SearchResult | None:
    """What a run resumed from a checkpoint of `run_dir` trains at: the search recorded there
    (`read_outcome`) where it agrees with the rate the checkpoint trained at; the checkpoint's
    rate alone where no search is recorded for it; None for a checkpoint of the search's first
    run at the grid's first rate, whose search had not finished (the run goes on from it)."""
    outcome = read_outcome(run_dir)
    if checkpoint_lr is None:  # a checkpoint older than its rate's record
        return outcome
    if outcome is not None and outcome.lr == checkpoint_lr:
        return outcome
    if checkpoint_lr == grid[0]:
        return None
    return SearchResult(checkpoint_lr, [], f"the resumed checkpoint's rate ({run_dir})")


def with_lr(cfg: DictConfig, lr: float) -> DictConfig:
    """A copy of `cfg` with optimizer.lr set."""
    out = cfg.copy()
    with open_dict(out):
        out.optimizer.lr = float(lr)
    return out


class LearningRateRecord(L.Callback):
    """The rate the module's backend trains at, kept in each checkpoint, so that a resumed run
    knows which rate its checkpoint is of (`resumed_search`)."""

    lr: float | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        backend = getattr(pl_module, "backend", None)
        self.lr = float(backend.lr) if backend is not None else None

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass  # the resumed run's rate is chosen before it is built (resumed_search)


def resumed_search(checkpoint: Path, grid: list[float]) -> SearchResult | None:
    """The lr search a run resumed from `checkpoint` reuses (resumed_outcome)."""
    from cvr.checkpointing import load_checkpoint

    state = load_checkpoint(checkpoint).get("callbacks", {}).get(LearningRateRecord.__qualname__)
    lr = (state or {}).get("lr")
    return resumed_outcome(checkpoint.parent.parent, lr, grid)


def discard_checkpoints(trainer: L.Trainer) -> None:
    """Remove the checkpoints `trainer`'s checkpoint callbacks hold (a run that is not the
    model: resume and test must never find them); nothing else in their folders, and nothing
    outside them (a resumed run's callback may hold the earlier run's best)."""
    for callback in trainer.checkpoint_callbacks:
        held = {*callback.best_k_models, callback.best_model_path, callback.last_model_path}
        folder = Path(callback.dirpath).absolute() if callback.dirpath else None
        for path in filter(None, held):
            if folder is not None and folder in Path(path).absolute().parents:
                Path(path).unlink(missing_ok=True)
