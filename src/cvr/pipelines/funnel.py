"""Wiring of the funnel tasks (`task=ctr|cvr|ctcvr|esmm`, `cvr.tasks`) into the training pipeline.

Without a `task` node the pipeline trains one label as before (`label=`); `legacy_task` says
which task that label means. With one, `FunnelDataModule` and `FunnelModule` train and score it,
early stopping and the best checkpoint follow `task.monitor`, and for `task=esmm` the `model`
choice names the towers: `model=ffm task=esmm` is ESMM with FFM towers (registry name `esmm`,
options `tower`, `share_embedding`, `private_dim` from the `esmm` node).

`optimizer.l2_prior=lam` (the CVR study's regulariser, README "The CVR study") is one Gaussian
prior for every arm: a penalty lam/2 ||w||^2 on the loss *summed* over the rows an arm trains on.
torch's weight decay is a penalty on the batch *mean*, so the same prior is weight_decay =
lam / rows: naive CVR (its ~5% clicked rows) gets 20x the decay of ESMM (every impression).
Equivalently, both get the same decay per epoch (lr x lam / batch size, whatever the steps per
epoch), where one weight_decay would decay ESMM 20x harder per epoch relative to its data.

`datamodule.steps_per_epoch=N` is the same idea for the batch size: each run's batch is
ceil(its training rows / N), clamped to [datamodule.min_batch_size, datamodule.batch_size], so
arms that train on 20x fewer rows (naive CVR on the clicked ones) still take ~N optimizer steps
an epoch instead of a handful; `batch_size` is then the ceiling. null (the default) keeps
`batch_size` for every run.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from cvr.data.funnel_batches import train_rows
from cvr.data.store import EncodedStore
from cvr.models import registry
from cvr.pipelines.config_check import check_numbers
from cvr.pipelines.errors import ConfigError
from cvr.tasks import Task, TaskError, make_task, task_of_label

log = logging.getLogger(__name__)


def task_from_config(cfg: DictConfig, store: EncodedStore | None = None) -> Task | None:
    """The run's Task, or None where no `task` is chosen (the single-label path).

    Refuses `task` together with `label` (the task decides the label), and a task whose labels
    the store lacks, with the key named.
    """
    node = cfg.get("task")
    if not node:
        return None
    if cfg.get("label"):
        raise TaskError(
            f"label={cfg.label} and task={node.get('name')} both given: the task decides what "
            "trains (task=ctr: click, cvr: conversion on clicks, ctcvr: click AND conversion, "
            "esmm: both); drop label"
        )
    task = make_task(str(node.get("name")), node.get("monitor"), str(node.get("monitor_mode")))
    if store is not None:
        task.check_labels(store.label_names, f"data={store.meta.get('name', store.path)}")
    return task


def legacy_task(label: str, store: EncodedStore) -> str:
    """The task name the old `label=` key means here, logged in one sentence."""
    name, sentence = task_of_label(label, store.label_names)
    log.info("%s", sentence)
    return name


def model_node(cfg: DictConfig) -> dict[str, Any]:
    """The `model` record the registry builds: the model node, or ESMM over its towers."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    node = cfg.get("task")
    if not node or node.get("name") != "esmm":
        return model
    tower = registry.model_spec(model).name  # a config names its model by _target_ or name
    esmm = cfg.get("esmm") or {}
    share = esmm.get("share_embedding", True)
    return {
        "name": "esmm",
        "tower": tower,
        "share_embedding": share,
        # Without a shared table each tower's table is all its own: nothing to add beside it.
        "private_dim": esmm.get("private_dim", 0) if share else 0,
    }


def with_task_model(cfg: DictConfig) -> DictConfig:
    """`cfg` with `model` replaced by `model_node(cfg)` (what builds and what a bundle records)."""
    node = model_node(cfg)
    if node.get("name") != "esmm":
        return cfg
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    out.model = node
    return out


def monitor_overrides(cfg: DictConfig, callback: Any) -> dict[str, Any]:
    """{monitor, mode} from the task for a callback node that monitors a metric, else {}."""
    node = cfg.get("task")
    if not node or not hasattr(callback, "get") or callback.get("monitor") is None:
        return {}
    task = make_task(str(node.get("name")), node.get("monitor"), str(node.get("monitor_mode")))
    return {"monitor": task.monitor, "mode": task.monitor_mode}


