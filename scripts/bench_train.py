"""FFM training: fused numba kernels vs libffm vs autograd FFM vs pytorch-fm, one run, Criteo shape.

    .venv/bin/python scripts/bench_train.py [--quick] [--repeats 3] [--out bench_train.json]

Data: `cvr.data.synthetic` rows (39 fields, ~700k values, Zipf frequencies, labels drawn from a
ground-truth FFM, so the oracle AUC/logloss of the validation rows is known), generated once and
handed to every system. Each system trains in its own process, so its peak RSS is its own:

| system      | what                                                                          |
|-------------|-------------------------------------------------------------------------------|
| fused-1t    | `cvr.kernels.FusedTrainer`, AdaGrad per example, one thread, deterministic    |
| fused-2t    | the same, two threads, Hogwild                                                |
| libffm-1t   | libffm `ffm-train` (C++, SSE, AdaGrad per example, its defaults), one thread |
| libffm-2t   | the same, two OpenMP threads                                                  |
| autograd    | `cvr.models.ctr.FFM`, sparse embedding, torch.optim.Adagrad, batch 4096       |
| pytorch-fm  | torchfm FieldAwareFactorizationMachineModel, Adam, batch 4096 (if installed)  |
| cuda-autograd | with `--device cuda`: the autograd FFM through `cvr.backends` on the GPU, the |
|             | code `trainer=gpu` trains, batch `--device-batch` (see `device_arm`)          |

All train `--epochs` epochs on the same rows. libffm reads them from its text format (written once
per run); it is built from `../shared/peers/libffm` under `outputs/peers/`, never in the
repository, and skipped with one line where the source or a compiler is missing. The fused and
libffm systems run `--repeats` times, alternating, and the table quotes the median; the
fused/libffm ratios are the medians of the ratios within each repeat. Each of their epochs is
scored on the validation rows (untimed), so the per-epoch validation logloss is comparable.

Samples/s is over the epochs after the first (all epochs if there is one): rows x epochs / seconds,
with the min..max of single epochs as spread. libffm reports cumulative train seconds to 0.1 s, so
its single-epoch figures are coarse on small data. The two slow baselines see only the first
`--baseline-rows` rows per epoch (their speed is per row), so their quality figures are for less
data: the table says how many rows each system saw. torch uses `--threads` intra-op threads.
pytorch-fm is a benchmark-only peer (`pip install --no-deps torchfm`), never a project dependency.
"""

from __future__ import annotations

import argparse
import functools
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

import libffm_peer
import numpy as np
import torch
import torchfm_peer

from cvr.metrics import binary_metrics
from cvr.ops.manifest import write_json_atomic

SYSTEMS = ("fused-1t", "fused-2t", "libffm-1t", "libffm-2t", "autograd", "pytorch-fm")
#: Systems run --repeats times, alternating; the rest once.
REPEATED = ("fused-1t", "libffm-1t", "fused-2t", "libffm-2t")


# --- data -----------------------------------------------------------------------------------
def make_data(path: Path, rows_train: int, rows_val: int, seed: int) -> dict[str, Any]:
    """Generate Criteo-shape rows into an .npz at `path`; returns a summary."""
    from cvr.data.synthetic import SyntheticGenerator, SyntheticSpec

    spec = SyntheticSpec(rows_train=rows_train, rows_val=rows_val, rows_test=1, seed=seed)
    gen = SyntheticGenerator(spec)
    parts: dict[str, list[np.ndarray]] = {}
    for split in ("train", "val"):
        chunks = list(gen.chunks(split))
        parts[f"{split}_ids"] = np.concatenate([c[0] for c in chunks])
        parts[f"{split}_labels"] = np.concatenate([c[1][:, 0] for c in chunks])
        parts[f"{split}_probs"] = np.concatenate([c[2][:, 0] for c in chunks])
    # Ids are frequency ranks 1..n per field (0 is the OOV bucket): n + 1 rows per field.
    cards = np.asarray([c + 1 for c in gen.cardinalities], dtype=np.int64)
    np.savez(path, cards=cards, **parts)
    oracle = binary_metrics(parts["val_labels"], parts["val_probs"])
    return {
        "rows_train": rows_train,
        "rows_val": rows_val,
        "fields": len(cards),
        "values": int(cards.sum()),
        "positive_rate": float(parts["train_labels"].mean()),
        "oracle_val_auc": oracle["auc"],
        "oracle_val_logloss": oracle["logloss"],
    }


