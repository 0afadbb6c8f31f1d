"""What a training job writes to its MLflow run around fit, in the order the UI reads it.

- `log_training_data`: tags (model, dataset, task, embedding, k, backend, label, fingerprint)
  and the store as a dataset input, once the store is known (`training_record` computes them
  as plain data where the store is, `log_training_record` writes them where mlflow is);
- `log_plots`: the run's plots, once fit has ended (drawn from the epoch curves and the
  efficiency profile);
- `finish_run`: the bundle as a logged model named after the run, the summary metrics once and
  linked to that model, then summary.md (and the plots, if `log_plots` did not draw them).

Per-epoch curves are written during fit by `epoch_logger.EpochMlflowLogger`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from cvr.startup import late_import
from cvr.tracking import mlflow_runs, plots, run_names

log = logging.getLogger(__name__)

#: Metric prefixes written per epoch during fit, never again as a summary.
EPOCH_PREFIXES = ("val/", "train/")


def training_record(cfg: DictConfig, store: Any, label: str) -> dict[str, Any]:
    """What `log_training_record` writes, as plain data (computed where the store is):
    {'tags': {...}, 'dataset': log_dataset_input's keyword arguments}."""
    tags = run_names.run_tags(cfg, label)
    sources = _sources(store.meta)
    source = {
        "store": Path(str(store.path)).name,
        "files": {role: Path(m["path"]).name for role, m in sources.items() if m.get("path")},
        "sha256": {role: m["sha256"] for role, m in sources.items() if m.get("sha256")},
    }
    profile = {
        "rows": {s: store.rows(s) for s in ("train", "val", "test")},
        "fields": len(store.cardinalities),
        "features": int(sum(store.cardinalities)),
        "labels": store.label_names,
    }
    return {
        "tags": {**tags, "label": label, "dataset_fingerprint": store.fingerprint},
        "dataset": {
            "name": tags["dataset"],
            "fingerprint": store.fingerprint,
            "source": {k: v for k, v in source.items() if v},
            "profile": profile,
            "fields": list(store.field_names),
        },
    }


def log_training_record(tracking_uri: str, run_id: str, record: Mapping[str, Any]) -> None:
    """Tags from the config and the store, and the store as the run's dataset input."""
    mlflow_runs.set_tags(tracking_uri, run_id, record["tags"])
    mlflow_runs.log_dataset_input(tracking_uri, run_id, **record["dataset"])


def log_training_data(
    tracking_uri: str, run_id: str, cfg: DictConfig, store: Any, label: str
) -> None:
    """`log_training_record` of `training_record(cfg, store, label)`, in this process."""
    log_training_record(tracking_uri, run_id, training_record(cfg, store, label))


def _sources(meta: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """{role: {'path', 'sha256'}} of a file store's sources; {} for synthetic data."""
    sources = meta.get("sources") or {}
    if not isinstance(sources, Mapping):
        return {}
    return {str(r): m for r, m in sources.items() if isinstance(m, Mapping)}


def summary_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """The run's one-value metrics: everything but the per-epoch `val/...` and `train/...`."""
    return {k: v for k, v in metrics.items() if not k.startswith(EPOCH_PREFIXES)}


def logged_model_name(run_name: str) -> str:
    """The run's name as a logged-model name (MLflow refuses / : . % and quotes in those)."""
    return re.sub(r"[/:.%\"']", "_", run_name) or "model"


def logged_model_id(tracking_uri: str, run_id: str, name: str) -> str | None:
    """The id of the logged model `name` of the run, None if there is none."""
    client = mlflow_runs.client_for(tracking_uri)
    run = client.get_run(run_id)
    models = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}'",
    )
    matches = [m for m in models if m.name == name]
    return matches[0].model_id if matches else None


def _oracle(metrics: Mapping[str, float]) -> dict[str, float] | None:
    """{'auc', 'logloss'} of the val oracle (true probabilities) where known."""
    prefix = "val/oracle_"
    oracle = {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}
    return oracle or None


def log_plots(tracking_uri: str, run_id: str, metrics: Mapping[str, float]) -> None:
    """The run's plots, as soon as fit has ended (its curves and eff/ figures are known)."""
    name = mlflow_runs.client_for(tracking_uri).get_run(run_id).info.run_name
    plots.log_plots(tracking_uri, run_id, summary_metrics(metrics), name, _oracle(metrics))


def finish_run(
    tracking_uri: str,
    run_id: str,
    metrics: Mapping[str, float],
    bundle_dir: Path | None = None,
    plots_logged: bool = False,
) -> str | None:
    """Logged model (if bundle_dir), summary metrics once, plots (unless `plots_logged` by
    `log_plots`) and summary.md.

    Returns the logged model's URI (`models:/<id>`), None when no model was logged.
    """
    client = mlflow_runs.client_for(tracking_uri)
    run = client.get_run(run_id)
    name = run.info.run_name
    summary = summary_metrics(metrics)
    model_id = model_uri = None
    if bundle_dir is not None:
        # mlflow.pyfunc and the model flavour machinery: a late import (cvr.startup)
        log_pyfunc_model = late_import("cvr.serving.pyfunc").log_pyfunc_model

        model_name = logged_model_name(name)
        try:
            log_pyfunc_model(tracking_uri, run_id, bundle_dir, name=model_name)
        except BaseException:
            # The run fails, but with its results on record.
            mlflow_runs.log_metrics(tracking_uri, run_id, summary, step=0)
            raise
        model_id = logged_model_id(tracking_uri, run_id, model_name)
        model_uri = f"models:/{model_id}" if model_id else None
        log.info("logged model %s: runs:/%s/%s or %s", model_name, run_id, model_name, model_uri)
    mlflow_runs.log_metrics(tracking_uri, run_id, summary, step=0, model_id=model_id)
    oracle, tags = _oracle(metrics), run.data.tags
    plots.log_run_artifacts(
        tracking_uri, run_id, summary, name, tags, oracle, plots=not plots_logged
    )
    return model_uri
