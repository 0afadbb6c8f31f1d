"""Store builds vs pyarrow's bare streaming CSV parse, side by side, on Criteo-format TSV.

    .venv/bin/python scripts/bench_data.py [--sizes 500000 2000000] [--large] [--rounds 1]
                                           [--out outputs/bench/data.json]

For each size (0.5M and 2M rows; `--large` adds 8M, about 2.3 GB of text, left out of
`make bench` for its length) and each encoding (plain and gzip), a Criteo-format TSV is
generated once (label, I1..I13, C1..C26, Zipf-distributed values, about 10% of lines with
their trailing empty columns stripped as in the real train.txt) and cached under
`outputs/bench/data/`. Then, alternating in `--rounds` rounds, each in a fresh process:

- `bare`: pyarrow.csv.open_csv streaming over the same file (gzip through pyarrow's compressed
  input stream), C* as dictionary columns, I* float64, the short lines passed to its
  invalid_row_handler (skip): one pass of parsing only, the reference line.
- `build`: `cvr.data.build.build_file_store` with conf/data/criteo.yaml's schema and preprocess
  config: fit the vocabulary on train, encode all splits, write the store (one pass over the
  file), into an empty cache.

Figures: rows/s (median over rounds, spread min..max), rows per CPU-second (user + sys of all
threads: less sensitive to a loaded machine than wall time; the table shows CPU-us per row), peak
RSS of the process (VmHWM), the ratios build/bare by wall time and by CPU time (our passes over
the file: 1, so these are also the per-pass ratios), and the 1-minute load average when each run
started (the machine is shared). Prints a table and writes the same as JSON, with the commit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CRITEO_COLUMNS = ["label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))]


# --- the input ------------------------------------------------------------------------------------


def write_criteo_tsv(path: Path, rows: int, seed: int = 0, chunk: int = 250_000) -> None:
    """A Criteo-format TSV of `rows` lines (see the module docstring); gzip when `.gz`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rng = np.random.default_rng(seed)
    cards = np.exp(np.linspace(np.log(10), np.log(200_000), 26)).astype(np.int64)
    rng.shuffle(cards)
    tmp = path.with_name(path.name + ".tmp")
    compression = "gzip" if path.suffix == ".gz" else None
    with pa.output_stream(str(tmp), compression=compression) as out:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            cols = [pa.array((rng.random(n) < 0.25).astype(np.int8)).cast(pa.string())]
            for _ in range(13):
                v = pa.array(np.floor(rng.lognormal(1.0, 2.0, n)).astype(np.int64)).cast(
                    pa.string()
                )
                cols.append(pc.if_else(pa.array(rng.random(n) < 0.2), "", v))
            for c in cards:
                rank = np.minimum(rng.zipf(1.1, n), c).astype(np.uint64)
                h = (rank * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)
                s = pc.utf8_lpad(pa.array(h).cast(pa.string()), 8, "0")
                cols.append(pc.if_else(pa.array(rng.random(n) < 0.1), "", s))
            lines = pc.utf8_rtrim(pc.binary_join_element_wise(*cols, "\t"), "\t")
            text = pc.binary_join_element_wise(lines, pa.scalar(""), "\n")
            out.write(
                pa.concat_arrays([text])
                .buffers()[2]
                .to_pybytes()[: pc.sum(pc.binary_length(text)).as_py()]
            )
    tmp.rename(path)


def input_file(rows: int, gz: bool) -> Path:
    folder = ROOT / "outputs" / "bench" / "data"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"criteo_{rows}.tsv{'.gz' if gz else ''}"
    if not path.exists():
        print(f"generating {path} ...", flush=True)
        write_criteo_tsv(path, rows)
    return path


# --- the two systems (each run in its own process) ------------------------------------------------


def run_bare(path: Path) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    types = {f"C{i}": pa.dictionary(pa.int32(), pa.string()) for i in range(1, 27)}
    types.update({f"I{i}": pa.float64() for i in range(1, 14)})
    types["label"] = pa.float64()
    skipped = [0]

    def skip(_row: Any) -> str:
        skipped[0] += 1
        return "skip"

    start = time.perf_counter()
    rows = 0
    with pa.input_stream(str(path), compression="detect") as stream:
        reader = pcsv.open_csv(
            stream,
            read_options=pcsv.ReadOptions(column_names=CRITEO_COLUMNS, block_size=1 << 24),
            parse_options=pcsv.ParseOptions(
                delimiter="\t", quote_char=False, invalid_row_handler=skip
            ),
            convert_options=pcsv.ConvertOptions(column_types=types),
        )
        for batch in reader:
            rows += batch.num_rows
    seconds = time.perf_counter() - start
    return {"rows": rows + skipped[0], "rows_parsed": rows, "seconds": seconds}


