"""The CVR study's report: run folders -> DataFrame -> per-arm table over seeds -> plots.

    runs = load_study_runs(["outputs/multirun/<sweep>", "outputs/cvr_study"])
    table = summarize(runs)                 # one row per (bias, rows, tower, arm): mean, spread
    verdicts = acceptance(table)            # ESMM vs naive CVR per cell, against the spread
    effects = bias_effects(table)           # how much that margin grows with the bias
    write_report(runs, "outputs/report/cvr_study")

A run folder is any folder with `metrics.json` and Hydra's `.hydra/config.yaml` (a sweep's job
folders, or `hydra.run.dir` of single runs). Nothing is re-run: the report reads what ran.
The spread of a cell is max - min over its seeds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure

#: The metrics the table reports (test split), in order.
METRICS = (
    "cvr_auc_all",
    "cvr_auc_clicked",
    "cvr_logloss_all",
    "ctcvr_auc",
    "ctr_auc",
    "oracle_cvr_auc_all",
    "oracle_cvr_auc_clicked",
    "oracle_ctcvr_auc",
)
ARMS = ("naive CVR", "CTCVR", "ESMM", "ESMM (fully shared)", "ESMM (no sharing)")


def _arm(task: str, esmm: dict) -> str:
    """ESMM is task=esmm's default (shared table + private factors per tower)."""
    if task != "esmm":
        return {"cvr": "naive CVR", "ctcvr": "CTCVR", "ctr": "CTR"}.get(task, task)
    if not esmm.get("share_embedding", True):
        return "ESMM (no sharing)"
    return "ESMM" if esmm.get("private_dim", 0) else "ESMM (fully shared)"


def _tower(model: dict) -> str:
    name = model.get("name") or str(model.get("_target_", "")).rsplit(".", 1)[-1]
    return name.lower()


def read_run(folder: Path) -> dict | None:
    """One row for a finished funnel run folder, or None if it is not one."""
    metrics_path, config_path = folder / "metrics.json", folder / ".hydra" / "config.yaml"
    if not (metrics_path.is_file() and config_path.is_file()):
        return None
    cfg = yaml.safe_load(config_path.read_text())
    task = (cfg.get("task") or {}).get("name")
    if task is None:
        return None
    metrics = json.loads(metrics_path.read_text())
    data = cfg.get("data", {})
    row = {
        "folder": str(folder),
        "arm": _arm(task, cfg.get("esmm") or {}),
        "tower": _tower(cfg.get("model", {})),
        "bias": data.get("funnel_correlation"),
        "dataset": data.get("name", "?"),
        "rows_train": int(metrics.get("data/rows_train", data.get("rows_train", 0))),
        "seed": cfg.get("seed"),
        "backend": (cfg.get("backend") or {}).get("name"),
        "epochs_run": metrics.get("train/epochs_run"),
        "best_epoch": metrics.get("train/best_epoch"),
        "max_epochs": metrics.get("train/max_epochs"),
        # The study's rules give each arm its own batch and decay (cvr/pipelines/funnel.py), and
        # the verdict moved with the batch: the table says what each arm trained with.
        "batch": metrics.get("train/batch_size"),
        "weight_decay": metrics.get("train/weight_decay"),
    }
    row.update({m: metrics.get(f"test/{m}", np.nan) for m in METRICS})
    return row


def load_study_runs(roots: Iterable[str | Path]) -> pd.DataFrame:
    """Every funnel run folder under `roots` (searched recursively), one row each."""
    rows = []
    for root in roots:
        for metrics in sorted(Path(root).rglob("metrics.json")):
            row = read_run(metrics.parent)
            if row is not None:
                rows.append(row)
    return pd.DataFrame(rows)


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, bias, rows_train, tower, arm, backend): seeds, and per metric the
    mean and the spread (max - min over seeds)."""
    keys = ["dataset", "bias", "rows_train", "tower", "arm", "backend"]
    grouped = runs.groupby(keys, dropna=False)
    out = grouped.size().rename("seeds").to_frame()
    for metric in METRICS:
        out[metric] = grouped[metric].mean()
        out[f"{metric}_spread"] = grouped[metric].max() - grouped[metric].min()
    out["cvr_auc_all_gap"] = out["oracle_cvr_auc_all"] - out["cvr_auc_all"]
    # How each seed's run ended (best epoch / epochs run), and how many ran into the epoch cap:
    # a run the cap ended had not stopped improving, so its cell is no verdict on the arm.
    out["epochs"] = grouped.apply(_epochs, include_groups=False)
    out["capped"] = grouped.apply(_capped, include_groups=False).astype(int)
    out["batch"] = grouped["batch"].agg(_distinct)
    out["weight_decay"] = grouped["weight_decay"].agg(_distinct)
    return out.reset_index()


def _distinct(values: pd.Series) -> str:
    """The distinct values of a column over a cell's seeds, `,`-joined ('?' where unrecorded)."""
    known = sorted({float(v) for v in pd.to_numeric(values, errors="coerce").dropna()})
    return ",".join(f"{v:g}" for v in known) or "?"


