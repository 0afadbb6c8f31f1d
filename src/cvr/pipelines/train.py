"""The training pipeline: config -> store -> model -> Lightning fit/test -> MLflow.

This is the only place that wires config to objects; modules never read global config.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from cvr.backends import Optimization, select_backend
from cvr.backends.distributed import is_main_process, strategy_name
from cvr.checkpointing import AtomicCheckpointIO, resume_checkpoint
from cvr.data.datamodule import StoreDataModule
from cvr.data.funnel_batches import FunnelDataModule
from cvr.data.store import EncodedStore
from cvr.models.funnel_module import FunnelModule
from cvr.models.module import CTRModule
from cvr.models.registry import build_model
from cvr.ops.manifest import fingerprint, write_json_atomic
from cvr.pipelines import funnel, lr_search
from cvr.pipelines.config_check import check_config
from cvr.pipelines.ddp_launch import forget_previous_launch, launch_only_this_job
from cvr.pipelines.errors import ConfigError
from cvr.pipelines.run_lifecycle import (
    final_status,
    missing_outputs,
    owner_record,
    refuse_if_alive,
    signals_as_exceptions,
    taker,
)
from cvr.pipelines.run_summary import (
    ValidationByEpoch,
    metrics_table,
    oracle_metrics,
    training_summary,
)
from cvr.quiet import quiet_third_party
from cvr.tracking import mlflow_runs, run_names, training_run
from cvr.tracking.sweep import sweep_context
from cvr.tracking.tracker import Tracker, discard_prestarted, tracker_for

log = logging.getLogger(__name__)

RUN_INFO = "run_info.json"
#: Rank 0's resume checkpoint, for the DDP processes it launches (they inherit its environment).
_RESUME_ENV = "CVR_RESUME_CHECKPOINT"
# Keys that do not change what a run computes; excluded from the resume identity.
_NON_IDENTITY_KEYS = (
    "resume",
    "paths",
    "print_table",
    "logger",
    "checkpoint_every_n_steps",
    "export_bundle",
    "publish",
)


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("cvr_pid", lambda: os.getpid(), replace=True)


def build_store(cfg: DictConfig) -> EncodedStore:
    return hydra.utils.instantiate(cfg.data, cache_root=cfg.paths.cache_dir, _convert_="all")


def build_optimization(cfg: DictConfig) -> Optimization:
    """The optimiser of the config (`conf/optimizer`), for whichever backend trains."""
    opt = cfg.optimizer
    return Optimization(
        name=str(opt.name),
        lr=opt.get("lr"),
        default_lr=OmegaConf.to_container(opt.default_lr, resolve=True),
        dense=hydra.utils.instantiate(opt.dense),
        sparse=hydra.utils.instantiate(opt.sparse) if opt.get("sparse") else None,
        fused=OmegaConf.to_container(opt.fused, resolve=True) if opt.get("fused") else None,
    )


def build_module(
    cfg: DictConfig, model: torch.nn.Module, trainer: L.Trainer, task=None
) -> CTRModule:
    """The CTRModule (a FunnelModule for a `task`) with the backend `select_backend` picks for
    this trainer (logged, and why)."""
    backend, reason = select_backend(
        model,
        cfg.backend.name,
        trainer.strategy.root_device,
        strategy_name(trainer),
        optimization=build_optimization(cfg),
        threads=int(cfg.backend.threads),
    )
    if trainer.is_global_zero:
        log.info("backend: %s (lr %g)", reason, backend.lr)
    module = FunnelModule(model, backend, task) if task else CTRModule(model, backend)
    module.backend_reason = reason
    return module


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    nodes = [c for c in (cfg.get("callbacks") or {}).values() if c]
    # A task's monitor (task.monitor) replaces the callbacks' default `val/auc`.
    callbacks = [hydra.utils.instantiate(c, **funnel.monitor_overrides(cfg, c)) for c in nodes]
    every = cfg.get("checkpoint_every_n_steps")
    if every:
        # Crash safety on long epochs: last.ckpt is also refreshed every N steps. A separate
        # callback because Lightning's step and epoch triggers are mutually exclusive.
        from lightning.pytorch.callbacks import ModelCheckpoint

        callbacks.append(
            ModelCheckpoint(
                dirpath=Path(cfg.paths.output_dir) / "checkpoints",
                every_n_train_steps=int(every),
                save_top_k=0,
                save_last=True,
            )
        )
    return callbacks


def training_label(cfg: DictConfig, store: EncodedStore) -> str:
    label = cfg.get("label") or store.info.label
    if label not in store.label_names:
        raise ConfigError(
            f"label: {label!r} is not a label of this dataset; choose from {store.label_names}"
        )
    funnel.legacy_task(label, store)  # says which task this label means (task= is explicit)
    return label


def run_identity(cfg: DictConfig) -> str:
    """Hash of everything that determines the results (not paths, logging or resume)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for key in _NON_IDENTITY_KEYS:
        resolved.pop(key, None)
    # Per-run folders (checkpoint dirpath, trainer root) differ between a run and its resume.
    text = json.dumps(resolved, sort_keys=True, default=str)
    return fingerprint(text.replace(str(cfg.paths.output_dir), "<output_dir>"))


