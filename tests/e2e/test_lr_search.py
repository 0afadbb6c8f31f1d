"""The fused learning rate chosen on validation (cvr.pipelines.lr_search) through the pipeline."""

import json
import math
from pathlib import Path

import pytest

from cvr.pipelines import lr_search
from cvr.pipelines.errors import ConfigError
from cvr.pipelines.train import build_store, train, training_label
from tests.helpers import TINY_DATA, compose_train

QUIET = [
    "logger=none",
    "export_bundle=false",
    "print_table=false",
    "trainer.enable_progress_bar=false",
    "callbacks.efficiency_profile.enabled=false",
    "backend=fused",
]


def run(tmp_path, *overrides):
    return train(compose_train(tmp_path, [*TINY_DATA, *QUIET, *overrides]))


def searched_alone(tmp_path, grid):
    """The search with every rate trained through the kernels (none by the pipeline's run)."""
    cfg = compose_train(tmp_path, [*TINY_DATA, *QUIET, f"optimizer.lr_search.grid={grid}"])
    store = build_store(cfg)
    return lr_search.choose_lr(cfg, store, training_label(cfg, store))


def recorded(run_dir):
    return json.loads((Path(run_dir) / lr_search.OUTCOME_FILE).read_text())


def test_the_run_is_the_first_candidate_and_equals_its_kernel_only_run(tmp_path):
    grid = [0.01, 0.3]
    alone = searched_alone(tmp_path / "probe", grid)
    assert [c.lr for c in alone.candidates] == grid
    score = {c.lr: c.score for c in alone.candidates}
    assert score[0.01] != score[0.3]  # the two rates must differ for the choice to mean anything
    # The better rate first, so the pipeline's own run at it is the model (nothing retrains).
    better, worse = sorted(alone.candidates, key=lambda c: c.score)
    cfg = compose_train(
        tmp_path / "run", [*TINY_DATA, *QUIET, f"optimizer.lr_search.grid=[{better.lr},{worse.lr}]"]
    )
    metrics = train(cfg)
    assert metrics["train/lr"] == better.lr
    run_first, run_second = recorded(cfg.paths.output_dir)["candidates"]
    assert run_first["is_run"] and not run_second["is_run"]
    # One thread: the Lightning run and the kernel-only run of a rate give the same val figures
    # at every epoch, so the walk chooses as it would with every rate trained alone.
    for mine, theirs in ((run_first, better), (run_second, worse)):
        assert mine["lr"] == theirs.lr
        assert mine["val_auc"] == pytest.approx(theirs.val_auc, abs=1e-12)
        assert mine["val_logloss"] == pytest.approx(theirs.val_logloss, abs=1e-12)
    assert run_first["kept_epoch"] == better.best_epoch
    for c in alone.candidates:
        assert metrics[f"train/lr_search/{c.lr:g}/val_auc"] == pytest.approx(c.best, abs=1e-12)
        assert metrics[f"train/lr_search/{c.lr:g}/val_logloss"] == pytest.approx(c.score, abs=1e-12)
    assert metrics["train/epochs_run"] == len(better.val_auc)
    assert metrics["train/best_epoch"] == better.best_epoch + 1
    assert metrics["val/best/logloss"] == pytest.approx(better.score, abs=1e-12)
    # ... and a run given that rate explicitly (no search) learns the same model.
    fixed = run(tmp_path / "fixed", f"optimizer.lr={better.lr}")
    assert fixed["test/auc"] == pytest.approx(metrics["test/auc"], abs=1e-12)
    assert not any(k.startswith("train/lr_search") for k in fixed)
    # Where the grid's first rate is the backend's default (as in the default config), the
    # module built before the search is the run's: the same figures again.
    grid_first_default = [f"optimizer.lr_search.grid=[{better.lr},{worse.lr}]"]
    grid_first_default += [f"optimizer.default_lr.fused={better.lr}"]
    again = compose_train(tmp_path / "default", [*TINY_DATA, *QUIET, *grid_first_default])
    assert train(again)["test/auc"] == pytest.approx(metrics["test/auc"], abs=1e-12)
    assert (
        recorded(again.paths.output_dir)["candidates"][0]["val_logloss"] == run_first["val_logloss"]
    )


