"""A run's plots and summary from hand-made histories and metrics."""

from __future__ import annotations

from matplotlib.image import imread

from cvr.tracking.plots import latency_table, memory_table, summary_markdown, write_run_artifacts

HISTORIES = {
    "val/auc": [(0, 0.70), (1, 0.74), (2, 0.73)],
    "val/logloss": [(0, 0.50), (1, 0.47), (2, 0.48)],
    "train/loss": [(0, 0.55), (1, 0.46), (2, 0.44)],
}
SUMMARY = {
    "test/auc": 0.731,
    "test/logloss": 0.481,
    "eff/params": 1000.0,
    "eff/embedding_bytes": 4000.0,
    "eff/embedding_bytes/embedding": 3600.0,
    "eff/embedding_bytes/linear": 400.0,
    "eff/int8/embedding_bytes": 1000.0,
    "eff/latency_b1_p50_us": 10.0,
    "eff/latency_b1_p99_us": 20.0,
    "eff/latency_b64_p50_us": 40.0,
    "eff/latency_b64_p99_us": 60.0,
    "eff/int8/latency_b1_p50_us": 12.0,
}


def test_tables_parse_metric_names():
    latency = latency_table(SUMMARY)
    assert latency["float"]["p50"] == {1: 10.0, 64: 40.0}
    assert latency["float"]["p99"] == {1: 20.0, 64: 60.0}
    assert latency["int8"]["p50"] == {1: 12.0}
    memory = memory_table(SUMMARY)
    assert memory == {"float": {"embedding": 3600.0, "linear": 400.0}, "int8": {"all": 1000.0}}


def test_write_run_artifacts_makes_three_images_and_a_summary(tmp_path):
    files = write_run_artifacts(
        HISTORIES, SUMMARY, tmp_path, "ffm-x-k4-seed0", {"model": "ffm"}, {"auc": 0.8}
    )
    assert set(files) == {"learning_curve", "latency_vs_batch", "memory", "summary"}
    for name in ("learning_curve", "latency_vs_batch", "memory"):
        image = imread(files[name])
        assert image.shape[0] > 100 and image.shape[1] > 100
    assert files["learning_curve"] == tmp_path / "plots" / "learning_curve.png"
    text = files["summary"].read_text()
    assert "Epochs run: 3; best val AUC at epoch 1" in text
    assert "| auc | 0.73000 | 0.73100 |" in text


def test_no_efficiency_metrics_no_latency_or_memory_plot(tmp_path):
    files = write_run_artifacts(HISTORIES, {"test/auc": 0.7}, tmp_path)
    assert set(files) == {"learning_curve", "summary"}
    assert "Epochs run" in summary_markdown("t", {}, HISTORIES, {})
