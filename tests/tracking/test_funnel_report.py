"""The CVR study report on hand-made run folders: grouping over seeds, spreads, verdicts, files."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from cvr.tracking.funnel_report import (
    acceptance,
    bias_effects,
    load_study_runs,
    markdown_table,
    plot_metric,
    summarize,
    write_report,
)


def make_run(
    root,
    name,
    task,
    seed,
    cvr_auc_all,
    cvr_auc_clicked,
    share=True,
    bias=0.8,
    private_dim=4,
    epochs=(3, 4),
    max_epochs=20,
    batch=250,
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
        "train/best_epoch": float(epochs[0]),
        "train/epochs_run": float(epochs[1]),
        "train/max_epochs": float(max_epochs),
        "train/batch_size": float(batch),
        "train/weight_decay": 1e-5 if task == "esmm" else 2e-4,
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


def test_cells_say_how_each_run_ended_and_a_capped_cell_is_no_verdict(tmp_path):
    """best/run epochs per seed (in seed order) and the runs that ran into the epoch cap: such a
    run had not stopped improving, so its cell's ESMM-vs-naive difference is marked no verdict."""
    for seed in (1, 0):
        make_run(tmp_path, f"esmm{seed}", "esmm", seed, 0.62, 0.60, epochs=(2 + seed, 3 + seed))
        make_run(tmp_path, f"cvr{seed}", "cvr", seed, 0.60, 0.60, epochs=(20, 20))
    make_run(tmp_path, "e_other", "esmm", 0, 0.62, 0.60, bias=0.0, epochs=(5, 6))
    make_run(tmp_path, "c_other", "cvr", 0, 0.60, 0.60, bias=0.0, epochs=(20, 20), max_epochs=50)
    table = summarize(load_study_runs([tmp_path])).set_index(["bias", "arm"])
    assert table.loc[(0.8, "ESMM"), "epochs"] == "2/3,3/4"
    assert table.loc[(0.8, "ESMM"), "capped"] == 0
    assert table.loc[(0.8, "naive CVR"), "capped"] == 2
    assert table.loc[(0.0, "naive CVR"), "capped"] == 0  # 20 of 50 epochs: stopped early
    lines = acceptance(table.reset_index())
    (capped_line,) = [line for line in lines if "bias=0.8" in line]
    (other_line,) = [line for line in lines if "bias=0.0" in line]
    assert "2 run(s) ended by the epoch cap" in capped_line
    assert "epoch cap" not in other_line
    assert "| **2** |" in markdown_table(table.reset_index())


def test_the_plot_draws_every_arm_even_one_worse_than_chance(tmp_path):
    """The 100k sweep had ESMM FM at bias 0 at cvr_auc_all 0.457: the plot's floor of 0.5 hid
    its bar. Every (arm, bias) with the metric is a bar whose top lies inside the axes, and the
    one legend names every arm once."""
    values = {"cvr": (0.63, 0.56), "esmm": (0.457, 0.57)}
    for task, (off, on) in values.items():
        make_run(tmp_path, f"{task}-off", task, 0, off, off, bias=0.0)
        make_run(tmp_path, f"{task}-on", task, 0, on, on, bias=0.8)
    make_run(tmp_path, "shared-off", "esmm", 0, 0.45, 0.45, bias=0.0, private_dim=0)
    fig = plot_metric(summarize(load_study_runs([tmp_path])), "cvr_auc_all", tmp_path / "p.png")
    (ax,) = fig.axes
    low, high = ax.get_ylim()
    # (fully shared ESMM has no run at bias 0.8: its bar there is NaN, i.e. not drawn)
    tops = sorted(round(h, 3) for bar in ax.patches if math.isfinite(h := bar.get_height()))
    assert tops == [0.45, 0.457, 0.56, 0.57, 0.63]
    assert all(low < top < high for top in tops)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "naive CVR",
        "ESMM",
        "ESMM (fully shared)",
    ]
    assert (tmp_path / "p.png").stat().st_size > 0


def test_cells_show_each_arms_batch_and_decay_and_a_mixed_cell_lists_both(tmp_path):
    """The verdict moved with the batch each arm got (README "The CVR study"): every cell says
    which batch and weight decay its runs trained with, all of them where its seeds differ."""
    make_run(tmp_path, "esmm0", "esmm", 0, 0.62, 0.60, batch=2048)
    make_run(tmp_path, "esmm1", "esmm", 1, 0.62, 0.60, batch=250)
    for seed in (0, 1):
        make_run(tmp_path, f"cvr{seed}", "cvr", seed, 0.60, 0.60)
    table = summarize(load_study_runs([tmp_path]))
    cells = table.set_index("arm")
    assert cells.loc["ESMM", "batch"] == "250,2048"
    assert cells.loc["naive CVR", "batch"] == "250"
    assert cells.loc["ESMM", "weight_decay"] == "1e-05"
    assert cells.loc["naive CVR", "weight_decay"] == "0.0002"
    (line,) = acceptance(table)
    assert "(2/2 seeds, batch 250,2048/250)" in line
    assert "| 250,2048 | 1e-05 |" in markdown_table(table)


def test_the_bias_effect_is_the_margin_at_the_bias_minus_the_margin_without_it(tmp_path):
    # bias 0: ESMM 0.70/0.71 vs naive 0.69/0.69 -> +0.015 (spreads 0.01, 0); bias 0.8: ESMM
    # 0.66/0.66 vs naive 0.63/0.64 -> +0.025 (spreads 0, 0.01): the bias adds +0.010.
    values = {0.0: ((0.70, 0.71), (0.69, 0.69)), 0.8: ((0.66, 0.66), (0.63, 0.64))}
    for bias, (esmm, naive) in values.items():
        for seed in (0, 1):
            make_run(tmp_path, f"e{bias}{seed}", "esmm", seed, esmm[seed], 0.6, bias=bias)
            make_run(tmp_path, f"c{bias}{seed}", "cvr", seed, naive[seed], 0.6, bias=bias)
    make_run(tmp_path, "lonely", "esmm", 0, 0.6, 0.6, bias=0.5)  # no naive arm: no line
    (line,) = bias_effects(summarize(load_study_runs([tmp_path])))
    assert "+0.0250 at bias=0.8, +0.0150 at bias=0.0: the bias adds +0.0100" in line
    assert "(spreads 0.0100 + 0.0100 = 0.0200)" in line
    paths = write_report(load_study_runs([tmp_path]), tmp_path / "report")
    assert "the bias adds +0.0100" in paths["report.md"].read_text()
