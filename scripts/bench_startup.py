"""Start-up cost of a tiny training run: import-time breakdown and end-to-end wall time.

    .venv/bin/python scripts/bench_startup.py [--before /tmp/e11-before] [--repeats 3]
        [--out outputs/bench/startup.json]

Arms: this checkout, and optionally another checkout of the project (`--before`, e.g. a
`git worktree add /tmp/e11-before <commit>`), run with that tree's `src` on PYTHONPATH and its own
`train.py` and `conf/`. Per arm and repeat, alternating between arms:

- `python -X importtime -c "import cvr.pipelines.train"`: total, and the self time summed per
  top-level package (torch, lightning, mlflow, ...), so the table says where import time goes;
- `python -c "import train"` (the entry point's own imports, with its garbage-collector
  settings): wall and CPU seconds;
- `python train.py` on 5,000 synthetic rows (1,000 val / 1,000 test), with the default MLflow
  logger and with `logger=none`: wall seconds end to end, process start to exit, and CPU;
- with `--phases`, one more default run under `scripts/startup_phases.py`: wall seconds per
  phase (imports, Hydra, MLflow start, numba kernels, fit with its checkpoints and profile,
  test, bundle export, the lr search's kernel-only candidates, waits on the tracking process,
  interpreter exit), and the tracking process's seconds per MLflow call, which run beside those
  phases (`tracking process: ...`).

After the arms, each repeat also times the floor no checkout can go below while it trains with
Lightning: `import torch, lightning` in a bare interpreter with the collector off, and the same
plus `mlflow` and its SQLAlchemy store (what a run that logs to SQLite must import).

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


FLOORS = {
    "floor: import torch, lightning (GC off)": "import torch, lightning",
    "floor: + mlflow + its SQLite store": (
        "import torch, lightning, mlflow, mlflow.store.tracking.sqlalchemy_store"
    ),
}


#: Phases of scripts/startup_phases.py in run order (indented: part of the row above).
PHASE_ORDER = (
    "imports + Hydra start",
    "tracking process start (spawn)",
    "Hydra composition",
    "MLflow run start (waits for the tracking process)",
    "MLflow run start (import, store, params)",
    "  mlflow import + store open",
    "  params + config.yaml",
    "MLflow dataset + tags",
    "MLflow dataset + tags record",
    "Trainer construction",
    "backend + numba kernels",
    "fit",
    "  checkpoints",
    "  epoch curves (MLflow)",
    "  efficiency profile",
    "test",
    "bundle export",
    "lr search: kernel-only candidates",
    "fit_and_test",
    "finish_run (MLflow)",
    "  log model (pyfunc)",
    "  plots + summary.md",
    "waits on the tracking process (all asks)",
    "MLflow calls in this process",
    "interpreter exit",
    "total",
    # Beside the rows above, in the tracking process (cvr.tracking.process), seconds per call:
    "tracking process: warm-up (imports, first figure)",
    "tracking process: start_run",
    "tracking process: log_config",
    "tracking process: log_training_data",
    "tracking process: set_tags",
    "tracking process: log_metric_points",
    "tracking process: log_plots",
    "tracking process: finish_run",
    "tracking process: end_run",
)


def timed_process(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of a child process; raises naming the command if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{cmd[1:3]} failed in {cwd} (rc {proc.returncode}): {tail}")
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def floor(code: str) -> tuple[float, float]:
    """(wall, CPU) of importing `code`'s packages in a bare interpreter, collector off."""
    return timed_process([sys.executable, "-c", f"import gc; gc.disable(); {code}"], REPO,
                         {k: v for k, v in os.environ.items() if k != "PYTHONPATH"})  # fmt: skip


