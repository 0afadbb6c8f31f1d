"""Trade-off report: MLflow runs -> DataFrame -> Pareto fronts -> PNG plots + Markdown table.

The report never re-runs training: it reads what the runs logged (test/... quality, eff/...
efficiency, params) and answers "which embedding choices are worth their bytes and latency".
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

# Figure objects render straight to files: no pyplot state, no display needed, and importing
# this module leaves the backend of an interactive session (a notebook) alone.
from matplotlib.figure import Figure

log = logging.getLogger(__name__)

#: (x metric to minimise, y metric to maximise) pairs the report plots.
TRADEOFFS = (
    ("eff/embedding_bytes", "test/auc"),
    ("eff/latency_b1_p99_us", "test/auc"),
)


def _short(target: object) -> str:
    """'cvr.models.ctr.FFM' -> 'FFM'; 'cvr.models.embeddings.FullEmbedding' -> 'Full'."""
    name = str(target).rsplit(".", 1)[-1]
    return name.removesuffix("Embedding") or name


def load_runs(
    tracking_uri: str,
    experiment: str = "cvr",
    sweep_id: str | None = None,
    include_parents: bool = False,
) -> pd.DataFrame:
    """One row per finished training run: run id, model, embedding, dim, and every metric.

    `sweep_id`: only the children of that sweep; "latest": the most recent sweep; None: all.
    Metric columns keep their logged names (`test/auc`, `eff/embedding_bytes`, ...).
    """
    mlflow.set_tracking_uri(tracking_uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        raise LookupError(f"no MLflow experiment {experiment!r} at {tracking_uri}")
    raw = mlflow.search_runs(experiment_names=[experiment], output_format="pandas")
    if raw.empty:
        return pd.DataFrame()
    if "tags.sweep_role" in raw and not include_parents:
        raw = raw[raw["tags.sweep_role"].fillna("") != "parent"]
    if sweep_id == "latest":
        sweeps = raw.dropna(subset=["tags.sweep_id"]) if "tags.sweep_id" in raw else raw.iloc[:0]
        if sweeps.empty:
            raise LookupError(f"no sweep runs in experiment {experiment!r}")
        sweep_id = sweeps.sort_values("start_time")["tags.sweep_id"].iloc[-1]
    if sweep_id is not None:
        raw = raw[raw.get("tags.sweep_id") == sweep_id]
    raw = raw[raw["status"] == "FINISHED"]
    df = pd.DataFrame(
        {
            "run_id": raw["run_id"],
            "run_name": raw.get("tags.mlflow.runName"),
            "sweep_id": raw.get("tags.sweep_id"),
            "model": raw.get("params.model._target_", pd.Series(dtype=str)).map(_short),
            "embedding": raw.get("params.embedding._target_", pd.Series(dtype=str)).map(_short),
            "dim": pd.to_numeric(raw.get("params.embedding.dim"), errors="coerce"),
            # The backend that trained (tag set by the pipeline), else the old model.backend param.
            "backend": raw.get("tags.backend", pd.Series(dtype=str))
            .combine_first(raw.get("params.model.backend", pd.Series(dtype=str)))
            .fillna(""),
            "data": raw.get("tags.dataset"),
        }
    )
    metrics = raw[[c for c in raw.columns if c.startswith("metrics.")]]
    metrics.columns = [c.removeprefix("metrics.") for c in metrics.columns]
    df = pd.concat([df, metrics], axis=1)
    dims = "/k" + df["dim"].astype("Int64").astype(str)
    # Same model and table trained by another backend is another point, not a duplicate.
    backend = (
        df["backend"].where(df["backend"] == "autograd", "").map(lambda b: f" ({b})" if b else "")
    )
    df["variant"] = df["model"] + "/" + df["embedding"] + dims + backend
    return df.reset_index(drop=True)


def pareto_front(df: pd.DataFrame, cost: str, quality: str) -> pd.Series:
    """True for rows no other row beats: cost <= and quality >=, one of them strictly."""
    costs = df[cost].to_numpy(dtype=float)
    qualities = df[quality].to_numpy(dtype=float)
    valid = np.isfinite(costs) & np.isfinite(qualities)
    dominated = np.zeros(len(df), dtype=bool)
    for i in np.flatnonzero(valid):
        better_or_equal = valid & (costs <= costs[i]) & (qualities >= qualities[i])
        strictly = (costs < costs[i]) | (qualities > qualities[i])
        dominated[i] = bool((better_or_equal & strictly).any())
    return pd.Series(valid & ~dominated, index=df.index)


def marker_groups(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(legend label, rows) per model / embedding / backend; a missing value is its own group.

    (pandas' groupby drops rows whose key is NaN: runs without a backend tag would vanish.)
    """
    keys = [k for k in ("model", "embedding", "backend") if k in df]
    filled = df.assign(**{k: df[k].fillna("").astype(str) for k in keys})
    return [
        (" / ".join(k for k in key if k), df.loc[group.index])
        for key, group in filled.groupby(keys, sort=True)
    ]