def rates(rows: int, epoch_seconds: list[float]) -> dict[str, float]:
    """Samples/s over the epochs after the first (all if only one), and the single-epoch spread."""
    timed = epoch_seconds[1:] or epoch_seconds
    single = [rows / max(s, 1e-3) for s in timed]
    return {
        "samples_per_s": rows * len(timed) / max(sum(timed), 1e-3),
        "samples_per_s_min": float(np.min(single)),
        "samples_per_s_max": float(np.max(single)),
        "s_per_epoch": float(np.median(timed)),
    }


# --- one system, in a worker process ---------------------------------------------------------
def evaluate(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    m = binary_metrics(labels, probs)
    return {"val_auc": m["auc"], "val_logloss": m["logloss"]}


def run_system(name: str, data: dict[str, np.ndarray], args: argparse.Namespace) -> dict:
    """Train one system for args.epochs epochs; returns its figures."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    cards = [int(c) for c in data["cards"]]
    rows = len(data["train_ids"]) if name.startswith("fused") else args.baseline_rows
    ids, labels = data["train_ids"][:rows], data["train_labels"][:rows]
    val_ids, val_labels = data["val_ids"], data["val_labels"]
    step, score = make_system(name, cards, args)

    def validate() -> dict[str, float]:
        chunks = [score(val_ids[s : s + 8192]) for s in range(0, len(val_ids), 8192)]
        return evaluate(np.concatenate(chunks), val_labels)

    epoch_seconds, cpu_seconds, losses, per_epoch = [], [], [], []
    for epoch in range(args.epochs):
        wall, cpu = time.perf_counter(), time.process_time()
        total = 0.0
        for s in range(0, rows, args.batch):
            x, y = ids[s : s + args.batch], labels[s : s + args.batch]
            total += step(x, y) * len(x)
        epoch_seconds.append(time.perf_counter() - wall)
        cpu_seconds.append(time.process_time() - cpu)
        losses.append(total / rows)
        if name.startswith("fused") or epoch == args.epochs - 1:
            per_epoch.append(validate())
    return {
        "system": name,
        "rows_per_epoch": rows,
        "epochs": args.epochs,
        **rates(rows, epoch_seconds),
        "epoch_seconds": epoch_seconds,
        "cpu_per_wall": float(np.sum(cpu_seconds) / np.sum(epoch_seconds)),
        "train_loss_last_epoch": float(losses[-1]),
        **per_epoch[-1],
        "val_logloss_by_epoch": [m["val_logloss"] for m in per_epoch],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def make_system(name: str, cards: list[int], args: argparse.Namespace):
    """(step(ids, labels) -> mean batch loss, score(ids) -> logits) for one system."""
    if name.startswith("fused"):
        from cvr.kernels import FusedTrainer, fused_logits
        from cvr.models.ctr import FFM

        model = FFM(cards, dim=args.k)
        trainer = FusedTrainer(
            model,
            optimizer="adagrad",
            lr=args.fused_lr,
            initial_accumulator_value=args.fused_init_acc,
            weight_decay=args.fused_wd,
            threads=2 if name == "fused-2t" else 1,
        )
        return trainer.train_batch, lambda x: fused_logits(model, x)

    if name == "autograd":
        from cvr.models.ctr import FFM
        from cvr.models.embeddings import FullEmbedding

        model = FFM(cards, dim=args.k, embedding=functools.partial(FullEmbedding, sparse=True))
        opt = torch.optim.Adagrad(model.parameters(), lr=args.autograd_lr)

        def step(x: np.ndarray, y: np.ndarray) -> float:
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                model(torch.from_numpy(x)), torch.from_numpy(y)
            )
            loss.backward()
            opt.step()
            return loss.item()

        def score(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(x)).numpy()

        return step, score

    if name == "pytorch-fm":
        model_type, why = torchfm_peer.model_class()
        if model_type is None:
            raise ModuleNotFoundError(why)
        model = model_type(cards, args.k)
        opt = torch.optim.Adam(model.parameters(), lr=args.torchfm_lr)

        def step(x: np.ndarray, y: np.ndarray) -> float:
            opt.zero_grad()
            # it takes per-field local ids (it adds its own offsets) and returns probabilities
            probs = model(torch.from_numpy(x).long())
            loss = torch.nn.functional.binary_cross_entropy(probs, torch.from_numpy(y))
            loss.backward()
            opt.step()
            return loss.item()

        def score(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                p = model(torch.from_numpy(x).long()).double().clamp(1e-7, 1 - 1e-7)
                return torch.log(p / (1 - p)).numpy()

        return step, score
    raise ValueError(f"unknown system {name!r}")


def worker(args: argparse.Namespace) -> None:
    with np.load(args.data) as npz:
        data = {k: npz[k] for k in npz.files}
    try:
        result = run_system(args.worker, data, args)
    except ImportError as exc:
        result = {"system": args.worker, "unavailable": f"{type(exc).__name__}: {exc}"}
    print("RESULT " + json.dumps(result), flush=True)


# --- libffm ----------------------------------------------------------------------------------
def prepare_libffm(npz_path: Path, tmp: Path) -> tuple[Path | None, str]:
    """Build libffm and write the run's train/val rows in its format; (exe folder, why not)."""
    exe_dir, why = libffm_peer.build()
    if exe_dir is None:
        return None, why
    with np.load(npz_path) as npz:
        offsets = np.concatenate([[0], np.cumsum(npz["cards"])[:-1]])
        for split in ("train", "val"):
            libffm_peer.write_rows(
                tmp / f"{split}.ffm", npz[f"{split}_ids"], npz[f"{split}_labels"], offsets
            )
    return exe_dir, ""


def run_libffm(name: str, exe_dir: Path, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """ffm-train with its defaults on the run's rows, then ffm-predict on val for AUC."""
    threads = int(name.split("-")[1].rstrip("t"))
    run = libffm_peer.train(
        exe_dir, tmp / "train.ffm", tmp / "val.ffm", epochs=args.epochs, threads=threads,
        k=args.k, workdir=tmp,
    )  # fmt: skip
    probs = libffm_peer.predict(exe_dir, tmp / "val.ffm", run["model"], workdir=tmp)
    with np.load(tmp / "data.npz") as npz:
        labels = npz["val_labels"]
    m = binary_metrics(labels, np.clip(probs, 1e-7, 1 - 1e-7))
    rows = args.rows_train
    return {
        "system": name,
        "rows_per_epoch": rows,
        "epochs": args.epochs,
        **rates(rows, run["epoch_seconds"]),
        "epoch_seconds": run["epoch_seconds"],
        "cpu_per_wall": None,
        "val_auc": m["auc"],
        "val_logloss": m["logloss"],
        "val_logloss_by_epoch": [r["va_logloss"] for r in run["epochs"]],
        "peak_rss_mb": run["peak_rss_mb"],
    }


# --- driver ----------------------------------------------------------------------------------
def run_worker(system: str, data_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", system, "--data", str(data_path)]
    for key in ("seed", "epochs", "batch", "baseline_rows", "threads", "k"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    for key in ("fused_lr", "fused_init_acc", "fused_wd", "autograd_lr", "torchfm_lr"):
        cmd += [f"--{key.replace('_', '-')}", repr(getattr(args, key))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return {"system": system, "unavailable": f"worker failed (rc {proc.returncode}): {tail}"}


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median samples/s (all runs listed under "repeats")."""
    ok = [r for r in runs if "unavailable" not in r]
    if not ok:
        return runs[0]
    ok.sort(key=lambda r: r["samples_per_s"])
    best = dict(ok[(len(ok) - 1) // 2])
    best["repeats"] = [r["samples_per_s"] for r in runs if "unavailable" not in r]
    return best


def ratios(by_system: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """fused-Nt / libffm-Nt samples/s, paired within each repeat; median and all pairs."""
    out = {}
    for t in ("1t", "2t"):
        ours, peer = by_system.get(f"fused-{t}", []), by_system.get(f"libffm-{t}", [])
        pairs = [
            a["samples_per_s"] / b["samples_per_s"]
            for a, b in zip(ours, peer, strict=False)
            if "unavailable" not in a and "unavailable" not in b
        ]
        if pairs:
            out[t] = {"median": float(np.median(pairs)), "pairs": pairs}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows-train", type=int, default=200_000)
    parser.add_argument("--rows-val", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="runs of the fused/libffm systems")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument(
        "--baseline-rows", type=int, default=20_480, help="rows per epoch for the slow baselines"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--fused-lr", type=float, default=0.02, help="as conf/optimizer/adagrad")
    parser.add_argument("--fused-init-acc", type=float, default=1.0, help="AdaGrad initial sum")
    parser.add_argument("--fused-wd", type=float, default=0.0, help="as optimizer.fused")
    parser.add_argument("--autograd-lr", type=float, default=0.01)
    parser.add_argument("--torchfm-lr", type=float, default=1e-3)
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--out", help="write the results here as JSON")
    parser.add_argument(
        "--device", help="also train the autograd FFM on this device (cuda): see device_arm"
    )
    parser.add_argument("--device-batch", type=int, default=16384, help="as trainer=gpu")
    parser.add_argument("--device-lr", type=float, default=0.01, help="as optimizer.default_lr")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return None
    if args.quick:
        args.rows_train, args.rows_val, args.epochs, args.baseline_rows = 30_000, 5_000, 2, 4096
        args.repeats = min(args.repeats, 2)
    systems = args.systems.split(",")
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        parser.error(f"--systems: unknown {unknown}; choose from {','.join(SYSTEMS)}")

    skipped: dict[str, str] = {}
    by_system: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data_path = tmp / "data.npz"
        started = time.perf_counter()
        data = make_data(data_path, args.rows_train, args.rows_val, args.seed)
        data["generate_s"] = time.perf_counter() - started
        exe_dir = None
        if any(s.startswith("libffm") for s in systems):
            exe_dir, why = prepare_libffm(data_path, tmp)
            if exe_dir is None:
                print(f"libffm rows skipped: {why}", flush=True)
                for s in systems:
                    if s.startswith("libffm"):
                        skipped[s] = why
        order = [s for s in REPEATED if s in systems and s not in skipped]
        for rep in range(args.repeats):
            for system in order:
                print(f"repeat {rep + 1}/{args.repeats}: {system}", file=sys.stderr, flush=True)
                if system.startswith("libffm"):
                    result = run_libffm(system, exe_dir, tmp, args)
                else:
                    result = run_worker(system, data_path, args)
                result["loadavg_1m"] = os.getloadavg()[0]
                by_system[system].append(result)
                load.append(result["loadavg_1m"])
        for system in systems:
            if system not in REPEATED:
                result = run_worker(system, data_path, args)
                result["loadavg_1m"] = os.getloadavg()[0]
                by_system[system].append(result)
                load.append(result["loadavg_1m"])
        device_result = device_arm(data_path, args) if args.device else None
    results = [
        median_run(by_system[s]) if by_system[s] else {"system": s, "unavailable": skipped[s]}
        for s in systems
    ]
    if device_result is not None:
        results.append(device_result)
    report = {
        "benchmark": "ffm_training",
        "data": data,
        "settings": {
            k: getattr(args, k)
            for k in (
                *("seed", "epochs", "repeats", "batch", "baseline_rows", "threads", "k"),
                *("fused_lr", "fused_init_acc", "fused_wd", "autograd_lr", "torchfm_lr"),
            )
        },
        "results": results,
        "ratios_fused_over_libffm": ratios(by_system),
        "all_runs": by_system,
        "loadavg_1m": load,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    print_report(report)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, report)
    return report


def print_report(report: dict[str, Any]) -> None:
    d, st = report["data"], report["settings"]
    print(
        f"\nFFM training, {d['fields']} fields, {d['values']:,} values, k={st['k']}, "
        f"{d['rows_train']:,} train / {d['rows_val']:,} val rows, {st['epochs']} epochs, "
        f"{st['repeats']} repeats (median); oracle val AUC {d['oracle_val_auc']:.4f}, "
        f"logloss {d['oracle_val_logloss']:.4f}\nload avg (1 min) at start and after each run: "
        + " ".join(f"{x:.1f}" for x in report["loadavg_1m"])
        + f"; torch threads {st['threads']}\n"
    )
    print(
        f"{'system':<12}{'rows/epoch':>11}{'samples/s':>11}{'spread':>20}{'s/epoch*':>10}"
        f"{'cpu/wall':>9}{'val AUC':>9}{'val LL':>8}{'RSS MiB':>9}"
    )
    for r in report["results"]:
        if "unavailable" in r:
            print(f"{r['system']:<12}unavailable: {r['unavailable']}")
            continue
        spread = f"{r['samples_per_s_min']:,.0f}..{r['samples_per_s_max']:,.0f}"
        s_all = d["rows_train"] / r["samples_per_s"]
        cpu = "-" if r["cpu_per_wall"] is None else f"{r['cpu_per_wall']:.2f}"
        print(
            f"{r['system']:<12}{r['rows_per_epoch']:>11,}{r['samples_per_s']:>11,.0f}"
            f"{spread:>20}{s_all:>10.2f}{cpu:>9}"
            f"{r['val_auc']:>9.4f}{r['val_logloss']:>8.4f}{r['peak_rss_mb']:>9.0f}"
        )
    print(f"* seconds for one epoch over all {d['rows_train']:,} train rows at that speed")
    for t, ratio in report["ratios_fused_over_libffm"].items():
        pairs = " ".join(f"{x:.2f}" for x in ratio["pairs"])
        print(f"fused-{t} / libffm-{t} samples/s: {ratio['median']:.2f}x (per repeat: {pairs})")
    curves = [r for r in report["results"] if "unavailable" not in r and r["system"] in REPEATED]
    if curves:
        print("\nval logloss by epoch: " + "  ".join(f"{r['system']:>10}" for r in curves))
        for e in range(st["epochs"]):
            cells = [r["val_logloss_by_epoch"] for r in curves]
            print(
                f"{'epoch ' + str(e + 1):>21}  "
                + "  ".join(f"{c[e]:>10.4f}" if e < len(c) else f"{'-':>10}" for c in cells)
            )


# --- the device arm (trainer=gpu's path) -------------------------------------------------------
def device_arm(data_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The autograd FFM trained on `args.device` through `cvr.backends` (the code trainer=gpu
    runs: select_backend -> AutogradBackend), `args.device_batch` rows per step, on the same
    rows as the other systems. Train and val rows are moved to the device once; batches are
    contiguous slices in a block order reshuffled per epoch (as the DataModule does). Timing
    synchronises the device at the end of each epoch. Returns a row of the results table, or one
    marked unavailable where the device is missing."""
    from cvr.backends import Optimization, select_backend
    from cvr.models.ctr import FFM

    device = torch.device(args.device)
    name = f"{device.type}-autograd"
    if device.type == "cuda" and not torch.cuda.is_available():
        return {"system": name, "unavailable": "no CUDA device (torch.cuda.is_available() false)"}
    data = np.load(data_path)
    torch.manual_seed(args.seed)
    model = FFM([int(c) for c in data["cards"]], dim=args.k).to(device)
    backend, reason = select_backend(
        model, "autograd", device, None, optimization=Optimization(lr=args.device_lr)
    )
    print(f"{name}: {reason}", file=sys.stderr, flush=True)
    ids = torch.from_numpy(data["train_ids"]).to(device)
    labels = torch.from_numpy(data["train_labels"].astype(np.float32)).to(device)
    val_ids = torch.from_numpy(data["val_ids"]).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rows, batch = len(ids), args.device_batch
    epoch_seconds, per_epoch = [], []
    for epoch in range(args.epochs):
        order = np.random.default_rng([args.seed, epoch]).permutation(-(-rows // batch))
        sync()
        wall = time.perf_counter()
        for b in order.tolist():
            backend.train_batch(
                ids[b * batch : (b + 1) * batch], labels[b * batch : (b + 1) * batch]
            )
        sync()
        epoch_seconds.append(time.perf_counter() - wall)
        logits = torch.cat(
            [backend.logits(val_ids[s : s + 65536]) for s in range(0, len(val_ids), 65536)]
        )
        per_epoch.append(evaluate(logits.float().cpu().numpy(), data["val_labels"]))
    return {
        "system": name,
        "backend": backend.name,
        "device": str(device),
        "batch": batch,
        "lr": args.device_lr,
        "rows_per_epoch": rows,
        "epochs": args.epochs,
        **rates(rows, epoch_seconds),
        "epoch_seconds": epoch_seconds,
        "cpu_per_wall": None,
        **per_epoch[-1],
        "val_logloss_by_epoch": [m["val_logloss"] for m in per_epoch],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device_peak_mb": (
            torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        ),
        "loadavg_1m": os.getloadavg()[0],
    }


if __name__ == "__main__":
    main()
