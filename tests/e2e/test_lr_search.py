"""The fused learning rate chosen on validation (cvr.pipelines.lr_search) through the pipeline."""

import math

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


def test_the_run_trains_the_rate_with_the_best_val_auc_and_repeats_its_search_run(tmp_path):
    grid = [0.01, 0.3]
    grid_override = f"optimizer.lr_search.grid={grid}"
    cfg = compose_train(tmp_path / "probe", [*TINY_DATA, *QUIET, grid_override])
    store = build_store(cfg)
    result = lr_search.choose_lr(cfg, store, training_label(cfg, store))
    assert [c.lr for c in result.candidates] == grid
    score = {c.lr: c.score for c in result.candidates}
    assert score[0.01] != score[0.3]  # the two rates must differ for the choice to mean anything
    assert result.lr == min(score, key=score.get)

    metrics = run(tmp_path / "run", grid_override)
    assert metrics["train/lr"] == result.lr
    for c in result.candidates:
        assert metrics[f"train/lr_search/{c.lr:g}/val_auc"] == pytest.approx(c.best, abs=1e-12)
        assert metrics[f"train/lr_search/{c.lr:g}/val_logloss"] == pytest.approx(c.score, abs=1e-12)
    # The pipeline's run at the chosen rate is the candidate's run: same epochs, same kept
    # epoch, same val figures there.
    chosen = next(c for c in result.candidates if c.lr == result.lr)
    assert metrics["train/epochs_run"] == len(chosen.val_auc)
    assert metrics["train/best_epoch"] == chosen.best_epoch + 1
    assert metrics["val/best/auc"] == pytest.approx(chosen.best, abs=1e-6)
    assert metrics["val/best/logloss"] == pytest.approx(chosen.score, abs=1e-6)
    # ... and a run given that rate explicitly (no search) learns the same model.
    fixed = run(tmp_path / "fixed", f"optimizer.lr={result.lr}")
    assert fixed["test/auc"] == pytest.approx(metrics["test/auc"], abs=1e-6)
    assert not any(k.startswith("train/lr_search") for k in fixed)


def test_the_grid_is_walked_until_a_rate_scores_below_the_best_before_it(tmp_path):
    cfg = compose_train(tmp_path, [*TINY_DATA, *QUIET, "optimizer.lr_search.grid=[0.01,0.3]"])
    store = build_store(cfg)
    label = training_label(cfg, store)
    pair = lr_search.choose_lr(cfg, store, label).candidates
    better, worse = sorted(pair, key=lambda c: c.score)
    grid = f"optimizer.lr_search.grid=[{better.lr},{worse.lr},0.05]"
    cfg = compose_train(tmp_path, [*TINY_DATA, *QUIET, grid])
    result = lr_search.choose_lr(cfg, store, label)
    assert [c.lr for c in result.candidates] == [better.lr, worse.lr]  # 0.05 never trained
    assert result.lr == better.lr


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
