import numpy as np
import pandas as pd

from cvr.tracking.report import markdown_table, marker_groups, pareto_front, write_report


def frame():
    return pd.DataFrame(
        {
            "model": ["FM", "FM", "FFM", "FFM", "FFM"],
            "embedding": ["Full"] * 5,
            "dim": [2, 4, 2, 4, 8],
            "variant": ["a", "b", "c", "d", "e"],
            "eff/embedding_bytes": [100.0, 200.0, 150.0, 300.0, 600.0],
            "test/auc": [0.70, 0.72, 0.74, 0.73, 0.76],
            "eff/latency_b1_p99_us": [10.0, 12.0, 20.0, 25.0, np.nan],
        }
    )


def test_pareto_front_keeps_exactly_the_undominated_runs():
    df = frame()
    front = pareto_front(df, "eff/embedding_bytes", "test/auc")
    # b (200 B, .72) is dominated by c (150 B, .74).
    # d (300 B, .73) is dominated by c; a, c, e are the front.
    assert df.loc[front, "variant"].tolist() == ["a", "c", "e"]


def test_pareto_front_ignores_missing_values_and_keeps_ties():
    df = frame()
    front = pareto_front(df, "eff/latency_b1_p99_us", "test/auc")
    assert not front.iloc[4]  # NaN latency is never on the front
    tie = pd.DataFrame({"c": [1.0, 1.0], "q": [0.5, 0.5]})
    assert pareto_front(tie, "c", "q").tolist() == [True, True]


def test_write_report_makes_markdown_and_plots(tmp_path):
    files = write_report(frame(), tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "Pareto front: test/auc against eff/embedding_bytes" in report
    for name, path in files.items():
        assert path.exists() and path.stat().st_size > 0, name
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert len(pngs) == 2
    assert (tmp_path / pngs[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_table_formats_rows():
    table = markdown_table(frame().head(2), ["variant", "test/auc", "missing"])
    lines = table.splitlines()
    assert lines[0] == "| variant | test/auc |"
    assert lines[2] == "| a | 0.7 |"


def test_marker_groups_keep_runs_with_a_missing_backend():
    df = pd.DataFrame(
        {
            "model": ["FM", "FM", "FFM"],
            "embedding": ["Full", "Full", "Full"],
            "backend": ["fused", np.nan, np.nan],
        }
    )
    groups = dict(marker_groups(df))
    assert sorted(groups) == ["FFM / Full", "FM / Full", "FM / Full / fused"]
    assert sum(len(g) for g in groups.values()) == 3