def test_a_later_rate_that_wins_retrains_and_the_first_run_leaves_no_trace(
    tmp_path, empty_mlflow_store
):
    import mlflow

    from cvr.checkpointing import load_checkpoint

    alone = searched_alone(tmp_path / "probe", [0.01, 0.3])
    better, worse = sorted(alone.candidates, key=lambda c: c.score)
    uri = empty_mlflow_store(tmp_path / "run")
    overrides = [*TINY_DATA, *QUIET[1:], "export_bundle=false", "logger.tracking_process=false"]
    overrides += [f"optimizer.lr_search.grid=[{worse.lr},{better.lr}]"]
    cfg = compose_train(tmp_path / "run", overrides)
    folder = Path(cfg.paths.output_dir) / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "other-run.ckpt").write_text("kept")  # not the run's: left alone
    metrics = train(cfg)
    assert metrics["train/lr"] == better.lr
    assert metrics["train/epochs_run"] == len(better.val_auc)
    assert metrics["val/best/auc"] == pytest.approx(better.best, abs=1e-12)
    assert (folder / "other-run.ckpt").read_text() == "kept"
    # Only the final run's checkpoints: its best epoch, its val history.
    (best,) = folder.glob("epoch*.ckpt")
    assert best.name.startswith(f"epoch{better.best_epoch:02d}-")
    history = load_checkpoint(best)["callbacks"]["ValidationByEpoch"]["by_epoch"]
    assert [history[e]["val/auc"] for e in sorted(history)] == pytest.approx(
        better.val_auc[: better.best_epoch + 1], abs=1e-12
    )
    # MLflow: the run's curves are the final run's alone; the first run's under its rate.
    client = mlflow.MlflowClient(uri)
    (run_info,) = client.search_runs([client.get_experiment_by_name("cvr").experiment_id])
    curve = [m.value for m in client.get_metric_history(run_info.info.run_id, "val/auc")]
    assert curve == pytest.approx(better.val_auc, abs=1e-6)
    first = client.get_metric_history(run_info.info.run_id, f"lr_search/{worse.lr:g}/val/auc")
    assert [m.value for m in first] == pytest.approx(worse.val_auc, abs=1e-6)


def test_the_grid_is_walked_until_a_rate_scores_below_the_best_before_it(tmp_path):
    cfg = compose_train(tmp_path, [*TINY_DATA, *QUIET, "optimizer.lr_search.grid=[0.01,0.3]"])
    store = build_store(cfg)
    label = training_label(cfg, store)
    pair = lr_search.choose_lr(cfg, store, label).candidates
    better, worse = sorted(pair, key=lambda c: c.score)
    grid = f"optimizer.lr_search.grid=[{better.lr},{worse.lr},0.05]"
    walk = "optimizer.lr_search.walk_patience=1"
    cfg = compose_train(tmp_path, [*TINY_DATA, *QUIET, grid, walk])
    result = lr_search.choose_lr(cfg, store, label)
    assert [c.lr for c in result.candidates] == [better.lr, worse.lr]  # 0.05 never trained
    assert result.lr == better.lr
    # walk_patience 2: one worse rate does not end the walk, so 0.05 trains too
    cfg = compose_train(tmp_path, [*TINY_DATA, *QUIET, grid, "optimizer.lr_search.walk_patience=2"])
    result = lr_search.choose_lr(cfg, store, label)
    assert [c.lr for c in result.candidates] == [better.lr, worse.lr, 0.05]
    assert result.lr == min(result.candidates, key=lambda c: c.score).lr


