"""The CVR study report on hand-made run folders: grouping over seeds, spreads, verdicts, files."""

from __future__ import annotations

import json

import pytest
import yaml

from cvr.tracking.funnel_report import acceptance, load_study_runs, summarize, write_report


def make_run(
    root, name, task, seed, cvr_auc_all, cvr_auc_clicked, share=True, bias=0.8, private_dim=4
):
    folder = root / name
    (folder / ".hydra").mkdir(parents=True)
    cfg = {
        "task": {"name": task},
        "esmm": {"share_embedding": share, "private_dim": private_dim},
        "model": {"_target_": "cvr.models.ctr.FFM"},
        "data": {"name": "synthetic", "funnel_correlation": bias, "rows_train": 1000},
        "seed": seed,
        "backend": {"name": "autograd"},
    }
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    metrics = {
        "test/cvr_auc_all": cvr_auc_all,
        "test/cvr_auc_clicked": cvr_auc_clicked,
        "test/oracle_cvr_auc_all": 0.7,
        "data/rows_train": 1000.0,
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_summary_and_verdicts(tmp_path):
    for seed, (esmm, naive) in enumerate([(0.62, 0.60), (0.63, 0.61), (0.61, 0.605)]):
        make_run(tmp_path, f"esmm{seed}", "esmm", seed, esmm, 0.60 + seed * 0.001)
        make_run(tmp_path, f"cvr{seed}", "cvr", seed, naive, 0.60)
    make_run(tmp_path, "noshare", "esmm", 0, 0.5, 0.5, share=False, private_dim=0)
    make_run(tmp_path, "shared", "esmm", 0, 0.55, 0.55, private_dim=0)
    (tmp_path / "not_a_run").mkdir()  # ignored: no metrics.json
    make_run(tmp_path, "legacy", "ctr", 0, 0.5, 0.5)
    (tmp_path / "legacy" / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": 0}))
    runs = load_study_runs([tmp_path])
    arms = ["ESMM", "ESMM (fully shared)", "ESMM (no sharing)", "naive CVR"]
    assert sorted(runs["arm"].unique()) == arms
    table = summarize(runs).set_index("arm")
    assert table.loc["ESMM", "seeds"] == 3
    assert table.loc["ESMM", "cvr_auc_all"] == pytest.approx(0.62)
    assert table.loc["ESMM", "cvr_auc_all_spread"] == pytest.approx(0.02)
    assert table.loc["naive CVR", "cvr_auc_all_gap"] == pytest.approx(0.7 - 0.605)
    (line,) = acceptance(summarize(runs))
    # cvr_auc_all: +0.015 against a spread of 0.02 -> within; clicked +0.001 vs 0.002 -> within.
    assert "cvr_auc_all +0.0150 (spread 0.0200: within spread)" in line
    assert "3/3 seeds" in line
    paths = write_report(runs, tmp_path / "report")
    assert "ESMM vs naive CVR" in paths["report.md"].read_text()
    assert paths["cvr_auc_all.png"].stat().st_size > 0
