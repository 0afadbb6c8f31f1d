"""MLflow run lifecycle: one run per training job, params from the resolved config.

The default tracking URI is a SQLite file under the output root (MLflow 3 refuses plain folder
stores); artifacts go to a folder beside it. A server URI is one override away
(`logger.tracking_uri=http://...`).

What the UI shows is decided here: params hold only what differs in substance (values that are
paths become tags `path.<key>`), summary metrics are logged once and rounded to 6 significant
digits, the training data is a dataset input (digest = store fingerprint), and experiments are
tagged as model-training experiments so the UI opens on their runs, not the GenAI overview.

mlflow is imported inside the functions that talk to it (`_mlflow()`): importing this module, and
so the training pipeline, must not cost a run with `logger=none` mlflow's ~1.5 s import.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from cvr.startup import late_import
from cvr.tracking.store import ensure_store
from cvr.tracking.ui_view import view_tag

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

#: MLflow rejects longer param values; longer ones are cut with a warning.
MAX_PARAM_CHARS = 6000
#: The experiment tag the MLflow 3 UI reads to pick the page an experiment opens on
#: (mlflow/server/js: `mlflow.experimentKind`; "custom_model_development" = Training runs).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_EXPERIMENT_KIND = "custom_model_development"
#: The experiment description shown above the runs table.
DESCRIPTION_TAG = "mlflow.note.content"
EXPERIMENT_DESCRIPTION = (
    "CTR/CVR training runs (cvr). The trade-off view (columns, curves per epoch, AUC against "
    "bytes and latency): `#/experiments/<id>/runs?viewStateShareKey=tradeoff`. Filter on tags "
    "(`tags.dataset = 'criteo'`); select runs and Compare. Each run has plots/ (learning "
    "curve, latency, memory) and summary.md; a sweep's parent run holds the Pareto report."
)
#: Dataset digests are at most 36 characters in MLflow's store.
DATASET_DIGEST_CHARS = 12
_PATH_VALUE = re.compile(r"^(/|~|[a-zA-Z][a-zA-Z0-9+.-]*:///?)")


def _mlflow():
    """The mlflow module, imported on first use (see the module docstring)."""
    for name in ("mlflow.entities", "mlflow.exceptions", "mlflow.utils.time"):
        late_import(name)  # ~300k objects the first time (cvr.startup)
    return late_import("mlflow")


def client_for(tracking_uri: str) -> MlflowClient:
    """An MlflowClient of `tracking_uri` (mlflow imported on first use)."""
    return _mlflow().MlflowClient(tracking_uri)


def display_value(value: float) -> float:
    """Integers unchanged, other values to 6 significant digits (70.93299999999999 -> 70.933)."""
    value = float(value)
    if value.is_integer() or not value == value or value in (float("inf"), float("-inf")):
        return value
    return float(f"{value:.6g}")


def is_path_value(value: Any) -> bool:
    """True for absolute paths and file/sqlite URIs: run-specific, not a setting."""
    return isinstance(value, str) and bool(_PATH_VALUE.match(value))


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
        mark_training_experiment(client, experiment)
        return experiment.experiment_id
    location = None
    if artifact_root and "://" not in artifact_root:
        Path(artifact_root).mkdir(parents=True, exist_ok=True)
        location = Path(artifact_root).resolve().as_uri()
    elif artifact_root:
        location = artifact_root
    view_key, view_value = view_tag()
    tags = {
        EXPERIMENT_KIND_TAG: TRAINING_EXPERIMENT_KIND,
        DESCRIPTION_TAG: EXPERIMENT_DESCRIPTION,
        view_key: view_value,
    }
    try:
        return client.create_experiment(name, artifact_location=location, tags=tags)
    except _mlflow().exceptions.MlflowException:
        # Another job of the same sweep created it first.
        return client.get_experiment_by_name(name).experiment_id


def mark_training_experiment(client: MlflowClient, experiment: Any) -> None:
    """Tag an experiment made before these tags existed (its own choices are kept)."""
    view_key, view_value = view_tag()
    if experiment.tags.get(view_key) != view_value:
        client.set_experiment_tag(experiment.experiment_id, view_key, view_value)
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(
            experiment.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_EXPERIMENT_KIND
        )
    description = experiment.tags.get(DESCRIPTION_TAG)
    # Ours (an older wording) is refreshed; a description someone wrote is kept.
    if description != EXPERIMENT_DESCRIPTION and (
        description is None or description.startswith(EXPERIMENT_DESCRIPTION.split(".")[0])
    ):
        client.set_experiment_tag(experiment.experiment_id, DESCRIPTION_TAG, EXPERIMENT_DESCRIPTION)


def unique_run_name(client: MlflowClient, experiment_id: str, name: str) -> str:
    """`name`, or `name-2`, `name-3`, ... when runs of that name exist in the experiment."""
    taken = {
        r.info.run_name
        for r in client.search_runs(
            [experiment_id],
            filter_string=f"attributes.run_name LIKE '{name.replace(chr(39), '')}%'",
            max_results=1000,
        )
    }
    if name not in taken:
        return name
    n = 2
    while f"{name}-{n}" in taken:
        n += 1
    return f"{name}-{n}"


def start_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    tags: dict[str, str] | None = None,
    artifact_root: str | None = None,
    parent_run_id: str | None = None,
    unique_name: bool = False,
) -> str:
    """Create a run (a child of `parent_run_id` when given) and return its id.

    `unique_name`: suffix `-2`, `-3`, ... when the experiment already has a run of that name.
    """
    ensure_store(tracking_uri)  # create + migrate a SQLite store once, under a file lock
    client = client_for(tracking_uri)
    experiment_id = ensure_experiment(client, experiment, artifact_root)
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    if unique_name:
        run_name = unique_run_name(client, experiment_id, run_name)
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    return run.info.run_id


def log_config(tracking_uri: str, run_id: str, config: DictConfig | Mapping[str, Any]) -> None:
    """Params = the flattened resolved config without paths; the full config is a YAML artifact.

    `config`: the DictConfig, or its resolved container (what a training process sends the
    tracking process, cvr.tracking.tracker).

    Values that are paths or file URIs differ between any two runs and say nothing about what
    was computed, so they are tags `path.<key>` instead (kept out of "show diff only").
    """
    mlflow = _mlflow()
    client = mlflow.MlflowClient(tracking_uri)
    resolved = (
        OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else config
    )
    params = []
    path_tags = []
    for key, value in flatten(resolved).items():
        if is_path_value(value):
            path_tags.append(mlflow.entities.RunTag(f"path.{key}", str(value)[:5000]))
            continue
        text = str(value)
        if len(text) > MAX_PARAM_CHARS:
            log.warning("param %s is %d chars; truncated for MLflow", key, len(text))
            text = text[: MAX_PARAM_CHARS - 3] + "..."
        params.append(mlflow.entities.Param(key, text))
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start : start + 100])
    for start in range(0, len(path_tags), 100):
        client.log_batch(run_id, tags=path_tags[start : start + 100])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(OmegaConf.to_yaml(resolved))
        client.log_artifact(run_id, str(path))


def log_metrics(
    tracking_uri: str,
    run_id: str,
    metrics: dict[str, float],
    step: int = 0,
    model_id: str | None = None,
) -> None:
    """One point per metric at `step`, rounded (display_value); linked to model_id if given."""
    mlflow = _mlflow()
    client = mlflow.MlflowClient(tracking_uri)
    now = int(mlflow.utils.time.get_current_time_millis())
    items = [
        mlflow.entities.Metric(k, display_value(v), now, step, model_id=model_id)
        for k, v in metrics.items()
    ]
    for start in range(0, len(items), 500):
        client.log_batch(run_id, metrics=items[start : start + 500])


def log_metric_points(
    tracking_uri: str, run_id: str, points: list[tuple[str, float, int, int]]
) -> None:
    """(name, value, timestamp ms, step) points in one write (a training process's curves)."""
    mlflow = _mlflow()
    items = [mlflow.entities.Metric(name, value, now, step) for name, value, now, step in points]
    for start in range(0, len(items), 500):
        client_for(tracking_uri).log_batch(run_id, metrics=items[start : start + 500])


def log_dataset_input(
    tracking_uri: str,
    run_id: str,
    name: str,
    fingerprint: str,
    source: dict[str, Any],
    profile: dict[str, Any],
    fields: list[str],
    context: str = "training",
) -> None:
    """The training data as an MLflow dataset input (Dataset column and filter of the UI).

    digest = the first DATASET_DIGEST_CHARS of the store fingerprint (the full one is the
    `dataset_fingerprint` tag); schema = the field names (int32 ids each).
    """
    mlflow = _mlflow()
    schema = {"mlflow_colspec": [{"type": "integer", "name": f, "required": True} for f in fields]}
    dataset = mlflow.entities.Dataset(
        name=name,
        digest=fingerprint[:DATASET_DIGEST_CHARS],
        source_type="cvr_store",
        source=json.dumps(source, default=str),
        schema=json.dumps(schema),
        profile=json.dumps(profile, default=str),
    )
    tags = [mlflow.entities.InputTag(key="mlflow.data.context", value=context)]
    mlflow.MlflowClient(tracking_uri).log_inputs(
        run_id, datasets=[mlflow.entities.DatasetInput(dataset=dataset, tags=tags)]
    )


def set_tags(tracking_uri: str, run_id: str, tags: dict[str, str]) -> None:
    """The tags in one write (each `set_tag` is a SQLite commit, ~5-8 ms with its fsyncs)."""
    mlflow = _mlflow()
    items = [mlflow.entities.RunTag(key, str(value)) for key, value in tags.items()]
    for start in range(0, len(items), 100):
        client_for(tracking_uri).log_batch(run_id, tags=items[start : start + 100])


#: Attempts at recording a run's end while SQLite reports "database is locked".
END_RUN_ATTEMPTS = 3


def end_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Record the run's final status, retrying while the store is temporarily unavailable.

    A SIGTERM raised (as RunKilled) in the middle of one of this process's own MLflow writes can
    leave that write's connection, reachable only from garbage, holding SQLite's write lock (seen
    once in CI: KILLED never recorded, "database is locked" after SQLite's 20 s busy timeout).
    Collecting garbage closes such a connection, and MLflow marks the error as retryable.
    """
    mlflow = _mlflow()
    for attempt in range(1, END_RUN_ATTEMPTS + 1):
        try:
            client_for(tracking_uri).set_terminated(run_id, status=status)
            return
        except mlflow.exceptions.MlflowException as exc:
            if exc.error_code != "TEMPORARILY_UNAVAILABLE" or attempt == END_RUN_ATTEMPTS:
                raise
            log.warning("recording run %s as %s: %s; retrying", run_id, status, exc.message)
            gc.collect()


def take_over(tracking_uri: str, run_id: str, info: Mapping[str, Any], resumed_by: str) -> None:
    """Mark the MLflow run a resume continues: RUNNING again, tagged with who took it over
    (`resumed_by`: `pipelines.run_lifecycle.taker()` of the training process)."""
    client = client_for(tracking_uri)
    status = client.get_run(run_id).info.status
    was = f"pid {info.get('pid')} on {info.get('host')}" if info.get("pid") else "unknown"
    if status == "RUNNING":
        log.warning("resume: taking over MLflow run %s, left RUNNING by %s (gone)", run_id, was)
    tags = {"resumed_by": resumed_by, "resumed_from_status": status}
    set_tags(tracking_uri, run_id, tags)
    if status != "RUNNING":
        client.update_run(run_id, status="RUNNING")
