"""The final table says how many epochs ran, which was best and why training stopped."""

import pytest
import torch

from cvr.pipelines.run_summary import metrics_table, stop_line
from tests.helpers import TINY_DATA, compose_train


def test_stop_line_names_the_reason():
    early = {"train/epochs_run": 7.0, "train/max_epochs": 50.0, "train/best_epoch": 4.0}
    early["train/stopped_early"] = 1.0
    assert (
        stop_line(early) == "epochs 7 of 50, best 4: early stopping (validation stopped improving)"
    )
    limit = {"train/epochs_run": 4.0, "train/max_epochs": 4.0, "train/stopped_early": 0.0}
    assert stop_line(limit) == "epochs 4 of 4: reached trainer.max_epochs"
    assert stop_line({}) is None
    assert metrics_table({**early, "test/auc": 0.7}).splitlines()[0] == stop_line(early)


def test_the_val_column_is_the_best_epochs():
    metrics = {"train/epochs_run": 7.0, "train/best_epoch": 4.0, "test/auc": 0.7}
    metrics |= {"val/auc": 0.61, "val/best/auc": 0.65}
    table = metrics_table(metrics).splitlines()
    assert table[1].split()[-3:] == ["val", "(best)", "test"]
    assert table[3].split() == ["auc", "0.65000", "0.70000"]
    # Without the best epoch's figures (a resume past it) the column says it is the last's.
    del metrics["val/best/auc"]
    table = metrics_table(metrics).splitlines()
    assert "val (last)" in table[1] and table[3].split() == ["auc", "0.61000", "0.70000"]


def test_a_run_reports_epochs_best_epoch_and_stop(tmp_path):
    from cvr.pipelines.train import train

    overrides = [*TINY_DATA, "logger=none", "export_bundle=false", "trainer.max_epochs=3"]
    overrides += ["trainer.enable_progress_bar=false", "callbacks.efficiency_profile.enabled=false"]
    metrics = train(compose_train(tmp_path, overrides))
    ran, best = metrics["train/epochs_run"], metrics["train/best_epoch"]
    assert 1 <= best <= ran <= 3
    assert metrics["train/max_epochs"] == 3
    # Stopped early exactly when fewer epochs than the limit ran.
    assert metrics["train/stopped_early"] == float(ran < 3)
    # The best epoch is the one whose checkpoint was tested: its file name says so.
    (ckpt,) = (p for p in (tmp_path / "runs").rglob("epoch*.ckpt"))
    assert ckpt.name.startswith(f"epoch{int(best) - 1:02d}-")
    # The summary's best-epoch val figures are that epoch's: the AUC the checkpoint was kept for.
    state = torch.load(ckpt, weights_only=True)
    (kept,) = (v for k, v in state["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert metrics["val/best/auc"] == pytest.approx(float(kept["best_model_score"]), abs=1e-6)
    assert metrics["val/best/auc"] >= metrics["val/auc"]  # val/... are the last epoch's
    assert "val/best/logloss" in metrics
