"""Learning curve on synthetic FFM-generated data: test AUC, logloss and gap to the oracle.

    python scripts/learning_curve.py                         # LR, FM, FFM at 200k, 1M, 2M rows
    python scripts/learning_curve.py --rows 200000 --models ffm -- trainer.max_epochs=2

Each cell is one real `train.py` run (own output folder, one MLflow run in the default store);
val/test rows and the ground-truth model are the same for every size, so the columns compare.
Prints a table and writes the same figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Per-model overrides: the fused CPU kernels where they exist.
MODEL_OVERRIDES = {
    "lr": ["model=lr"],
    "fm": ["model=fm", "backend=fused"],
    "ffm": ["model=ffm", "backend=fused"],
    "fwfm": ["model=fwfm"],
}


def run_cell(model: str, rows: int, output_root: Path, extra: list[str]) -> dict:
    stamp = f"{model}-{rows}-{time.time_ns()}"
    run_dir = output_root / "learning_curve" / stamp
    cmd = [
        sys.executable,
        "train.py",
        *MODEL_OVERRIDES[model],
        f"data.rows_train={rows}",
        f"paths.output_root={output_root}",
        f"hydra.run.dir={run_dir}",
        "trainer.enable_progress_bar=false",
        "print_table=false",
        *extra,
    ]
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-4000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["wall_seconds"] = time.perf_counter() - started
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lr,fm,ffm")
    parser.add_argument("--rows", default="200000,1000000,2000000")
    parser.add_argument("--output-root", default=str(REPO / "outputs"))
    parser.add_argument("--json", default=None, help="where to write the JSON (default: output)")
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides (after --)")
    args = parser.parse_args(argv)
    models = args.models.split(",")
    sizes = [int(r) for r in args.rows.split(",")]
    output_root = Path(args.output_root).resolve()

    results = []
    header = f"{'model':<6}{'rows':>10}{'test AUC':>10}{'oracle':>9}{'gap':>8}{'logloss':>9}"
    header += f"{'oracle ll':>11}{'steps':>8}{'wall s':>8}"
    print(header)
    print("-" * len(header))
    for rows in sizes:
        for model in models:
            m = run_cell(model, rows, output_root, args.overrides)
            row = {
                "model": model,
                "rows_train": rows,
                "test_auc": m["test/auc"],
                "oracle_auc": m["test/oracle_auc"],
                "auc_gap": m["test/auc_gap"],
                "test_logloss": m["test/logloss"],
                "oracle_logloss": m["test/oracle_logloss"],
                "global_step": m["train/global_step"],
                "wall_seconds": m["wall_seconds"],
            }
            results.append(row)
            print(
                f"{model:<6}{rows:>10,}{row['test_auc']:>10.4f}{row['oracle_auc']:>9.4f}"
                f"{row['auc_gap']:>8.4f}{row['test_logloss']:>9.4f}{row['oracle_logloss']:>11.4f}"
                f"{row['global_step']:>8.0f}{row['wall_seconds']:>8.0f}",
                flush=True,
            )
    out = Path(args.json or output_root / "learning_curve.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