def test_candidates_stop_by_the_pipelines_early_stopping_rule(tmp_path):
    # patience 1 with a min_delta no epoch can beat: every candidate stops after 2 epochs
    overrides = [*TINY_DATA, *QUIET, "callbacks.early_stopping.patience=1"]
    overrides += ["callbacks.early_stopping.min_delta=1.0", "optimizer.lr_search.grid=[0.02,0.05]"]
    metrics = run(tmp_path / "run", *overrides[len(TINY_DATA) + len(QUIET) :])
    cfg = compose_train(tmp_path / "probe", overrides)
    store = build_store(cfg)
    result = lr_search.choose_lr(cfg, store, training_label(cfg, store))
    assert [len(c.val_auc) for c in result.candidates] == [2, 2]
    assert metrics["train/epochs_run"] == 2


@pytest.mark.parametrize(
    "override,why",
    [
        ("optimizer.lr=0.05", "an explicit lr"),
        ("optimizer.lr_search.max_train_rows=100", "more rows than the limit"),
        ("optimizer.lr_search.grid=[0.03]", "a one-rate grid"),
    ],
)
def test_no_search_where_it_does_not_apply(tmp_path, override, why):
    metrics = run(tmp_path, override)
    assert not any(k.startswith("train/lr_search") for k in metrics), why
    expected = {"optimizer.lr=0.05": 0.05, "optimizer.lr_search.grid=[0.03]": 0.03}
    assert metrics["train/lr"] == expected.get(override, 0.02)  # else default_lr.fused


def test_a_bad_grid_is_refused_with_its_key(tmp_path):
    cfg = compose_train(tmp_path, [*TINY_DATA, *QUIET, "optimizer.lr_search.grid=[0.02,-1]"])
    store = build_store(cfg)
    with pytest.raises(ConfigError, match=r"optimizer\.lr_search\.grid"):
        lr_search.choose_lr(cfg, store, training_label(cfg, store))


def test_a_candidate_is_scored_at_the_epoch_its_checkpoint_would_keep():
    c = lr_search.Candidate(0.1, [0.6, math.nan, 0.7, 0.7, 0.65], [0.5, 0.6, 0.45, 0.44, 0.43])
    # the first epoch with the highest finite AUC (Lightning keeps the first of equals)
    assert (c.best_epoch, c.best, c.score) == (2, 0.7, 0.45)
    one_class = lr_search.Candidate(0.1, [math.nan], [0.3])
    assert one_class.best_epoch is None
    assert math.isnan(one_class.best) and math.isnan(one_class.score)


def test_a_resumed_run_reuses_the_recorded_search(tmp_path, monkeypatch):
    overrides = [*TINY_DATA, *QUIET, "optimizer.lr_search.grid=[0.01,0.3]"]
    first = compose_train(tmp_path, overrides)
    done = train(first)
    trained = []
    real = lr_search.train_candidate

    def counted(cfg, store, label, lr, options, threads):
        trained.append(lr)
        return real(cfg, store, label, lr, options, threads)

    monkeypatch.setattr(lr_search, "train_candidate", counted)
    again = compose_train(tmp_path, [*overrides, "resume=true"])
    resumed = train(again)
    assert trained == []  # the search is not redone
    assert resumed["train/lr"] == done["train/lr"]
    searched = {k: v for k, v in done.items() if k.startswith("train/lr_search/")}
    assert searched and all(resumed[k] == pytest.approx(v, abs=1e-12) for k, v in searched.items())
    assert recorded(again.paths.output_dir) == recorded(first.paths.output_dir)
    # A checkpoint of the search's first run, before the search went on (no outcome recorded):
    # the resumed run is that candidate, its val history read from the checkpoint, and only the
    # later rates train through the kernels.
    (Path(again.paths.output_dir) / lr_search.OUTCOME_FILE).unlink()
    third = compose_train(tmp_path, [*overrides, f"resume={again.paths.output_dir}"])
    again_metrics = train(third)
    outcome = recorded(third.paths.output_dir)
    assert done["train/lr"] == 0.01  # (on these rows) the first rate won: its checkpoint's run
    assert trained == [0.3]
    assert outcome == recorded(first.paths.output_dir)
    assert again_metrics["train/lr"] == 0.01
