"""A run's own plots and summary, drawn from what it logged, written as artifacts.

    files = write_run_artifacts(histories, summary, out_dir, title="ffm-criteo-k4-seed0")

- `plots/learning_curve.png`: val AUC and val logloss (with train loss) per epoch; the oracle
  (true probabilities, synthetic data) as a dashed line where known;
- `plots/latency_vs_batch.png`: p50/p95/p99 latency per call against batch size (log-log), one
  line per precision profiled;
- `plots/memory.png`: embedding bytes of the float model and of each quantized precision, split
  by table;
- `summary.md`: what ran, epochs run and best epoch, val/test quality, efficiency figures.

`histories` maps a metric name to its (step, value) points (steps are epochs, see
`epoch_logger`); `summary` is the run's final flat metrics dict (`test/...`, `eff/...`).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

History = Sequence[tuple[int, float]]
PLOTS = "plots"
_LATENCY = re.compile(r"^eff/(?:(?P<precision>[a-z0-9]+)/)?latency_b(?P<batch>\d+)_(?P<q>p\d+)_us$")
_TABLE_BYTES = re.compile(r"^eff/(?:(?P<precision>[a-z0-9]+)/)?embedding_bytes/(?P<table>.+)$")
_TOTAL_BYTES = re.compile(r"^eff/(?:(?P<precision>[a-z0-9]+)/)?embedding_bytes$")


#: Fixed margins (fractions of the figure) instead of `tight_layout`, which measured every tick
#: label once more before drawing: half of a run's plotting time (~0.5 s of 1 s, tiny run).
_MARGINS = {"left": 0.13, "right": 0.97, "bottom": 0.13, "top": 0.9}


def _figure(width: float, height: float) -> Figure:
    """A Figure that renders straight to files: no pyplot state and no display needed.

    matplotlib is imported here, not with the module: the training process imports this module
    (through cvr.tracking.training_run) but draws nothing when the tracking process does, and
    matplotlib.figure is ~0.7 s of a tiny run's imports.
    """
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _save(fig: Figure, path: Path, **margins: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.subplots_adjust(**{**_MARGINS, **margins})
    fig.savefig(path, dpi=100)
    return path


def warm_up_drawing() -> None:
    """Draw the three plots once, of made-up figures, into a temporary folder: the first drawing
    of each kind in a process loads fonts, the renderer and the log-scale and bar code, which a
    run's own plots then need not wait for (the tracking process does this while it idles)."""
    curve = [(0, 0.7), (1, 0.72)]
    histories = {"val/auc": curve, "val/logloss": curve, "train/loss": curve}
    summary = {
        "eff/latency_b1_p50_us": 10.0,
        "eff/latency_b64_p99_us": 50.0,
        "eff/embedding_bytes/embedding": 1000.0,
        "eff/int8/embedding_bytes": 250.0,
    }
    with tempfile.TemporaryDirectory() as tmp:
        write_run_artifacts(histories, summary, tmp, "warm-up", oracle={"auc": 0.8})


def plot_learning_curve(
    histories: Mapping[str, History],
    path: str | Path,
    oracle: Mapping[str, float] | None = None,
    title: str = "",
) -> Path:
    """Two panels over epochs: val/auc; val/logloss and train/loss. oracle: {'auc', 'logloss'}."""
    oracle = oracle or {}
    fig = _figure(9, 3.6)
    ax_auc, ax_loss = fig.subplots(1, 2)
    for ax, names, ref, ylabel in (
        (ax_auc, ("val/auc",), oracle.get("auc"), "AUC"),
        (ax_loss, ("val/logloss", "train/loss"), oracle.get("logloss"), "logloss"),
    ):
        for name in names:
            points = sorted(histories.get(name, ()))
            if points:
                ax.plot([s for s, _ in points], [v for _, v in points], "o-", label=name)
        if ref is not None:
            ax.axhline(ref, color="k", linestyle="--", linewidth=1, label="oracle (true p)")
            ax.margins(y=0.08)  # keep the oracle line off the frame
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"{title}: learning curve" if title else "learning curve", fontsize=10)
    return _save(fig, Path(path), left=0.08, bottom=0.14, top=0.88, wspace=0.25)


def latency_table(summary: Mapping[str, float]) -> dict[str, dict[str, dict[int, float]]]:
    """{precision ('float' for the trained model): {quantile: {batch: microseconds}}}."""
    table: dict[str, dict[str, dict[int, float]]] = {}
    for key, value in summary.items():
        match = _LATENCY.match(key)
        if match:
            precision = match["precision"] or "float"
            table.setdefault(precision, {}).setdefault(match["q"], {})[int(match["batch"])] = value
    return table