def _epochs(runs: pd.DataFrame) -> str:
    def num(value) -> str:
        return "?" if pd.isna(value) else str(int(value))

    ordered = runs.sort_values("seed", na_position="last")
    pairs = zip(ordered.best_epoch, ordered.epochs_run, strict=True)
    return ",".join(f"{num(best)}/{num(run)}" for best, run in pairs)


def _capped(runs: pd.DataFrame) -> int:
    epochs = pd.to_numeric(runs["epochs_run"], errors="coerce")
    cap = pd.to_numeric(runs["max_epochs"], errors="coerce")
    return int((epochs >= cap).sum())


def _esmm_and_naive(cell: pd.DataFrame) -> tuple[pd.Series, pd.Series] | None:
    """The ESMM and naive CVR rows of one cell of the summary, or None if it lacks either."""
    arms = cell.set_index("arm")
    if not {"ESMM", "naive CVR"} <= set(arms.index):
        return None
    return arms.loc["ESMM"], arms.loc["naive CVR"]


def _margin(esmm: pd.Series, naive: pd.Series, metric: str) -> tuple[float, float]:
    """(ESMM - naive CVR on `metric`, the larger of the two arms' spreads)."""
    spread = max(esmm[f"{metric}_spread"], naive[f"{metric}_spread"])
    return esmm[metric] - naive[metric], spread


def acceptance(table: pd.DataFrame) -> list[str]:
    """Per (dataset, bias, rows, tower) with both arms: ESMM's cvr_auc_all and cvr_auc_clicked
    against naive CVR's, each difference set against the larger of the two spreads."""
    lines = []
    for key, cell in table.groupby(["dataset", "bias", "rows_train", "tower"], dropna=False):
        arms = _esmm_and_naive(cell)
        if arms is None:
            continue
        esmm, naive = arms
        parts = []
        for metric in ("cvr_auc_all", "cvr_auc_clicked"):
            diff, spread = _margin(esmm, naive, metric)
            if min(esmm["seeds"], naive["seeds"]) < 2:
                parts.append(f"{metric} {diff:+.4f} (one seed: no spread to judge by)")
                continue
            verdict = "beats" if diff > spread else "worse" if diff < -spread else "within spread"
            parts.append(f"{metric} {diff:+.4f} (spread {spread:.4f}: {verdict})")
        seeds = f"{int(esmm['seeds'])}/{int(naive['seeds'])} seeds"
        batches = f"batch {esmm['batch']}/{naive['batch']}"
        capped = int(esmm["capped"]) + int(naive["capped"])
        if capped:
            parts.append(
                f"{capped} run(s) ended by the epoch cap, not by early stopping: no verdict"
            )
        dataset, bias, rows, tower = key
        lines.append(
            f"{dataset} bias={bias} rows={rows} {tower} ({seeds}, {batches}): ESMM - naive CVR: "
            + "; ".join(parts)
        )
    return lines


def bias_effects(table: pd.DataFrame, metric: str = "cvr_auc_all") -> list[str]:
    """Per (dataset, rows, tower) with ESMM and naive CVR at bias 0 and at a bias > 0: how much
    ESMM's margin over naive CVR grows with the bias (margin at the bias minus margin at 0).

    At bias 0 the margin is what ESMM gains or loses for other reasons (20x the rows and a CTR
    task sharing its table; a different stopping epoch), so the difference is the part of the
    margin the selection bias accounts for. Set against the sum of the two cells' spreads (each
    the larger of its arms' max - min over seeds)."""
    margins = {}
    for key, cell in table.groupby(["dataset", "rows_train", "tower", "bias"], dropna=False):
        arms = _esmm_and_naive(cell)
        if arms is not None:
            margins[key] = _margin(*arms, metric)
    lines = []
    for (dataset, rows, tower, bias), (margin, spread) in sorted(margins.items(), key=str):
        unbiased = margins.get((dataset, rows, tower, 0.0))
        if not bias or unbiased is None:
            continue
        effect, both = margin - unbiased[0], spread + unbiased[1]
        lines.append(
            f"{dataset} rows={rows} {tower}: ESMM - naive CVR {metric} {margin:+.4f} at "
            f"bias={bias}, {unbiased[0]:+.4f} at bias=0.0: the bias adds {effect:+.4f} "
            f"(spreads {spread:.4f} + {unbiased[1]:.4f} = {both:.4f})"
        )
    return lines


