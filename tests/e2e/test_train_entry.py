"""The real `python train.py ...` command, end to end, on tiny synthetic data."""

import json
import math
from pathlib import Path

import mlflow
import pytest

from tests.helpers import TINY_DATA, compose_train, run_script

FAST = ["trainer.max_epochs=2", "datamodule.batch_size=512", "trainer.enable_progress_bar=false"]


def test_train_command_prints_table_and_logs_to_sqlite_mlflow(tmp_path):
    # -X importtime lists what the training process imported (the tracking process it starts
    # is a plain interpreter): MLflow's calls ran in the tracking process, mlflow never here.
    result = run_script(
        ["-X", "importtime", "train.py", f"paths.output_root={tmp_path}", "model=ffm",
         *TINY_DATA, *FAST]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "oracle_auc" in result.stdout and "logloss" in result.stdout
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "torch" in imported and not imported & {"mlflow", "sqlalchemy", "alembic"}
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("cvr").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    for name in (
        "val/auc",
        "test/auc",
        "test/logloss",
        "test/ne",
        "test/calibration",
        "test/oracle_auc",
        "test/oracle_logloss",
        "train/loss",
        "eff/embedding_bytes",
        "eff/params",
        "eff/latency_b1_p99_us",
        "eff/throughput_b4096_per_s",
    ):
        assert math.isfinite(run.data.metrics[name]), name
    assert run.data.params["model._target_"] == "cvr.models.ctr.FFM"
    assert run.data.params["embedding.dim"] == "4"
    assert run.data.tags["dataset_fingerprint"]
    assert run.data.tags["git_commit"]
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert "config.yaml" in artifacts
    # No MLflow model unless asked (logger.log_model=true, tests/tracking/test_mlflow_ui.py).
    experiment_id = run.info.experiment_id
    assert client.search_logged_models([experiment_id]) == []
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "bundle" / "manifest.json").is_file()
    # Every epoch's curve point and the plots were committed before the run was FINISHED.
    epochs = json.loads((run_dir / "metrics.json").read_text())["train/epochs_run"]
    assert len(client.get_metric_history(run.info.run_id, "val/auc")) == epochs >= 1
    assert "summary.md" in artifacts
    plots = [a.path for a in client.list_artifacts(run.info.run_id, "plots")]
    assert "plots/learning_curve.png" in plots


@pytest.mark.parametrize("tracking_process", ["true", "false"])
def test_both_tracking_paths_record_the_same_finished_run(
    tmp_path, empty_mlflow_store, tracking_process
):
    # true: the calls go to the tracking process (cvr.tracking.process); false: the same calls
    # in this process (LocalTracker), the path every run took before.
    from cvr.pipelines.train import train

    uri = empty_mlflow_store(tmp_path)
    cfg = compose_train(
        tmp_path,
        [*TINY_DATA, *FAST, "print_table=false", f"logger.tracking_process={tracking_process}"],
    )
    metrics = train(cfg)
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cvr").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test/auc"] == pytest.approx(metrics["test/auc"], rel=1e-5)
    assert run.data.tags["backend"] and run.data.params["embedding.dim"] == "4"
    assert run.inputs.dataset_inputs[0].dataset.digest == run.data.tags["dataset_fingerprint"][:12]
    curve = client.get_metric_history(run.info.run_id, "val/auc")
    assert len(curve) == metrics["train/epochs_run"]
    files = [a.path for a in client.list_artifacts(run.info.run_id, "plots")]
    assert {"plots/learning_curve.png", "plots/latency_vs_batch.png", "plots/memory.png"} <= set(
        files
    )
    assert "summary.md" in [a.path for a in client.list_artifacts(run.info.run_id)]


def test_unknown_group_choice_names_the_valid_options(tmp_path):
    result = run_script(["train.py", f"paths.output_root={tmp_path}", "model=xgboost"])
    assert result.returncode != 0
    assert "model" in result.stderr and "ffm" in result.stderr and "fwfm" in result.stderr


def test_unknown_key_is_rejected(tmp_path):
    result = run_script(["train.py", f"paths.output_root={tmp_path}", "model.wings=2"])
    assert result.returncode != 0
    assert "wings" in result.stderr


@pytest.mark.parametrize(
    "model",
    [
        "lr",
        "fm",
        "ffm",
        "fwfm",
        "fm backend=autograd",
        "ffm backend=autograd",
        "ffm embedding=hashed embedding.buckets=100",  # fused falls back to autograd
        "fm embedding=qr embedding.threshold=50",
        "fwfm embedding=mixed_dim",
    ],
)
def test_every_model_trains_in_process(tmp_path, model):
    from cvr.pipelines.train import train

    name, *backend = model.split()
    cfg = compose_train(tmp_path, [f"model={name}", *backend, "logger=none", *TINY_DATA, *FAST])
    metrics = train(cfg)
    assert 0.5 < metrics["test/auc"] <= 1 and math.isfinite(metrics["test/logloss"])
    assert json.loads((tmp_path / "runs" / "job0" / "metrics.json").read_text()) == metrics


