"""Trade-off report over MLflow runs: `python scripts/report.py [--sweep latest]`.

Selects runs (the latest sweep by default), computes the Pareto fronts of test AUC against
embedding bytes and against p99 latency, writes PNG plots and a Markdown table, and logs them to
the sweep's parent run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cvr.tracking.report import (
    REPORT_COLUMNS,
    load_runs,
    log_report,
    markdown_table,
    parent_run_of,
    write_report,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tracking-uri",
        default=f"sqlite:///{Path('outputs').resolve()}/mlflow.db",
        help="MLflow tracking URI (SQLite file or http server)",
    )
    parser.add_argument("--experiment", default="cvr")
    parser.add_argument(
        "--sweep",
        default="latest",
        help="sweep id, 'latest', or 'all' for every run of the experiment",
    )
    parser.add_argument("--out", default="outputs/report", help="folder for report.md and PNGs")
    parser.add_argument("--no-log", action="store_true", help="do not log to the parent run")
    args = parser.parse_args(argv)

    sweep = None if args.sweep == "all" else args.sweep
    try:
        df = load_runs(args.tracking_uri, args.experiment, sweep)
    except LookupError as err:
        print(f"report: {err}", file=sys.stderr)
        return 2
    if df.empty:
        print("report: no finished runs matched", file=sys.stderr)
        return 2
    files = write_report(df, args.out)
    print(markdown_table(df.sort_values(["model", "backend", "embedding", "dim"]), REPORT_COLUMNS))
    print(f"\nwrote {', '.join(str(p) for p in files.values())}")
    sweep_id = df["sweep_id"].dropna().iloc[0] if df["sweep_id"].notna().any() else None
    if sweep_id and not args.no_log:
        parent = parent_run_of(args.tracking_uri, args.experiment, sweep_id)
        if parent:
            log_report(args.tracking_uri, parent, files)
            print(f"logged to parent run {parent} of sweep {sweep_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