def markdown_table(table: pd.DataFrame) -> str:
    cols = ["dataset", "bias", "rows_train", "tower", "arm", "backend", "seeds"]
    header = [*cols, "cvr_auc_all", "oracle", "gap", "cvr_auc_clicked", "ctcvr_auc", "ctr_auc"]
    header += ["batch", "weight decay", "best/run epochs", "at cap"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cell(row, metric):
        value, spread = row[metric], row.get(f"{metric}_spread", np.nan)
        if not np.isfinite(value):
            return ""
        return f"{value:.4f}" + (f" ±{spread / 2:.4f}" if row["seeds"] > 1 else "")

    for _, row in table.iterrows():
        values = [str(row[c]) for c in cols]
        values += [
            cell(row, "cvr_auc_all"),
            f"{row['oracle_cvr_auc_all']:.4f}" if np.isfinite(row["oracle_cvr_auc_all"]) else "",
            f"{row['cvr_auc_all_gap']:.4f}" if np.isfinite(row["cvr_auc_all_gap"]) else "",
            cell(row, "cvr_auc_clicked"),
            cell(row, "ctcvr_auc"),
            cell(row, "ctr_auc"),
            row["batch"],
            row["weight_decay"],
            row["epochs"],
            f"**{row['capped']}**" if row["capped"] else "0",
        ]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines)


def plot_metric(table: pd.DataFrame, metric: str, path: Path) -> Figure | None:
    """`metric` (cvr_auc_all, ctcvr_auc) per arm that has it (bars, min-max over seeds), per
    bias setting, one panel per (rows, tower); its oracle as a dashed line, chance (0.5) dotted.
    The figure (None if no run has the metric and its oracle)."""
    oracle_key = f"oracle_{metric}"
    synthetic = table[table[oracle_key].notna() & table[metric].notna()]
    panels = list(synthetic.groupby(["rows_train", "tower"]))
    if not panels:
        return None
    fig = Figure(figsize=(5 * len(panels), 4.4))
    for i, ((rows, tower), cell) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        biases = sorted(cell["bias"].dropna().unique())
        arms = [arm for arm in ARMS if arm in set(cell["arm"])]
        width = 0.8 / len(arms)
        for j, arm in enumerate(arms):
            sub = cell[cell["arm"] == arm].set_index("bias").reindex(biases)
            x = np.arange(len(biases)) + (j - (len(arms) - 1) / 2) * width
            ax.bar(x, sub[metric], width, yerr=sub[f"{metric}_spread"] / 2, label=arm)
        oracle = cell.groupby("bias")[oracle_key].mean().reindex(biases)
        for k, value in enumerate(oracle):
            ax.hlines(value, k - 0.45, k + 0.45, colors="k", linestyles="--")
        ax.set_xticks(np.arange(len(biases)), [f"bias {b}" for b in biases])
        # Down to the lowest bar, whatever it is: a run worse than chance is drawn, not cut off.
        low = np.nanmin(cell[metric] - cell[f"{metric}_spread"].fillna(0) / 2) - 0.02
        high = max(np.nanmax(oracle), np.nanmax(cell[metric])) + 0.01
        ax.set_ylim(low, high)
        ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{tower}, {rows:,} train rows")
        ax.set_ylabel(f"test {metric}; dashed: oracle")
    handles, labels = fig.axes[0].get_legend_handles_labels()
    for ax in fig.axes[1:]:  # every arm once, from whichever panel has it
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize="small")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    return fig


def write_report(runs: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    """report.md, runs.csv, summary.json, cvr_auc_all.png and ctcvr_auc.png under `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = summarize(runs)
    verdicts = acceptance(table)
    paths = {name: out / name for name in ("report.md", "runs.csv", "summary.json")}
    runs.to_csv(paths["runs.csv"], index=False)
    paths["summary.json"].write_text(
        json.dumps({"cells": table.to_dict(orient="records"), "acceptance": verdicts}, default=str)
    )
    text = ["# CVR study", "", "Test split; ± is half the max-min spread over seeds.", ""]
    text += [markdown_table(table), "", "## ESMM vs naive CVR", ""]
    text += [f"- {line}" for line in verdicts] or ["- (no cell has both arms)"]
    effects = bias_effects(table)
    text += ["", "## What the bias adds to ESMM's margin", ""] if effects else []
    text += [f"- {line}" for line in effects]
    paths["report.md"].write_text("\n".join(text) + "\n")
    for metric in ("cvr_auc_all", "ctcvr_auc"):
        plot = out / f"{metric}.png"
        plot_metric(table, metric, plot)
        if plot.is_file():
            paths[plot.name] = plot
    return paths