def plot_latency(summary: Mapping[str, float], path: str | Path, title: str = "") -> Path | None:
    """Latency per call (us) against batch size, log-log; None when nothing was profiled."""
    table = latency_table(summary)
    if not table:
        return None
    fig = _figure(6, 4)
    ax = fig.subplots()
    styles = {"p50": "-", "p95": ":", "p99": "--"}
    for precision, quantiles in sorted(table.items()):
        for q, points in sorted(quantiles.items()):
            batches = sorted(points)
            ax.plot(
                batches,
                [points[b] for b in batches],
                styles.get(q, "-"),
                marker="o",
                label=f"{precision} {q}",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("batch size (rows per call)")
    ax.set_ylabel("latency per call (us)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{title}: inference latency" if title else "inference latency", fontsize=10)
    return _save(fig, Path(path))


def memory_table(summary: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """{precision: {table: bytes}}; a precision without per-table figures gets {'all': total}."""
    tables: dict[str, dict[str, float]] = {}
    totals: dict[str, float] = {}
    for key, value in summary.items():
        if match := _TABLE_BYTES.match(key):
            tables.setdefault(match["precision"] or "float", {})[match["table"]] = value
        elif match := _TOTAL_BYTES.match(key):
            totals[match["precision"] or "float"] = value
    for precision, total in totals.items():
        tables.setdefault(precision, {"all": total})
    return tables


def plot_memory(summary: Mapping[str, float], path: str | Path, title: str = "") -> Path | None:
    """Embedding bytes by precision, stacked by table; None when nothing was measured."""
    table = memory_table(summary)
    if not table:
        return None
    # The trained (float) model first, then its quantized copies.
    precisions = sorted(table, key=lambda p: (p != "float", p))
    names = sorted({t for parts in table.values() for t in parts})
    fig = _figure(6, 4)
    ax = fig.subplots()
    bottom = [0.0] * len(precisions)
    for name in names:
        heights = [table[p].get(name, 0.0) for p in precisions]
        ax.bar(precisions, heights, bottom=bottom, label=name)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    for x, total in enumerate(bottom):
        ax.annotate(f"{total:,.0f} B", (x, total), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("embedding bytes")
    ax.set_xlabel("precision")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, title="table")
    ax.set_title(f"{title}: embedding memory" if title else "embedding memory", fontsize=10)
    return _save(fig, Path(path))


def best_epoch(histories: Mapping[str, History], metric: str = "val/auc") -> int | None:
    points = histories.get(metric) or ()
    return max(points, key=lambda p: (p[1], -p[0]))[0] if points else None


def summary_markdown(
    title: str,
    tags: Mapping[str, str],
    histories: Mapping[str, History],
    summary: Mapping[str, float],
    oracle: Mapping[str, float] | None = None,
) -> str:
    """A short human summary of one run (Markdown)."""
    lines = [f"# {title}", ""]
    keys = ("model", "dataset", "task", "embedding", "k", "backend")
    lines += [", ".join(f"{k} `{tags[k]}`" for k in keys if k in tags), ""]
    epochs = len(histories.get("val/auc") or ())
    best = best_epoch(histories)
    if epochs:
        lines += [f"Epochs run: {epochs}; best val AUC at epoch {best} (epochs count from 0).", ""]
    lines += ["| metric | val (last epoch) | test |", "|---|---|---|"]
    for name in ("auc", "logloss", "ne", "calibration"):
        val = (histories.get(f"val/{name}") or [(None, None)])[-1][1]
        test = summary.get(f"test/{name}")
        if val is None and test is None:
            continue
        cells = [f"{v:.5f}" if v is not None else "" for v in (val, test)]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    if oracle:
        lines.append(
            f"| oracle auc (true p) | {oracle.get('auc', float('nan')):.5f} | "
            f"{summary.get('test/oracle_auc', float('nan')):.5f} |"
        )
    efficiency = [
        ("parameters", "eff/params", "{:,.0f}"),
        ("embedding bytes", "eff/embedding_bytes", "{:,.0f}"),
        ("latency b1 p50 / p99 (us)", ("eff/latency_b1_p50_us", "eff/latency_b1_p99_us"), None),
        ("throughput b4096 (rows/s)", "eff/throughput_b4096_per_s", "{:,.0f}"),
        ("training (samples/s)", "eff/train_samples_per_s", "{:,.0f}"),
    ]
    rows = []
    for label, key, fmt in efficiency:
        if isinstance(key, tuple):
            if all(k in summary for k in key):
                rows.append(f"| {label} | " + " / ".join(f"{summary[k]:.1f}" for k in key) + " |")
        elif key in summary:
            rows.append(f"| {label} | {fmt.format(summary[key])} |")
    if rows:
        lines += ["", "| efficiency | |", "|---|---|", *rows]
    lines += ["", f"Plots: `{PLOTS}/learning_curve.png`, `{PLOTS}/latency_vs_batch.png`, "]
    lines[-1] += f"`{PLOTS}/memory.png`."
    return "\n".join(lines) + "\n"


def write_plots(
    histories: Mapping[str, History],
    summary: Mapping[str, float],
    out_dir: str | Path,
    title: str = "",
    oracle: Mapping[str, float] | None = None,
) -> dict[str, Path]:
    """The plots under out_dir/plots (those with figures to draw); returns those written."""
    out_dir = Path(out_dir)
    files: dict[str, Path] = {
        "learning_curve": plot_learning_curve(
            histories, out_dir / PLOTS / "learning_curve.png", oracle, title
        )
    }
    latency = plot_latency(summary, out_dir / PLOTS / "latency_vs_batch.png", title)
    if latency is not None:
        files["latency_vs_batch"] = latency
    memory = plot_memory(summary, out_dir / PLOTS / "memory.png", title)
    if memory is not None:
        files["memory"] = memory
    return files


def write_run_artifacts(
    histories: Mapping[str, History],
    summary: Mapping[str, float],
    out_dir: str | Path,
    title: str = "",
    tags: Mapping[str, str] | None = None,
    oracle: Mapping[str, float] | None = None,
) -> dict[str, Path]:
    """All of the module's files under out_dir (plots/ and summary.md); returns those written."""
    files = write_plots(histories, summary, out_dir, title, oracle)
    files.update(write_summary(histories, summary, out_dir, title, tags, oracle))
    return files


def write_summary(
    histories: Mapping[str, History],
    summary: Mapping[str, float],
    out_dir: str | Path,
    title: str = "",
    tags: Mapping[str, str] | None = None,
    oracle: Mapping[str, float] | None = None,
) -> dict[str, Path]:
    """out_dir/summary.md (`summary_markdown`); returns {"summary": its path}."""
    path = Path(out_dir) / "summary.md"
    path.write_text(summary_markdown(title, tags or {}, histories, summary, oracle))
    return {"summary": path}


#: The per-epoch curves the learning curve and the summary read back from MLflow.
CURVES = ("val/auc", "val/logloss", "val/ne", "val/calibration", "train/loss")


def _histories(client, run_id: str) -> dict[str, list[tuple[int, float]]]:
    return {
        name: [(m.step, m.value) for m in client.get_metric_history(run_id, name)]
        for name in CURVES
    }


def _log_drawn(
    tracking_uri: str, run_id: str, draw: Callable[[Mapping[str, History], str], dict[str, Path]]
) -> dict[str, Path]:
    """Read the run's epoch curves from MLflow, `draw(histories, folder)` files into a temporary
    folder and log them to the run; returns their paths relative to that folder."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    histories = _histories(client, run_id)
    with tempfile.TemporaryDirectory() as tmp:
        files = draw(histories, tmp)
        client.log_artifacts(run_id, tmp)
    return {name: Path(path).relative_to(tmp) for name, path in files.items()}


def log_run_artifacts(
    tracking_uri: str,
    run_id: str,
    summary: Mapping[str, float],
    title: str = "",
    tags: Mapping[str, str] | None = None,
    oracle: Mapping[str, float] | None = None,
    plots: bool = True,
) -> dict[str, Path]:
    """Read the run's epoch curves from MLflow, draw the files, log them to the run.

    plots=False: summary.md only (the plots were logged by `log_plots` when fit ended).
    """
    write = write_run_artifacts if plots else write_summary
    return _log_drawn(
        tracking_uri, run_id, lambda h, tmp: write(h, summary, tmp, title, tags, oracle)
    )


def log_plots(
    tracking_uri: str,
    run_id: str,
    summary: Mapping[str, float],
    title: str = "",
    oracle: Mapping[str, float] | None = None,
) -> dict[str, Path]:
    """Only the plots (`write_plots`) of the run's curves and `summary`'s eff/ figures, logged
    under plots/: everything they need is known once fit ends, before the test."""
    return _log_drawn(
        tracking_uri, run_id, lambda h, tmp: write_plots(h, summary, tmp, title, oracle)
    )