def find_resume_checkpoint(cfg: DictConfig, identity: str) -> tuple[Path, dict] | None:
    """The newest last.ckpt of an earlier run with the same identity (or the path given)."""
    if cfg.resume in (False, None, "false"):
        return None
    if cfg.resume is not True:
        path = Path(str(cfg.resume))
        ckpt = path / "checkpoints" / "last.ckpt" if path.is_dir() else path
        if not ckpt.is_file():
            raise FileNotFoundError(f"resume: no checkpoint at {ckpt}")
        info_path = ckpt.parent.parent / RUN_INFO
        return ckpt, json.loads(info_path.read_text()) if info_path.is_file() else {}
    root = Path(cfg.paths.output_root)
    candidates = []
    for info_path in list(root.glob(f"runs/*/{RUN_INFO}")) + list(
        root.glob(f"multirun/*/*/{RUN_INFO}")
    ):
        info = json.loads(info_path.read_text())
        ckpt = info_path.parent / "checkpoints" / "last.ckpt"
        # Any checkpoint counts: a run stopped while Lightning re-pointed the last.ckpt link
        # (remove, then symlink) has none, and resume_checkpoint falls back to the newest.
        saved = [p.stat().st_mtime for p in ckpt.parent.glob("*.ckpt") if p.is_file()]
        if info.get("identity") == identity and saved:
            candidates.append((max(saved), ckpt, info))
    if not candidates:
        log.warning("resume=true: no earlier run of this config with a checkpoint; starting fresh")
        return None
    _, ckpt, info = max(candidates, key=lambda c: c[0])
    return ckpt, info


def logs_model(cfg: DictConfig) -> bool:
    """Whether the run logs its bundle as an MLflow model (`logger.log_model`, needs a bundle)."""
    return bool(cfg.logger.get("log_model", False) and cfg.get("export_bundle", True))


def start_tracking(
    cfg: DictConfig, output_dir: Path, resume_info: dict | None, tracker: Tracker | None
) -> str | None:
    """The MLflow run of this job (resumed, or new and a child of a sweep's parent)."""
    if tracker is None:
        return None
    if resume_info and resume_info.get("mlflow_run_id"):
        return resume_info["mlflow_run_id"]
    tracking = cfg.logger
    sweep = sweep_context()
    run_id = tracker.ask(
        "start_run",
        tracking.tracking_uri,
        tracking.experiment,
        run_name=run_names.run_display_name(cfg, sweep),
        tags={
            "git_commit": mlflow_runs.git_commit(cfg.paths.root_dir),
            "output_dir": str(output_dir),
            **run_names.run_tags(cfg),
            **({"sweep_id": sweep["sweep_id"], "sweep_role": "child"} if sweep else {}),
        },
        artifact_root=tracking.get("artifact_root"),
        parent_run_id=sweep["parent_run_id"] if sweep else None,
        unique_name=True,
    )
    resolved = OmegaConf.to_container(cfg, resolve=True)
    tracker.call("log_config", tracking.tracking_uri, run_id, resolved)
    return run_id