def phases_run(root: Path, output_root: Path) -> dict[str, float]:
    """Wall seconds per phase of one default tiny run (scripts/startup_phases.py), plus the
    interpreter's exit: from the last Python code to the end of the process."""
    out = output_root.parent / f"phases-{output_root.name}.json"
    script = REPO / "scripts" / "startup_phases.py"
    cmd = [
        sys.executable,
        str(script),
        str(out),
        "train.py",
        *TINY,
        f"paths.output_root={output_root}",
    ]
    wall, _ = timed_process(cmd, root, env_for(root))
    ended = time.time()
    report = json.loads(out.read_text())
    return {**report["phases"], "interpreter exit": ended - report["ended"], "total": wall}


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
    parser.add_argument("--phases", action="store_true", help="also time one run per phase")
    args = parser.parse_args(argv)
    arms = {"after": REPO}
    if args.before:
        arms = {"before": Path(args.before).resolve(), **arms}
    loads = [os.getloadavg()[0]]
    results: dict[str, dict[str, Any]] = {
        arm: {"imports": [], "mlflow": [], "none": [], "mlflow_cpu": [], "none_cpu": [],
              "import_train": [], "import_train_cpu": [], "phases": []}
        for arm in arms
    }  # fmt: skip
    floors: dict[str, list[tuple[float, float]]] = {name: [] for name in FLOORS}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        for arm, root in arms.items():
            out = Path(tmp) / arm
            results[arm]["first_run_mlflow_s"] = tiny_run(root, out, "mlflow")[0]
            results[arm]["first_run_none_s"] = tiny_run(root, out, "none")[0]
        for rep in range(args.repeats):
            for arm, root in arms.items():
                print(f"repeat {rep + 1}/{args.repeats}: {arm}", file=sys.stderr, flush=True)
                results[arm]["imports"].append(import_breakdown(root))
                wall, cpu = timed_process([sys.executable, "-c", "import train"], root,
                                          env_for(root))  # fmt: skip
                results[arm]["import_train"].append(wall)
                results[arm]["import_train_cpu"].append(cpu)
                for logger in ("mlflow", "none"):
                    wall, cpu = tiny_run(root, Path(tmp) / arm, logger)
                    results[arm][logger].append(wall)
                    results[arm][f"{logger}_cpu"].append(cpu)
                if args.phases:
                    results[arm]["phases"].append(phases_run(root, Path(tmp) / arm))
                loads.append(os.getloadavg()[0])
            for name, code in FLOORS.items():
                floors[name].append(floor(code))
    report = {"benchmark": "startup", "arms": {a: str(r) for a, r in arms.items()},
              "results": results, "floors": floors, "loadavg_1m": loads,
              "cpus": os.cpu_count()}  # fmt: skip
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
    row("import train (entry point)", {a: res[a]["import_train"] for a in arms})
    row("  CPU s", {a: res[a]["import_train_cpu"] for a in arms})
    row("import cvr.pipelines.train", {a: [i["total"] for i in res[a]["imports"]] for a in arms})
    groups = sorted(
        {g for a in arms for i in res[a]["imports"] for g in i if g != "total"},
        key=lambda g: -np.median([i.get(g, 0.0) for i in res[arms[-1]]["imports"]]),
    )
    for g in groups:
        row(f"  self time in {g}", {a: [i.get(g, 0.0) for i in res[a]["imports"]] for a in arms})
    if all(res[a]["phases"] for a in arms):
        print("\nphases of one default run (wall s; indented rows are part of the row above)")
        names = set(k for a in arms for p in res[a]["phases"] for k in p)
        order = [n for n in PHASE_ORDER if n in names] + sorted(names - set(PHASE_ORDER))
        for name in order:
            row(f"  {name}"[:34], {a: [p.get(name, 0.0) for p in res[a]["phases"]] for a in arms})
    floors = report.get("floors") or {}
    if floors and all(floors.values()):
        print("\nfloor (same interpreter, no checkout)      wall median (min..max)   CPU median")
        for name, values in floors.items():
            walls, cpus = [w for w, _ in values], [c for _, c in values]
            s = summary(walls)
            print(f"{name:<42}{s['median']:>6.2f} ({s['min']:.1f}..{s['max']:.1f})"
                  f"{np.median(cpus):>14.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
