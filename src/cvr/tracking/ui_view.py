"""A saved view of the MLflow UI for the accuracy/cost trade-off, stored on the experiment.

The MLflow 3 UI opens `#/experiments/<id>?viewStateShareKey=<key>` from the experiment tag
`mlflow.sharedViewState.<key>` (a JSON of its runs-page state; read from mlflow/server/js). The
view written here shows, for every run: the dataset, the tags that say what ran, test quality
and the efficiency figures, sorted by test AUC; its charts put the learning curves (val AUC and
logloss over epochs) first, then AUC against embedding bytes and against p99 latency, then a
parallel-coordinates plot of the knobs against test AUC.
"""

from __future__ import annotations

import json
from typing import Any

SHARED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."
VIEW_KEY = "tradeoff"

#: Columns of the runs table, in order (tags, then test quality, then efficiency).
TAG_COLUMNS = ("model", "dataset", "k", "embedding", "backend")
METRIC_COLUMNS = (
    "test/auc",
    "test/logloss",
    "test/auc_gap",
    "val/auc_best",
    "eff/embedding_bytes",
    "eff/latency_b1_p99_us",
    "eff/throughput_b4096_per_s",
    "eff/train_samples_per_s",
)
CURVES = ("val/auc", "val/logloss", "train/loss")
TRADEOFFS = (("eff/embedding_bytes", "test/auc"), ("eff/latency_b1_p99_us", "test/auc"))
KNOBS = ("embedding.dim", "optimizer.lr", "trainer.max_epochs")


def _column(kind: str, name: str) -> str:
    """The UI's column id: kind.`name` (kind: attributes, tags, params, metrics)."""
    return f"{kind}.`{name}`"


def _card(kind: str, uuid: str, section: str, **fields: Any) -> dict[str, Any]:
    """A chart card as the UI serialises it (common fields + the type's own)."""
    return {
        "uuid": uuid,
        "type": kind,
        "runsCountToCompare": 100,
        "metricSectionId": section,
        "deleted": False,
        "isGenerated": False,
        **fields,
    }


def _line(uuid: str, section: str, metric: str) -> dict[str, Any]:
    return _card(
        "LINE",
        uuid,
        section,
        metricKey=metric,
        displayName=f"{metric} per epoch",
        lineSmoothness=0,
        xAxisScaleType="linear",
        scaleType="linear",
        range={},
        xAxisKey="step",
        selectedXAxisMetricKey="",
        yAxisKey="metric",
        yAxisExpressions=[],
        ignoreOutliers=False,
        useGlobalXaxisKey=False,
        useGlobalLineSmoothing=True,
    )


def tradeoff_view() -> dict[str, Any]:
    """The runs-page state of the trade-off view (columns, order, chart sections and cards)."""
    sections = [
        ("curves", "Learning curves (x = epoch)"),
        ("tradeoff", "Trade-off"),
    ]
    cards = [_line(f"curve-{i}", "curves", m) for i, m in enumerate(CURVES)]
    for i, (cost, quality) in enumerate(TRADEOFFS):
        cards.append(
            _card(
                "SCATTER",
                f"scatter-{i}",
                "tradeoff",
                displayName=f"{quality} vs {cost}",
                xaxis={"key": cost, "type": "METRIC"},
                yaxis={"key": quality, "type": "METRIC"},
            )
        )
    cards.append(
        _card(
            "PARALLEL",
            "knobs",
            "tradeoff",
            displayName="knobs against test AUC",
            selectedParams=list(KNOBS),
            selectedMetrics=["test/auc", "eff/latency_b1_p99_us"],
            showAllRuns=True,
        )
    )
    tag_columns = [_column("tags", t) for t in TAG_COLUMNS]
    metric_columns = [_column("metrics", m) for m in METRIC_COLUMNS]
    return {
        "searchFilter": "",
        "orderByKey": _column("metrics", "test/auc"),
        "orderByAsc": False,
        "selectedColumns": [_column("attributes", "Dataset"), *tag_columns, *metric_columns],
        # Widths apply to the columns named in columnOrder; wide enough for the whole metric
        # name (eff/latency_b1_p50_us and ..._p99_us would both show as "eff/latency_b...").
        "columnOrder": [_column("attributes", "Dataset"), *metric_columns, *tag_columns],
        "columnWidths": {
            _column("attributes", "Dataset"): 230,
            **{c: 90 for c in tag_columns},
            **{_column("metrics", m): 7 * len(m) + 30 for m in METRIC_COLUMNS},
        },
        "runsHiddenMode": "SHOW_ALL",
        "compareRunCharts": cards,
        "compareRunSections": [
            {
                "uuid": uuid,
                "name": name,
                "display": True,
                "isReordered": True,
                "deleted": False,
                "isGenerated": False,
            }
            for uuid, name in sections
        ],
        "isAccordionReordered": True,
        "hideEmptyCharts": True,
    }


def view_tag() -> tuple[str, str]:
    """(experiment tag key, JSON value) that stores the trade-off view."""
    return SHARED_VIEW_TAG_PREFIX + VIEW_KEY, json.dumps(tradeoff_view())


def view_url(ui_root: str, experiment_id: str) -> str:
    """`<ui_root>/#/experiments/<id>?viewStateShareKey=tradeoff`."""
    return f"{ui_root.rstrip('/')}/#/experiments/{experiment_id}?viewStateShareKey={VIEW_KEY}"
