"""Start-up cost of a tiny training run: import-time breakdown and end-to-end wall time.

    .venv/bin/python scripts/bench_startup.py [--before /tmp/e11-before] [--repeats 3]
        [--out outputs/bench/startup.json]

Arms: this checkout, and optionally another checkout of the project (`--before`, e.g. a
`git worktree add /tmp/e11-before <commit>`), run with that tree's `src` on PYTHONPATH and its own
`train.py` and `conf/`. Per arm and repeat, alternating between arms:

- `python -X importtime -c "import cvr.pipelines.train"`: total, and the self time summed per
  top-level package (torch, lightning, mlflow, ...), so the table says where import time goes;
- `python train.py` on 5,000 synthetic rows (1,000 val / 1,000 test), with the default MLflow
  logger and with `logger=none`: wall seconds end to end, process start to exit.

Each arm first makes one untimed run (it builds the store, creates the MLflow database and loads
or compiles the numba cache); the timed runs reuse that output root, as a user's second run does.
The first run's time is reported too. The table quotes medians and min..max, and `uptime` load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "data=synthetic",
    "data.rows_train=5000",
    "data.rows_val=1000",
    "data.rows_test=1000",
    "trainer.enable_progress_bar=false",
]
GROUPS = ("torch", "lightning", "torchmetrics", "scipy", "mlflow", "sklearn", "pandas", "hydra",
          "omegaconf", "numba", "llvmlite", "numpy", "cvr")  # fmt: skip


def env_for(root: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "CVR_ROOT": str(root)}
    env.pop("PYTHONWARNINGS", None)
    return env


def import_breakdown(root: Path) -> dict[str, float]:
    """Seconds: total import of cvr.pipelines.train and self time per top-level package."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import cvr.pipelines.train"],
        env=env_for(root), cwd=root, capture_output=True, text=True, check=True,
    )  # fmt: skip
    groups: dict[str, float] = defaultdict(float)
    total = 0.0
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        self_us, cumulative, name = line[len("import time:") :].split("|")
        if not self_us.strip().isdigit():
            continue
        top = name.strip().split(".")[0]
        groups[top if top in GROUPS else "other"] += int(self_us) / 1e6
        if name.strip() == "cvr.pipelines.train":
            total = int(cumulative) / 1e6
    return {"total": total, **dict(groups)}


def tiny_run(root: Path, output_root: Path, logger: str) -> tuple[float, float]:
    """(wall, CPU) seconds of `python train.py` on the tiny data, process start to exit. CPU
    (user + system of the child) is the figure to compare on a loaded machine: wall time there
    mostly measures the other processes."""
    cmd = [sys.executable, "train.py", *TINY, f"paths.output_root={output_root}"]
    if logger == "none":
        cmd.append("logger=none")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env_for(root), cwd=root, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"train.py failed in {root} (rc {proc.returncode}): {tail}")
    return seconds, cpu


def summary(values: list[float]) -> dict[str, float]:
    return {"median": float(np.median(values)), "min": min(values), "max": max(values)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", help="another checkout of the project to compare against")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="write the figures here as JSON")
    args = parser.parse_args(argv)
    arms = {"after": REPO}
    if args.before:
        arms = {"before": Path(args.before).resolve(), **arms}
    loads = [os.getloadavg()[0]]
    results: dict[str, dict[str, Any]] = {
        arm: {"imports": [], "mlflow": [], "none": [], "mlflow_cpu": [], "none_cpu": []}
        for arm in arms
    }
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        for arm, root in arms.items():
            out = Path(tmp) / arm
            results[arm]["first_run_mlflow_s"] = tiny_run(root, out, "mlflow")[0]
            results[arm]["first_run_none_s"] = tiny_run(root, out, "none")[0]
        for rep in range(args.repeats):
            for arm, root in arms.items():
                print(f"repeat {rep + 1}/{args.repeats}: {arm}", file=sys.stderr, flush=True)
                results[arm]["imports"].append(import_breakdown(root))
                for logger in ("mlflow", "none"):
                    wall, cpu = tiny_run(root, Path(tmp) / arm, logger)
                    results[arm][logger].append(wall)
                    results[arm][f"{logger}_cpu"].append(cpu)
                loads.append(os.getloadavg()[0])
    report = {"benchmark": "startup", "arms": {a: str(r) for a, r in arms.items()},
              "results": results, "loadavg_1m": loads, "cpus": os.cpu_count()}  # fmt: skip
    print_report(report)
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = path.with_name(f".{path.name}.tmp")
        tmp_path.write_text(json.dumps(report, indent=2))
        os.replace(tmp_path, path)
    return report


def print_report(report: dict[str, Any]) -> None:
    res = report["results"]
    arms = list(res)
    print(
        "\nStart-up of a tiny run (5,000 synthetic rows), median of "
        f"{len(res[arms[0]]['none'])} (min..max); load avg (1 min) at start and after each "
        "repeat: " + " ".join(f"{x:.1f}" for x in report["loadavg_1m"]) + "\n"
    )
    print(f"{'seconds':<34}" + "".join(f"{a:>22}" for a in arms))

    def row(label: str, values: dict[str, list[float]]) -> None:
        cells = ""
        for a in arms:
            s = summary(values[a])
            cells += f"{s['median']:>8.2f} ({s['min']:.1f}..{s['max']:.1f})".rjust(22)
        print(f"{label:<34}{cells}")

    row("train.py, logger=mlflow (default)", {a: res[a]["mlflow"] for a in arms})
    row("train.py, logger=none", {a: res[a]["none"] for a in arms})
    row("  CPU s, logger=mlflow", {a: res[a]["mlflow_cpu"] for a in arms})
    row("  CPU s, logger=none", {a: res[a]["none_cpu"] for a in arms})
    print(
        f"{'first run (store, MLflow db, numba)':<34}"
        + "".join(f"{res[a]['first_run_mlflow_s']:>22.2f}" for a in arms)
    )
    row("import cvr.pipelines.train", {a: [i["total"] for i in res[a]["imports"]] for a in arms})
    groups = sorted(
        {g for a in arms for i in res[a]["imports"] for g in i if g != "total"},
        key=lambda g: -np.median([i.get(g, 0.0) for i in res[arms[-1]]["imports"]]),
    )
    for g in groups:
        row(f"  self time in {g}", {a: [i.get(g, 0.0) for i in res[a]["imports"]] for a in arms})


if __name__ == "__main__":
    main()
