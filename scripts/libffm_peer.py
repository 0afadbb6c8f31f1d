"""libffm, the reference C++ FFM, as a benchmark peer: build it outside the repository, write rows
in its text format, train it, and read its per-epoch figures.

    exe_dir, why = build()                         # None and a one-line reason if it cannot
    write_rows(path, ids, labels, offsets)         # field-local ids (n, F) -> libffm text
    run = train(exe_dir, tr, va, epochs=3, threads=1, workdir=tmp)
    probs = predict(exe_dir, va, run["model"], workdir=tmp)

The source is `../shared/peers/libffm` (never copied into the repository, never imported by the
project); it is built with its own Makefile under `outputs/peers/libffm`. `ffm-train` prints one
line per epoch: train logloss, validation logloss and the *cumulative* training seconds (validation
excluded) to 0.1 s, so per-epoch seconds are differences of that column.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "peers" / "libffm"
BUILD = ROOT / "outputs" / "peers" / "libffm"
SOURCES = (
    "Makefile",
    "ffm.cpp",
    "ffm.h",
    "ffm-train.cpp",
    "ffm-predict.cpp",
    "timer.cpp",
    "timer.h",
)


def build(source: Path = SOURCE, dest: Path = BUILD) -> tuple[Path | None, str]:
    """(folder holding ffm-train and ffm-predict, "") or (None, why not), building if needed.

    Rebuilds when a binary is missing or older than a source file. The copy is built in a
    temporary sibling folder and renamed into place, so a failed build leaves nothing half-made.
    """
    if not (source / "ffm-train.cpp").is_file():
        return None, f"libffm source not found at {source} (../shared/peers/libffm)"
    if shutil.which("g++") is None or shutil.which("make") is None:
        return None, "g++ or make not on PATH: cannot build libffm"
    newest = max((source / name).stat().st_mtime for name in SOURCES if (source / name).exists())
    bins = [dest / "ffm-train", dest / "ffm-predict"]
    if all(b.is_file() and b.stat().st_mtime >= newest for b in bins):
        return dest, ""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".libffm-", dir=dest.parent))
    try:
        for name in SOURCES:
            if (source / name).exists():
                shutil.copy2(source / name, tmp / name)
        proc = subprocess.run(["make", "-s", "-C", str(tmp)], capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
            return None, f"libffm build failed (make rc {proc.returncode}): {tail}"
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return dest, ""


def write_rows(path: Path, ids: np.ndarray, labels: np.ndarray, offsets: np.ndarray) -> None:
    """Write `label field:feature:1 ...` lines: field-local ids (n, F) become global features
    offsets[f] + id, labels > 0.5 become 1 (libffm reads > 0 as positive). Atomic (tmp + rename)."""
    ids = np.asarray(ids, dtype=np.int64)
    n, fields = ids.shape
    table = np.empty((n, fields + 1), dtype=np.int64)
    table[:, 0] = np.asarray(labels).reshape(-1) > 0.5
    table[:, 1:] = ids + np.asarray(offsets, dtype=np.int64)[None, :]
    fmt = "%d" + "".join(f" {f}:%d:1" for f in range(fields))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    np.savetxt(tmp, table, fmt=fmt)
    os.replace(tmp, path)


def _run(cmd: list[str], cwd: Path) -> tuple[str, float, float]:
    """(stdout, wall seconds, peak RSS MiB of the child) of a command that must succeed."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read().decode() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed (rc {proc.returncode}): {out.strip()[-300:]}")
    return out, wall, usage.ru_maxrss / 1024


def parse_epochs(out: str, has_val: bool) -> list[dict[str, float]]:
    """Per-epoch rows of ffm-train's table: iter, tr_logloss, va_logloss (if -p), tr_time.

    With --auto-stop the epoch that stopped it has no tr_time (its line ends at va_logloss);
    that row is kept with tr_time None.
    """
    rows = []
    for line in out.splitlines():
        parts = line.split()
        if not parts or not parts[0].isdigit() or len(parts) not in (2, 3, 4):
            continue
        vals = [float(p) for p in parts[1:]]
        row: dict[str, Any] = {"iter": int(parts[0]), "tr_logloss": vals[0]}
        if has_val:
            row["va_logloss"] = vals[1] if len(vals) > 1 else None
            row["tr_time"] = vals[2] if len(vals) > 2 else None
        else:
            row["tr_time"] = vals[1] if len(vals) > 1 else None
        rows.append(row)
    return rows


def train(
    exe_dir: Path,
    train_path: Path,
    val_path: Path | None,
    *,
    epochs: int,
    threads: int = 1,
    k: int = 4,
    eta: float = 0.2,
    lam: float = 2e-5,
    norm: bool = True,
    auto_stop: bool = False,
    workdir: Path,
) -> dict[str, Any]:
    """Train ffm-train (libffm defaults unless given) and return its figures.

    Returns {"epochs": [per-epoch rows], "epoch_seconds": [...], "model": path, "wall_s",
    "peak_rss_mb"}. The text -> binary conversion (cached by libffm next to `workdir`) runs
    before its timer starts, so it is not in the epoch seconds.
    """
    model = Path(workdir) / f"libffm-{threads}t.model"
    cmd = [str(exe_dir / "ffm-train"), "-k", str(k), "-t", str(epochs), "-s", str(threads)]
    cmd += ["-r", repr(eta), "-l", repr(lam)]
    if not norm:
        cmd.append("--no-norm")
    if val_path is not None:
        cmd += ["-p", str(val_path)]
        if auto_stop:
            cmd.append("--auto-stop")
    cmd += [str(train_path), str(model)]
    out, wall, rss = _run(cmd, Path(workdir))
    rows = parse_epochs(out, val_path is not None)
    if not rows:
        raise RuntimeError(f"ffm-train printed no epoch table: {out.strip()[-300:]}")
    cumulative = [r["tr_time"] for r in rows if r["tr_time"] is not None]
    seconds = [b - a for a, b in zip([0.0, *cumulative[:-1]], cumulative, strict=True)]
    return {"epochs": rows, "epoch_seconds": seconds, "model": model, "wall_s": wall,
            "peak_rss_mb": rss, "auto_stopped": "Auto-stop" in out}  # fmt: skip


def predict(exe_dir: Path, data_path: Path, model: Path, *, workdir: Path) -> np.ndarray:
    """Probabilities ffm-predict gives the rows of `data_path` (float64, file order)."""
    out_path = Path(workdir) / f"{Path(data_path).name}.pred"
    _run([str(exe_dir / "ffm-predict"), str(data_path), str(model), str(out_path)], Path(workdir))
    return np.loadtxt(out_path, dtype=np.float64, ndmin=1)