def make_trainer(
    cfg: DictConfig, run_id: str | None, tracker: Tracker | None
) -> tuple[L.Trainer, ValidationByEpoch, Any]:
    """A Trainer with the config's callbacks, the val history and, with an MLflow run, its
    epoch-curve logger (returned too: None without a run)."""
    curves = None
    if run_id is not None:
        from cvr.tracking.epoch_logger import EpochMlflowLogger

        # Curves at step = epoch; summary metrics are logged once when the run ends.
        curves = EpochMlflowLogger(tracker, cfg.logger.tracking_uri, run_id)
    val_history = ValidationByEpoch()
    trainer = hydra.utils.instantiate(cfg.trainer)(
        callbacks=[*build_callbacks(cfg), val_history, lr_search.LearningRateRecord()],
        logger=[curves] if curves is not None else False,
        # Temp name in the checkpoint folder, then rename; fsynced when fit ends (checkpointing).
        plugins=[AtomicCheckpointIO(sync_each=False)],
    )
    return trainer, val_history, curves


def fit_and_test(
    cfg: DictConfig,
    resume_ckpt: Path | None,
    run_id: str | None,
    tracker: Tracker | None = None,
) -> dict:
    """Build everything from the config, fit, test the best checkpoint; returns metrics."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    store = build_store(cfg)
    task = funnel.task_from_config(cfg, store)
    label = task.train_label if task else training_label(cfg, store)
    cfg = funnel.with_task_model(cfg)  # task=esmm: the model is ESMM over the chosen towers
    cfg = funnel.with_l2_prior(cfg, store, task)  # optimizer.l2_prior: decay = prior / rows
    cfg = funnel.with_steps_per_epoch(cfg, store, task)  # batch = rows / steps, clamped
    tracking = cfg.logger
    if run_id is not None:
        record = training_run.training_record(cfg, store, label)
        tracker.call("log_training_data", tracking.tracking_uri, run_id, record)
    if task is not None:
        datamodule = FunnelDataModule(store, task, seed=cfg.seed, **cfg.datamodule)
    else:
        datamodule = StoreDataModule(store, label=label, seed=cfg.seed, **cfg.datamodule)
    forget_previous_launch()  # an earlier sweep job's DDP launch, in this same process
    trainer, val_history, curves = make_trainer(cfg, run_id, tracker)
    module = build_module(cfg, build_model(cfg, store.cardinalities), trainer, task)
    grid = None
    if task is None and module.backend.name == "fused":  # optimizer.lr null: chosen on val
        grid = lr_search.search_grid(cfg, store)
    searched = None
    if grid is not None:
        # A resumed run reuses its search (the winner's rate); without one recorded, the
        # checkpoint is of the search's first candidate, this pipeline's run at the grid's first
        # rate, which the search goes on from once it is trained.
        searched = lr_search.resumed_search(resume_ckpt, grid) if resume_ckpt else None
        if searched is not None and searched.candidates:
            log.info("lr %g, the resumed run's search (%s)", searched.lr, searched.reason)
        lr = searched.lr if searched is not None else grid[0]
        search_cfg, cfg = cfg, lr_search.with_lr(cfg, lr)
        if curves is not None and searched is None and len(grid) > 1:
            curves.hold = True  # sent once the search says whether this run is the model
        if lr != module.backend.lr:
            L.seed_everything(cfg.seed, workers=True, verbose=False)  # the candidates' init
            module = build_module(cfg, build_model(cfg, store.cardinalities), trainer, task)
    if run_id is not None:
        tracker.call(
            "set_tags",
            tracking.tracking_uri,
            run_id,
            {
                "backend": module.backend.name,
                "backend_reason": module.backend_reason,
                "task": task.name if task else funnel.task_of_label(label, store.label_names)[0],
            },
        )
    launch_only_this_job(trainer.world_size)  # DDP inside a -m sweep: the children run this job
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_ckpt) if resume_ckpt else None)
    if grid is not None and searched is None:
        ckpt_cb = trainer.checkpoint_callback
        kept = training_summary(trainer, ckpt_cb.best_model_path if ckpt_cb else "")
        kept_epoch = int(kept["train/best_epoch"]) - 1 if "train/best_epoch" in kept else None
        first = lr_search.candidate_from_run(
            grid[0], val_history.by_epoch, kept_epoch, time.perf_counter() - started
        )
        threads = int(cfg.backend.threads)
        searched = lr_search.choose_lr(search_cfg, store, label, threads, first=first)
        log.info("lr %g (%s)", searched.lr, searched.reason)
        if searched.lr != grid[0]:  # a later rate won: this run's checkpoints and curves go
            lr_search.discard_checkpoints(trainer)
            if curves is not None:
                curves.release(prefix=f"lr_search/{grid[0]:g}/")
            lr_search.write_outcome(Path(cfg.paths.output_dir), searched)
            cfg = lr_search.with_lr(search_cfg, searched.lr)
            trainer, val_history, curves = make_trainer(cfg, run_id, tracker)
            L.seed_everything(cfg.seed, workers=True, verbose=False)  # the candidates' init
            module = build_module(cfg, build_model(cfg, store.cardinalities), trainer, task)
            trainer.fit(module, datamodule=datamodule)
    if searched is not None:
        if curves is not None and curves.hold:
            curves.release()
        lr_search.write_outcome(Path(cfg.paths.output_dir), searched)
    metrics = {k: v for k, v in module.last_metrics.items() if k.startswith("val/")}
    # The learning curve's ceiling (a FunnelModule scores the oracle of its own head and rows).
    val_oracle = oracle_metrics(store, "val", label) if task is None else {}
    if run_id is not None:  # drawn by the tracking process while this one tests and exports
        fitted = {k: float(v) for k, v in module.last_metrics.items() if np.isscalar(v)}
        tracker.call("log_plots", tracking.tracking_uri, run_id, {**fitted, **val_oracle})
    ckpt_cb = trainer.checkpoint_callback
    best = ckpt_cb.best_model_path if ckpt_cb is not None else ""
    trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    metrics.update(module.last_metrics)
    if task is None:
        metrics.update(oracle_metrics(store, "test", label))
        metrics.update(val_oracle)
    if "test/oracle_auc" in metrics:
        metrics["test/auc_gap"] = metrics["test/oracle_auc"] - metrics["test/auc"]
    metrics.update({f"data/skipped_{k}": float(v) for k, v in store.info.skipped.items()})
    metrics.update({f"data/rows_{s}": float(store.rows(s)) for s in ("train", "val", "test")})
    metrics["train/global_step"] = float(trainer.global_step)
    metrics.update(training_summary(trainer, best))
    metrics.update(val_history.best(metrics))  # val/... stay the last epoch's (MLflow's curves)
    metrics["train/processes"] = float(trainer.world_size)
    metrics["train/weight_decay"] = float(cfg.optimizer.dense.get("weight_decay") or 0.0)
    metrics["train/batch_size"] = float(cfg.datamodule.batch_size)
    metrics["train/lr"] = float(module.backend.lr)
    if searched is not None:
        metrics.update(searched.metrics())
    final = {k: float(v) for k, v in metrics.items() if np.isscalar(v)}
    if run_id is not None and not logs_model(cfg):
        # Summary, plots and summary.md: drawn by the tracking process while this one exports.
        tracker.call("finish_run", cfg.logger.tracking_uri, run_id, final, None, True)
    if cfg.get("export_bundle", True) and trainer.is_global_zero:
        from cvr.serving.bundle import export_from_training

        # The module holds the best checkpoint's weights after trainer.test; a resumed run
        # re-exports into the same folder.
        export_from_training(
            module,
            store,
            cfg,
            final,
            Path(cfg.paths.output_dir) / "bundle",
            checkpoint=best or None,
            overwrite=True,
        )
    return final


def _publish_settings(cfg: DictConfig):
    from cvr.vectorstore.versions import publish_settings

    try:
        default_uri = Path(cfg.paths.output_root) / "vectors.db"
        return publish_settings(cfg.get("publish", False), default_uri)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def publish_tables(
    cfg: DictConfig, settings, bundle: Path, run_id: str | None, tracker: Tracker | None = None
) -> None:
    """publish=true: the bundle's tables to a new collection version (cvr.vectorstore), the
    alias moved to it, and the collection and alias recorded as tags of the MLflow run."""
    from cvr.vectorstore.versions import publish

    result = publish(settings.uri, bundle, alias=settings.alias)
    log.info("published %s (%d rows) to %s", result.collection, result.rows, settings.uri)
    if run_id is not None:
        tags = {"uri": settings.uri, "collection": result.collection, "alias": result.alias}
        tags["rows"], tags["checksum"] = str(result.rows), result.checksum
        tags = {f"vectorstore.{k}": v for k, v in tags.items()}
        tracker.call("set_tags", cfg.logger.tracking_uri, run_id, tags)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job; returns its final metrics (val/..., test/..., oracle)."""
    quiet_third_party()
    output_dir = Path(cfg.paths.output_dir)
    if not is_main_process():
        # A DDP process the launcher started: rank 0 owns the MLflow run, run_info.json,
        # metrics.json and the bundle; this one trains its share from rank 0's checkpoint.
        inherited = os.environ.get(_RESUME_ENV)
        return fit_and_test(cfg, Path(inherited) if inherited else None, None)
    check_config(cfg)  # every value, before any folder or MLflow run exists
    output_dir.mkdir(parents=True, exist_ok=True)
    # MLflow calls go to the tracking process (cvr.tracking.tracker) train.py started early; it
    # opens the store while this one looks for a checkpoint to resume.
    tracker = tracker_for(cfg.logger) if cfg.logger.get("enabled") else None
    if tracker is None:
        discard_prestarted()
    else:
        tracker.call("begin_run")
        tracker.call("ensure_store", cfg.logger.tracking_uri)
    identity = run_identity(cfg)
    resume = find_resume_checkpoint(cfg, identity)
    if resume:  # a checkpoint that does not load falls back to the newest intact one
        resume = (resume_checkpoint(resume[0]), resume[1])
        refuse_if_alive(resume[1], resume[0].parent.parent)
    # DDP processes started later inherit this environment: one resume decision for all.
    os.environ[_RESUME_ENV] = str(resume[0]) if resume else ""
    run_id = start_tracking(cfg, output_dir, resume[1] if resume else None, tracker)
    write_json_atomic(
        output_dir / RUN_INFO,
        {
            "identity": identity,
            "run_name": run_names.run_display_name(cfg, sweep_context()),
            "mlflow_run_id": run_id,
            "resumed_from": str(resume[0]) if resume else None,
            **owner_record(),
        },
    )
    if resume and run_id is not None:
        tracker.call("take_over", cfg.logger.tracking_uri, run_id, resume[1], taker())
    if resume:
        log.info("resuming from %s", resume[0])
    publish_to = _publish_settings(cfg)  # a bad `publish` value fails before training
    try:
        with signals_as_exceptions():  # SIGTERM/SIGINT end the run as KILLED
            metrics = fit_and_test(cfg, resume[0] if resume else None, run_id, tracker)
            if publish_to is not None:
                publish_tables(cfg, publish_to, output_dir / "bundle", run_id, tracker)
            bundle = output_dir / "bundle"
            uri = cfg.logger.get("tracking_uri")
            if run_id is not None and logs_model(cfg):  # the model first: metrics link to it
                model_dir = str(bundle) if bundle.is_dir() else None
                tracker.call("finish_run", uri, run_id, metrics, model_dir, True)
            write_json_atomic(output_dir / "metrics.json", metrics)
            # FINISHED only once everything the run promised exists.
            promised = [output_dir / "metrics.json"]
            promised += [bundle / "manifest.json"] if cfg.get("export_bundle", True) else []
            missing = missing_outputs(promised)
            if missing:
                raise RuntimeError(f"run ended without {', '.join(map(str, missing))}")
            if run_id is not None:
                # Waits for everything sent before it; an earlier failed call fails the run.
                tracker.ask("end_run", uri, run_id, "FINISHED")
    except BaseException as exc:
        if run_id is not None:
            status = final_status(exc)
            tracker.ask("end_run", cfg.logger.tracking_uri, run_id, status, check=False)
        raise
    if cfg.get("print_table", True):
        print(f"\n{run_names.run_display_name(cfg, sweep_context())}  (output: {output_dir})")
        print(metrics_table(metrics))
        if run_id is not None:
            print(f"MLflow run {run_id}: mlflow ui --backend-store-uri {cfg.logger.tracking_uri}")
    return metrics
