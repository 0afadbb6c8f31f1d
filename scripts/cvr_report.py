"""The CVR study's report: `python scripts/cvr_report.py [ROOT ...] [--out DIR]`.

Reads every funnel run folder (metrics.json + .hydra/config.yaml) under the roots (default: the
sweeps under outputs/multirun and the single runs under outputs/cvr_study), and writes a table
of naive CVR vs CTCVR vs ESMM per bias setting, data size and tower (mean and spread over
seeds), the ESMM-vs-naive verdicts, and a plot of cvr_auc_all against the oracle.
"""

from __future__ import annotations

import argparse
import os
import sys

from cvr.tracking.funnel_report import (
    acceptance,
    bias_effects,
    load_study_runs,
    markdown_table,
    summarize,
    write_report,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="*", default=["outputs/multirun", "outputs/cvr_study"])
    parser.add_argument("--out", default="outputs/report/cvr_study")
    args = parser.parse_args(argv)
    runs = load_study_runs(root for root in args.roots if os.path.isdir(root))
    if runs.empty:
        print(f"no funnel runs (task=...) under {args.roots}", file=sys.stderr)
        return 1
    table = summarize(runs)
    print(markdown_table(table))
    print()
    for line in acceptance(table):
        print(line)
    for line in bias_effects(table):
        print(line)
    paths = write_report(runs, args.out)
    print(f"\n{len(runs)} runs; wrote {', '.join(str(p) for p in paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