def run_build(path: Path) -> dict[str, Any]:
    import yaml

    from cvr.data.build import build_file_store

    cfg = yaml.safe_load((ROOT / "conf" / "data" / "criteo.yaml").read_text())
    with tempfile.TemporaryDirectory(dir=ROOT / "outputs" / "bench") as cache:
        start = time.perf_counter()
        store = build_file_store(
            "bench",
            "criteo_tsv",
            path=str(path),
            schema=cfg["schema"],
            preprocess=cfg["preprocess"],
            cache_root=cache,
        )
        seconds = time.perf_counter() - start
        rows = sum(store.rows(s) for s in ("train", "val", "test"))
        fp = store.fingerprint
    return {"rows": rows, "seconds": seconds, "fingerprint": fp}


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(system: str, path: Path) -> dict[str, Any]:
    """Run one system in a fresh process; adds peak RSS and the load when it started."""
    load = os.getloadavg()[0]
    cmd = [sys.executable, __file__, "--child", system, str(path)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(f"{system} on {path} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["loadavg_1m"] = load
    result["rows_per_s"] = result["rows"] / result["seconds"]
    result["rows_per_cpu_s"] = result["rows"] / result["cpu_seconds"]
    return result


# --- the report -----------------------------------------------------------------------------------


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["rows_per_s"] for r in runs]
    return {
        "rows_per_s": float(np.median(rates)),
        "rows_per_s_spread": [min(rates), max(rates)],
        "rows_per_cpu_s": float(np.median([r["rows_per_cpu_s"] for r in runs])),
        "peak_rss_mib": float(np.median([r["peak_rss_mib"] for r in runs])),
        "seconds": float(np.median([r["seconds"] for r in runs])),
        "loadavg_1m": [r["loadavg_1m"] for r in runs],
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500_000, 2_000_000])
    parser.add_argument("--large", action="store_true", help="also 8M rows (~2.3 GB of text)")
    parser.add_argument("--plain-only", action="store_true", help="skip the gzip files")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", nargs=2, metavar=("SYSTEM", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        system, path = args.child
        cpu = os.times()
        result = (run_bare if system == "bare" else run_build)(Path(path))
        done = os.times()
        result["cpu_seconds"] = (done.user - cpu.user) + (done.system - cpu.system)
        result["peak_rss_mib"] = peak_rss_mib()
        print(json.dumps(result))
        return

    sizes = sorted(set(args.sizes + ([8_000_000] if args.large else [])))
    encodings = [False] if args.plain_only else [False, True]
    results = []
    for rows in sizes:
        for gz in encodings:
            path = input_file(rows, gz)
            runs: dict[str, list] = {"bare": [], "build": []}
            for _ in range(args.rounds):
                for system in ("bare", "build"):  # alternating
                    runs[system].append(child(system, path))
                    r = runs[system][-1]
                    print(
                        f"  {path.name:<24}{system:<6}{r['rows_per_s']:>12,.0f} rows/s"
                        f"{r['rows_per_cpu_s']:>12,.0f} rows/cpu-s"
                        f"{r['peak_rss_mib']:>9,.0f} MiB  load {r['loadavg_1m']:.2f}",
                        flush=True,
                    )
            bare, build = summary(runs["bare"]), summary(runs["build"])
            results.append(
                {
                    "rows": rows,
                    "encoding": "gzip" if gz else "plain",
                    "file_bytes": path.stat().st_size,
                    "bare": bare,
                    "build": build,
                    "build_over_bare": build["rows_per_s"] / bare["rows_per_s"],
                    "build_over_bare_cpu": build["rows_per_cpu_s"] / bare["rows_per_cpu_s"],
                    "build_passes": 1,
                }
            )
    print(
        f"\n{'rows':>10} {'input':<6}{'bare rows/s':>14}{'build rows/s':>14}{'build/bare':>11}"
        f"{'bare us/row':>12}{'build us/row':>13}{'cpu ratio':>10}"
        f"{'bare MiB':>10}{'build MiB':>10}  load"
    )
    for r in results:
        print(
            f"{r['rows']:>10,} {r['encoding']:<6}{r['bare']['rows_per_s']:>14,.0f}"
            f"{r['build']['rows_per_s']:>14,.0f}{r['build_over_bare']:>11.2f}"
            f"{1e6 / r['bare']['rows_per_cpu_s']:>12.2f}{1e6 / r['build']['rows_per_cpu_s']:>13.2f}"
            f"{r['build_over_bare_cpu']:>10.2f}"
            f"{r['bare']['peak_rss_mib']:>10,.0f}{r['build']['peak_rss_mib']:>10,.0f}"
            f"  {max(r['bare']['loadavg_1m'] + r['build']['loadavg_1m']):.2f}"
        )
    by_size = {(r["rows"], r["encoding"]): r["build"]["peak_rss_mib"] for r in results}
    rss_growth = {
        enc: by_size[(8_000_000, enc)] / by_size[(2_000_000, enc)]
        for enc in ("plain", "gzip")
        if (8_000_000, enc) in by_size and (2_000_000, enc) in by_size
    }
    if rss_growth:
        print("peak RSS 8M / 2M:", {k: round(v, 3) for k, v in rss_growth.items()})
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    report = {
        "benchmark": "data",
        "commit": commit,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "rounds": args.rounds,
        "results": results,
        "peak_rss_8m_over_2m": rss_growth,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
