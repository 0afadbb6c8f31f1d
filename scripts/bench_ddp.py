"""Training past one process: 1 process vs N DDP processes (gloo), same rows, same global batch.

    .venv/bin/python scripts/bench_ddp.py [--processes 2] [--repeats 1] [--out bench_ddp.json]

Each arm is the real entry point (`train.py`, autograd backend, `trainer=ddp` for N > 1) on the
same synthetic store; arms alternate within each repeat and the table quotes medians with the
min..max spread. samples/s is the efficiency profile's training speed (epochs after the first,
validation excluded, all processes together). The parameter checksum is the one every rank agreed
on after the last epoch (`train/param_checksum`; a rank that differed stops the run). Load average
is recorded with every run: on a shared machine compare figures only within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cvr.ops.manifest import write_json_atomic

REPO = Path(__file__).resolve().parents[1]
FIELDS = ("val/auc", "val/logloss", "test/auc", "train/param_checksum", "eff/train_samples_per_s")


def run_arm(processes: int, root: Path, args: argparse.Namespace) -> dict:
    overrides = [
        f"paths.output_root={root}",
        f"data.rows_train={args.rows}",
        "data.rows_val=50000",
        "data.rows_test=20000",
        f"data.num_fields={args.fields}",
        "data.user_fields=4",
        "data.item_fields=2",
        "data.total_values=50000",
        "backend=autograd",
        f"optimizer.lr={args.lr}",
        f"datamodule.batch_size={args.batch}",
        f"trainer.max_epochs={args.epochs}",
        "trainer.enable_progress_bar=false",
        "callbacks.early_stopping=null",
        "export_bundle=false",
        "logger=none",
        "print_table=false",
        *(["trainer=ddp", f"trainer.devices={processes}"] if processes > 1 else []),
    ]
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "train.py", *overrides], cwd=REPO, capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"{processes}-process run failed:\n{done.stderr[-3000:]}")
    (metrics_path,) = root.glob("runs/*/metrics.json")
    metrics = json.loads(metrics_path.read_text())
    return {
        "processes": processes,
        **{k: metrics.get(k) for k in FIELDS},
        "wall_s": time.perf_counter() - started,
        "loadavg_1m": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--fields", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4096, help="global batch, both arms")
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    runs: dict[int, list[dict]] = {1: [], args.processes: []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for n in runs:
                print(f"repeat {rep + 1}/{args.repeats}: {n} process(es)", file=sys.stderr)
                runs[n].append(run_arm(n, Path(tmp) / f"{n}-{rep}", args))
    print(
        f"\nFFM, autograd, {args.rows:,} train rows, {args.fields} fields, global batch "
        f"{args.batch}, {args.epochs} epochs, {args.repeats} repeat(s) (median; min..max)\n"
        f"load avg (1 min) after each run: "
        + " ".join(f"{r['loadavg_1m']:.1f}" for n in runs for r in runs[n])
    )
    print(f"{'processes':>9}{'val AUC':>10}{'val LL':>9}{'checksum':>18}{'samples/s':>24}")
    table = {}
    for n, rs in runs.items():
        speed = [r["eff/train_samples_per_s"] for r in rs]
        row = {k: float(np.median([r[k] for r in rs])) for k in FIELDS}
        table[n] = {**row, "samples_per_s_min": min(speed), "samples_per_s_max": max(speed)}
        spread = f"{np.median(speed):,.0f} ({min(speed):,.0f}..{max(speed):,.0f})"
        print(
            f"{n:>9}{row['val/auc']:>10.5f}{row['val/logloss']:>9.5f}"
            f"{row['train/param_checksum']:>18.6f}{spread:>24}"
        )
    report = {"settings": vars(args), "table": table, "runs": runs}
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, report)
    return report


if __name__ == "__main__":
    main()
