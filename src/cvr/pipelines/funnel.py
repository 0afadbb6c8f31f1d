"""Wiring of the funnel tasks (`task=ctr|cvr|ctcvr|esmm`, `cvr.tasks`) into the training pipeline.

Without a `task` node the pipeline trains one label as before (`label=`); `legacy_task` says
which task that label means. With one, `FunnelDataModule` and `FunnelModule` train and score it,
early stopping and the best checkpoint follow `task.monitor`, and for `task=esmm` the `model`
choice names the towers: `model=ffm task=esmm` is ESMM with FFM towers (registry name `esmm`,
options `tower`, `share_embedding`, `private_dim` from the `esmm` node).
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cvr.data.store import EncodedStore
from cvr.models import registry
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