def test_same_command_twice_gives_identical_metrics_and_reuses_store(tmp_path):
    from cvr.pipelines.train import train

    overrides = ["model=ffm", "logger=none", *TINY_DATA, *FAST]
    first = train(compose_train(tmp_path, overrides))
    stores = sorted((tmp_path / "cache").iterdir())
    mtime = (stores[0] / "meta.json").stat().st_mtime_ns
    second = train(compose_train(tmp_path, overrides))
    assert sorted((tmp_path / "cache").iterdir()) == stores
    assert (stores[0] / "meta.json").stat().st_mtime_ns == mtime
    assert deterministic(first) == deterministic(second)
    assert set(first) == set(second)


TIMINGS = ("latency", "throughput", "rss", "samples_per_s", "epoch_seconds", "lr_search_seconds")


def deterministic(metrics):
    """Everything but wall-clock measurements, which differ from run to run."""
    return {k: v for k, v in metrics.items() if not any(t in k for t in TIMINGS)}


def test_invalid_embedding_dim_is_refused_with_the_key(tmp_path):
    from cvr.pipelines.train import train

    cfg = compose_train(tmp_path, ["embedding.dim=0", "logger=none", *TINY_DATA, *FAST])
    with pytest.raises(ValueError, match=r"embedding\.dim"):
        train(cfg)


#: Packages a plain training run does not use: importing them costs start-up (mlflow alone
#: ~1.5 s with pandas, sqlalchemy and opentelemetry), so they are imported only where used.
NOT_AT_IMPORT = ("mlflow", "sqlalchemy", "pandas", "faiss", "pymilvus", "dask", "distributed")


def imported_packages(code: str) -> set[str]:
    """Top-level packages in sys.modules after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = run_script(["-c", probe])
    assert result.returncode == 0, result.stderr[-2000:]
    return set(result.stdout.split())


def test_importing_the_training_entry_imports_no_tracking_or_retrieval_stack():
    # `import train` is everything train.py imports before Hydra runs (the pipeline, errors,
    # run lifecycle, sweep callback), as a user's `python train.py` does.
    loaded = imported_packages("import train")
    assert "torch" in loaded and "lightning" in loaded  # the probe did import the pipeline
    assert not loaded & set(NOT_AT_IMPORT), sorted(loaded & set(NOT_AT_IMPORT))


@pytest.mark.slow
def test_a_run_without_logger_never_imports_mlflow(tmp_path):
    # -X importtime lists every module the whole run imported, lazily imported ones included.
    result = run_script(
        ["-X", "importtime", "train.py", f"paths.output_root={tmp_path}", "logger=none",
         *TINY_DATA, *FAST]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "torch" in imported and "numba" in imported  # the listing is the whole run's
    assert not imported & {"mlflow", "sqlalchemy", "faiss", "pymilvus", "dask"}, imported
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "metrics.json").is_file() and (run_dir / "bundle" / "manifest.json").is_file()


CHEAP = [*TINY_DATA, *FAST, "logger=none", "export_bundle=false", "print_table=false",
         "callbacks.efficiency_profile.enabled=false"]  # fmt: skip


def test_checkpoints_are_written_once_and_last_links_to_the_best(tmp_path, monkeypatch):
    from cvr.checkpointing import AtomicCheckpointIO, load_checkpoint
    from cvr.pipelines.train import train

    written = []
    real_save = AtomicCheckpointIO.save_checkpoint

    def save(self, checkpoint, path, storage_options=None):
        written.append(Path(path).name)
        real_save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", save)
    # A fixed rate: with the lr search, a later rate that wins trains (and checkpoints) again
    # (tests/e2e/test_lr_search.py).
    cfg = compose_train(tmp_path, [*CHEAP, "trainer.max_epochs=3", "optimizer.lr=0.02"])
    train(cfg)
    folder = Path(cfg.paths.output_dir) / "checkpoints"
    # One full write per improved epoch, none of them a copy as last.ckpt.
    assert 1 <= len(written) <= 3 and all(n.startswith("epoch") for n in written), written
    (best,) = folder.glob("epoch*.ckpt")
    last = folder / "last.ckpt"
    assert last.is_symlink() and last.resolve() == best.resolve()
    assert load_checkpoint(last)["epoch"] == load_checkpoint(best)["epoch"]


def test_resume_finds_a_run_whose_last_link_is_missing(tmp_path):
    # Lightning re-points last.ckpt by removing it, then linking: a run stopped in between has
    # only its best checkpoint, which resume=true must still find.
    from cvr.pipelines.train import train

    first = compose_train(tmp_path, CHEAP)
    done = train(first)
    (Path(first.paths.output_dir) / "checkpoints" / "last.ckpt").unlink()
    again = compose_train(tmp_path, [*CHEAP, "resume=true"])
    metrics = train(again)
    info = json.loads((Path(again.paths.output_dir) / "run_info.json").read_text())
    assert info["resumed_from"] and Path(info["resumed_from"]).name.startswith("epoch"), info
    assert metrics["train/global_step"] == done["train/global_step"]
