"""MLflow run lifecycle: one run per training job, params from the resolved config.

The default tracking URI is a SQLite file under the output root (MLflow 3 refuses plain folder
stores); artifacts go to a folder beside it. A server URI is one override away
(`logger.tracking_uri=http://...`).
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from cvr.tracking.store import ensure_store

log = logging.getLogger(__name__)

#: MLflow rejects longer param values; longer ones are cut with a warning.
MAX_PARAM_CHARS = 6000


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists are kept as their string form."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def git_commit(cwd: str | os.PathLike | None = None) -> str:
    """The current commit hash, or 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def ensure_experiment(client: MlflowClient, name: str, artifact_root: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if artifact_root and "://" not in artifact_root:
        Path(artifact_root).mkdir(parents=True, exist_ok=True)
        location = Path(artifact_root).resolve().as_uri()
    elif artifact_root:
        location = artifact_root
    try:
        return client.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:
        # Another job of the same sweep created it first.
        return client.get_experiment_by_name(name).experiment_id


def start_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    tags: dict[str, str] | None = None,
    artifact_root: str | None = None,
    parent_run_id: str | None = None,
) -> str:
    """Create a run (a child of `parent_run_id` when given) and return its id."""
    ensure_store(tracking_uri)  # create + migrate a SQLite store once, under a file lock
    client = MlflowClient(tracking_uri)
    experiment_id = ensure_experiment(client, experiment, artifact_root)
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    return run.info.run_id


def log_config(tracking_uri: str, run_id: str, config: DictConfig) -> None:
    """Params = the flattened resolved config; the full config is also a YAML artifact."""
    client = MlflowClient(tracking_uri)
    resolved = OmegaConf.to_container(config, resolve=True)
    params = []
    for key, value in flatten(resolved).items():
        text = str(value)
        if len(text) > MAX_PARAM_CHARS:
            log.warning("param %s is %d chars; truncated for MLflow", key, len(text))
            text = text[: MAX_PARAM_CHARS - 3] + "..."
        params.append(mlflow.entities.Param(key, text))
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start : start + 100])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(OmegaConf.to_yaml(resolved))
        client.log_artifact(run_id, str(path))


def log_metrics(tracking_uri: str, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    client = MlflowClient(tracking_uri)
    items = [
        mlflow.entities.Metric(k, float(v), int(mlflow.utils.time.get_current_time_millis()), step)
        for k, v in metrics.items()
    ]
    for start in range(0, len(items), 500):
        client.log_batch(run_id, metrics=items[start : start + 500])


def set_tags(tracking_uri: str, run_id: str, tags: dict[str, str]) -> None:
    client = MlflowClient(tracking_uri)
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


def end_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    MlflowClient(tracking_uri).set_terminated(run_id, status=status)