def prior_weight_decay(l2_prior: float, rows: int) -> float:
    """The weight decay of a batch-mean loss equal to a penalty l2_prior/2 ||w||^2 on the summed
    loss over `rows` training rows: l2_prior / rows."""
    if rows <= 0:
        raise ConfigError(f"optimizer.l2_prior: the run trains on {rows} rows, expected >= 1")
    return float(l2_prior) / rows


def with_l2_prior(cfg: DictConfig, store: EncodedStore, task: Task | None) -> DictConfig:
    """`cfg` with optimizer.dense.weight_decay = optimizer.l2_prior / the rows this run trains
    on (the module doc), logged; `cfg` itself where no l2_prior is set.

    Refuses an explicit nonzero weight decay beside it, the fused backend (its kernels take
    `optimizer.fused.weight_decay`, a per-example rule) and sparse table gradients (torch's
    AdaGrad refuses weight decay on them), each with the key named.
    """
    prior = cfg.optimizer.get("l2_prior")
    if prior is None:
        return cfg
    if float(prior) < 0:
        raise ConfigError(f"optimizer.l2_prior: expected >= 0 or null, got {prior}")
    decay = cfg.optimizer.dense.get("weight_decay")
    if decay:
        raise ConfigError(
            f"optimizer.l2_prior={prior} sets the weight decay of each arm (l2_prior / its "
            f"training rows); drop optimizer.dense.weight_decay={decay}, or set "
            "optimizer.l2_prior=null"
        )
    if cfg.backend.name != "autograd":
        raise ConfigError(
            f"optimizer.l2_prior is a torch optimiser's weight decay: it needs backend=autograd, "
            f"got backend={cfg.backend.name}"
        )
    if cfg.get("embedding", {}).get("sparse"):
        raise ConfigError(
            "optimizer.l2_prior needs embedding.sparse=false: torch's AdaGrad refuses weight "
            "decay on sparse gradients"
        )
    rows = train_rows(store, "train", task) if task is not None else store.rows("train")
    weight_decay = prior_weight_decay(float(prior), rows)
    log.info(
        "optimizer.l2_prior %g over %d training rows: weight_decay %.4g", prior, rows, weight_decay
    )
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    out.optimizer.dense.weight_decay = weight_decay
    return out


#: datamodule keys that choose the batch size and are not StoreDataModule arguments.
BATCH_RULE_KEYS = ("steps_per_epoch", "min_batch_size")


def batch_for_steps(rows: int, steps_per_epoch: int, min_batch: int, max_batch: int) -> int:
    """ceil(rows / steps_per_epoch) clamped to [min_batch, max_batch] (the module doc)."""
    return max(min_batch, min(max_batch, math.ceil(rows / steps_per_epoch)))


def with_steps_per_epoch(cfg: DictConfig, store: EncodedStore, task: Task | None) -> DictConfig:
    """`cfg` with datamodule.batch_size from datamodule.steps_per_epoch and the rows this run
    trains on (the module doc), logged, and the rule's keys removed from `datamodule` (what is
    left are StoreDataModule's arguments); `cfg` itself where the node has neither key.

    Refuses a steps_per_epoch or min_batch_size that is not an integer >= 1, and a
    min_batch_size above batch_size (the ceiling), each with the key named.
    """
    node = cfg.get("datamodule") or {}
    if not any(key in node for key in BATCH_RULE_KEYS):
        return cfg
    steps = node.get("steps_per_epoch")
    out = copy.deepcopy(cfg)  # interpolations stay unresolved, as in `cfg`
    with open_dict(out):
        for key in BATCH_RULE_KEYS:
            out.datamodule.pop(key, None)
    if steps is None:
        return out
    check_numbers(cfg, tuple(f"datamodule.{k}" for k in (*BATCH_RULE_KEYS, "batch_size")))
    floor, ceiling = node.get("min_batch_size", 1), node.get("batch_size")
    if floor > ceiling:
        raise ConfigError(
            f"datamodule.min_batch_size={floor} is above datamodule.batch_size={ceiling}, the "
            "ceiling of the batch that datamodule.steps_per_epoch chooses; expected "
            "min_batch_size <= batch_size"
        )
    rows = train_rows(store, "train", task) if task is not None else store.rows("train")
    batch = batch_for_steps(rows, steps, floor, ceiling)
    log.info(
        "datamodule.steps_per_epoch %d over %d training rows: batch_size %d (%d steps an epoch)",
        steps,
        rows,
        batch,
        math.ceil(rows / batch) if rows else 0,
    )
    out.datamodule.batch_size = batch
    return out