def plot_tradeoff(df: pd.DataFrame, cost: str, quality: str, path: str | Path) -> Path:
    """Scatter of quality against cost (log x), one marker per model, the front joined."""
    path = Path(path)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for label, group in marker_groups(df):
        ax.scatter(group[cost], group[quality], label=label, alpha=0.8)
        for _, row in group.iterrows():
            ax.annotate(
                f"k{int(row['dim'])}" if pd.notna(row["dim"]) else "",
                (row[cost], row[quality]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    front = df[pareto_front(df, cost, quality)].sort_values(cost)
    ax.plot(front[cost], front[quality], "k--", linewidth=1, label="Pareto front")
    if (df[cost] > 0).all():
        ax.set_xscale("log")
    ax.set_xlabel(cost)
    ax.set_ylabel(quality)
    ax.set_title(f"{quality} against {cost}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def markdown_table(df: pd.DataFrame, columns: list[str]) -> str:
    """A GitHub-flavoured Markdown table of the given columns (missing ones skipped)."""
    cols = [c for c in columns if c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df[cols].iterrows():
        cells = []
        for value in row:
            if isinstance(value, float | np.floating):
                cells.append(f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


REPORT_COLUMNS = [
    "variant",
    "test/auc",
    "test/logloss",
    "test/auc_gap",
    "eff/embedding_bytes",
    "eff/params",
    "eff/latency_b1_p99_us",
    "eff/throughput_b4096_per_s",
    "eff/train_samples_per_s",
    "test/int8/auc",
    "eff/int8/embedding_bytes",
]


def write_report(df: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    """Markdown report and one PNG per trade-off present in the runs; returns the files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if df.empty:
        raise ValueError("no finished runs to report on")
    df = df.sort_values([c for c in ("model", "backend", "embedding", "dim") if c in df])
    files: dict[str, Path] = {}
    sections = ["# Embedding trade-off report", "", f"{len(df)} runs.", ""]
    sections += ["## All runs", "", markdown_table(df, REPORT_COLUMNS), ""]
    for cost, quality in TRADEOFFS:
        if cost not in df or quality not in df or df[[cost, quality]].dropna().empty:
            continue
        name = f"{quality}_vs_{cost}".replace("/", "_")
        files[name] = plot_tradeoff(df, cost, quality, out_dir / f"{name}.png")
        front = df[pareto_front(df, cost, quality)].sort_values(cost)
        sections += [
            f"## Pareto front: {quality} against {cost}",
            "",
            markdown_table(front, ["variant", cost, quality]),
            "",
            f"![{name}]({name}.png)",
            "",
        ]
    report = out_dir / "report.md"
    report.write_text("\n".join(sections))
    files["report"] = report
    df.to_csv(out_dir / "runs.csv", index=False)
    files["runs"] = out_dir / "runs.csv"
    return files


def log_report(tracking_uri: str, run_id: str, files: dict[str, Path]) -> None:
    """Attach the report files to a run (a sweep's parent run)."""
    client = mlflow.MlflowClient(tracking_uri)
    for path in files.values():
        client.log_artifact(run_id, str(path), artifact_path="report")


def parent_run_of(tracking_uri: str, experiment: str, sweep_id: str) -> str | None:
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string=f"tags.sweep_id = '{sweep_id}' and tags.sweep_role = 'parent'",
    )
    return None if runs.empty else runs["run_id"].iloc[0]
