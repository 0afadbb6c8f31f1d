"""Run names and tags: the dataset is its config name or file stem, knobs are the overrides."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from cvr.tracking.epoch_logger import route
from cvr.tracking.mlflow_runs import display_value, is_path_value
from cvr.tracking.run_names import dataset_name, default_run_name, file_stem, knobs, run_tags
from cvr.tracking.sweep import swept_keys


@pytest.mark.parametrize(
    ("path", "stem"),
    [
        ("/d/libffm/criteo_small_train.ffm", "criteo_small"),
        ("/d/avazu/avazu_head999.csv", "avazu_head999"),
        ("/d/aliccp/train.csv", "aliccp"),
        ("/d/x/my-data.train.csv.gz", "my-data"),
        ("/d/x/clicks.tsv", "clicks"),
    ],
)
def test_file_stem_drops_suffixes_and_split_words(path, stem):
    assert file_stem(path) == stem


def test_dataset_is_the_config_name_unless_the_name_is_only_the_format():
    libffm = {"name": "libffm", "format": "libffm", "paths": {"train": "/d/criteo_small_train.ffm"}}
    assert dataset_name(libffm) == "criteo_small"
    criteo = {"name": "criteo", "format": "criteo_tsv", "path": "/d/kaggle_dac_head1000.tsv"}
    assert dataset_name(criteo) == "criteo"
    assert dataset_name({"name": "synthetic", "rows_train": 10}) == "synthetic"
    assert dataset_name({"format": "csv", "path": "/d/clicks.csv"}) == "clicks"


def test_knobs_skip_what_is_in_the_name_and_run_specific_keys():
    overrides = [
        "model=fm",
        "embedding.dim=8",
        "seed=3",
        "optimizer.fused.lr=0.1",
        "trainer.max_epochs=10",
        "embedding=hashed",
        "paths.output_root=/tmp/x",
        "data.paths.train=/d/a.ffm",
        "logger.experiment=e",
        "+data.paths.val=/d/b.ffm",
        "print_table=false",
        "data.rows_train=2000000",
    ]
    assert knobs(overrides) == ["lr0.1", "ep10", "hashed", "train2M"]
    assert knobs(overrides, only_keys=["trainer.max_epochs"]) == ["ep10"]


def _cfg(**data):
    return OmegaConf.create(
        {
            "model": {"_target_": "cvr.models.ctr.FFM"},
            "backend": {"name": "fused", "threads": 1},
            "embedding": {"_target_": "cvr.models.embeddings.FullEmbedding", "dim": 4},
            "data": {"name": "synthetic", **data},
            "seed": 0,
            "label": None,
        }
    )


def test_default_name_and_tags_outside_hydra():
    cfg = _cfg()
    assert default_run_name(cfg, ["optimizer.fused.lr=0.05"]) == "ffm-synthetic-k4-lr0.05-seed0"
    tags = run_tags(cfg, "conversion")
    assert tags == {
        "model": "ffm",
        "dataset": "synthetic",
        "embedding": "full",
        "k": "4",
        "backend": "fused",
        "task": "cvr",
    }


def test_swept_keys_are_the_keys_with_several_values():
    assert swept_keys(["model=fm,ffm", "trainer.max_epochs=2", "embedding.dim=range(1,3)"]) == [
        "model",
        "embedding.dim",
    ]


@pytest.mark.parametrize(
    ("key", "routed"),
    [
        ("train/loss_step", ("train_step/loss", False)),
        ("train/loss_epoch", ("train/loss", True)),
        ("train/samples_per_s", ("train/samples_per_s", True)),
        ("val/auc", ("val/auc", True)),
        ("test/auc", None),
        ("eff/params", None),
        ("epoch", None),
    ],
)
def test_epoch_logger_routes_curves_and_leaves_summaries(key, routed):
    assert route(key) == routed


def test_display_value_rounds_to_six_significant_digits_but_keeps_integers():
    assert display_value(70.93299999999999) == 70.933
    assert display_value(12_345_678.0) == 12_345_678.0
    assert display_value(0.123456789) == 0.123457


def test_path_values_are_recognised():
    assert is_path_value("/work/outputs/runs/x")
    assert is_path_value("sqlite:////work/outputs/mlflow.db")
    assert is_path_value("file:///tmp/a")
    assert not is_path_value("cvr.models.ctr.FFM")
    assert not is_path_value("epoch{epoch:02d}-step{step}")
    assert not is_path_value(0.05)


def test_a_repeated_name_gets_a_numbered_suffix(tmp_path):
    from mlflow.tracking import MlflowClient

    from cvr.tracking.mlflow_runs import start_run

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # `_` is a LIKE wildcard in MLflow filters: a look-alike name must not count as taken.
    start_run(uri, "e", "fm-dataX1-k4-seed0", artifact_root=str(tmp_path / "a"))
    ids = [
        start_run(
            uri, "e", "fm-data_1-k4-seed0", artifact_root=str(tmp_path / "a"), unique_name=True
        )
        for _ in range(3)
    ]
    client = MlflowClient(uri)
    names = [client.get_run(i).info.run_name for i in ids]
    assert names == ["fm-data_1-k4-seed0", "fm-data_1-k4-seed0-2", "fm-data_1-k4-seed0-3"]
    experiment = client.get_experiment_by_name("e")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
