"""What the MLflow UI shows for a tiny 2x2 sweep, read back through MlflowClient.

One sweep (model=fm,ffm x optimizer.lr=0.02,0.05, 3 epochs) serves every test of the
module: names, tags, dataset inputs, one point per epoch, summary metrics once, plots as PNGs,
params without paths, the logged model, the parent's report and the experiment's kind tag.
"""

from __future__ import annotations

import json
import re
import struct
import tempfile
from pathlib import Path

import mlflow
import pytest

from tests.helpers import TINY_DATA, run_script

EPOCHS = 3
LRS = ("0.02", "0.05")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VAL_METRICS = ("val/auc", "val/logloss", "val/ne", "val/calibration", "val/auc_best")
SUMMARY_METRICS = (
    "test/auc",
    "test/logloss",
    "eff/params",
    "eff/embedding_bytes",
    "data/rows_train",
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui_sweep")
    result = run_script(
        [
            "train.py",
            "-m",
            f"paths.output_root={root}",
            "model=fm,ffm",
            f"optimizer.lr={','.join(LRS)}",
            *TINY_DATA,
            f"trainer.max_epochs={EPOCHS}",
            "datamodule.batch_size=512",
            "trainer.enable_progress_bar=false",
            "print_table=false",
            "callbacks.efficiency_profile.repeats=3",
            "logger.log_model=true",  # opt-in; tested here
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")
    experiment = client.get_experiment_by_name("cvr")
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if r.data.tags.get("sweep_role") == "child"]
    parents = [r for r in runs if r.data.tags.get("sweep_role") == "parent"]
    assert len(children) == 4 and len(parents) == 1
    return client, experiment, children, parents[0], root


def test_names_are_unique_and_say_what_ran(sweep):
    _, _, children, _, _ = sweep
    names = [r.info.run_name for r in children]
    assert len(set(names)) == 4
    seen = set()
    for run in children:
        name, tags = run.info.run_name, run.data.tags
        lr = run.data.params["optimizer.lr"]
        # model, dataset, k, the swept knob, seed; no timestamp or pid noise.
        assert name == f"{tags['model']}-synthetic-k4-lr{lr}-seed0", name
        seen.add((tags["model"], lr))
    assert seen == {(m, lr) for m in ("fm", "ffm") for lr in LRS}


def test_tags_filter_by_model_dataset_task_embedding_k_backend(sweep):
    _, _, children, _, _ = sweep
    for run in children:
        tags = run.data.tags
        assert tags["model"] in ("fm", "ffm")
        assert tags["dataset"] == "synthetic"
        assert tags["task"] == "ctr" and tags["label"] == "click"
        assert tags["embedding"] == "full"
        assert tags["k"] == "4"
        assert tags["backend"] in ("fused", "autograd")
        assert len(tags["dataset_fingerprint"]) == 64


def test_training_data_is_a_dataset_input_with_the_store_digest(sweep):
    _, _, children, _, _ = sweep
    for run in children:
        inputs = run.inputs.dataset_inputs
        assert len(inputs) == 1
        dataset = inputs[0].dataset
        assert dataset.name == "synthetic"
        assert dataset.digest == run.data.tags["dataset_fingerprint"][:12]
        assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "training"


def test_val_metrics_have_one_point_per_epoch_at_steps_0_to_E_minus_1(sweep):
    client, _, children, _, _ = sweep
    for run in children:
        val = [k for k in run.data.metrics if k.startswith("val/")]
        assert set(VAL_METRICS) <= set(val)
        for name in (*val, "train/loss"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, name)]
            assert sorted(steps) == list(range(EPOCHS)), (name, steps)
        # Lightning's own `epoch` metric (repeated steps) is not logged.
        assert client.get_metric_history(run.info.run_id, "epoch") == []


def test_summary_metrics_have_one_point_and_rounded_values(sweep):
    client, _, children, _, _ = sweep
    for run in children:
        for name in SUMMARY_METRICS:
            history = client.get_metric_history(run.info.run_id, name)
            assert len(history) == 1, (name, len(history))
        for name, value in run.data.metrics.items():
            assert value == float(f"{value:.6g}") or value.is_integer(), (name, value)


def test_plots_are_valid_pngs_and_summary_is_logged(sweep):
    client, _, children, _, _ = sweep
    run = children[0]
    run_id = run.info.run_id
    listed = {a.path for a in client.list_artifacts(run_id, "plots")}
    expected = {"plots/learning_curve.png", "plots/latency_vs_batch.png", "plots/memory.png"}
    assert expected <= listed
    with tempfile.TemporaryDirectory() as tmp:
        for path in sorted(expected):
            local = Path(client.download_artifacts(run_id, path, tmp))
            head = local.read_bytes()[:24]
            assert head[:8] == PNG_MAGIC, path
            width, height = struct.unpack(">II", head[16:24])
            assert width > 100 and height > 100, (path, width, height)
        summary = Path(client.download_artifacts(run_id, "summary.md", tmp)).read_text()
        assert run.info.run_name in summary and "Epochs run: 3" in summary
        assert "config.yaml" in {a.path for a in client.list_artifacts(run_id)}


def test_params_hold_no_paths_and_paths_are_tags(sweep):
    _, _, children, _, root = sweep
    for run in children:
        for key, value in run.data.params.items():
            assert not value.startswith(("/", "sqlite:", "file:")), (key, value)
            assert str(root) not in value, (key, value)
        assert run.data.tags["path.paths.output_dir"].startswith(str(root))
        assert "path.callbacks.model_checkpoint.dirpath" in run.data.tags


def test_logged_model_is_named_after_the_run_with_its_metrics(sweep):
    client, experiment, children, _, _ = sweep
    run = children[0]
    models = client.search_logged_models(
        [experiment.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
    )
    # MLflow refuses dots in model names: lr0.02 -> lr0_02.
    assert [m.name for m in models] == [run.info.run_name.replace(".", "_")]
    metrics = {m.key: m.value for m in models[0].metrics}
    assert metrics["test/auc"] == run.data.metrics["test/auc"]
    assert "eff/embedding_bytes" in metrics
    # It loads by run URI, and its metadata names the raw fields (the signature declares only
    # the output: an input schema would drop rows with only unknown fields).
    mlflow.set_tracking_uri(client.tracking_uri)
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/{models[0].name}")
    assert "F00" in [f["name"] for f in model.metadata.metadata["fields"]]


def test_parent_keeps_the_pareto_report_and_experiment_opens_on_training_runs(sweep):
    client, experiment, _, parent, _ = sweep
    listed = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/report.md" in listed
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_saved_tradeoff_view_names_only_columns_and_metrics_the_runs_have(sweep):
    _, experiment, children, _, _ = sweep
    view = json.loads(experiment.tags["mlflow.sharedViewState.tradeoff"])
    metrics = set(children[0].data.metrics)
    params = set(children[0].data.params)
    tags = set(children[0].data.tags)
    for column in view["selectedColumns"]:
        kind, name = re.fullmatch(r"(\w+)\.`(.+)`", column).groups()
        known = {"metrics": metrics, "params": params, "tags": tags}.get(kind)
        assert known is None or name in known, column
    sections = {s["uuid"] for s in view["compareRunSections"]}
    for card in view["compareRunCharts"]:
        assert card["metricSectionId"] in sections
        keys = [card.get("metricKey")] + [card.get(a, {}).get("key") for a in ("xaxis", "yaxis")]
        keys += card.get("selectedMetrics", [])
        assert all(k in metrics for k in keys if k), card
        assert all(p in params for p in card.get("selectedParams", [])), card
