"""Where 2-thread Hogwild FFM training loses its speed: overhead, shared rows, or memory.

    .venv/bin/python scripts/bench_hogwild.py [--rows 200000] [--repeats 2] [--out hogwild.json]

Meaningful only on a quiet machine (both cores free): the figures are per-thread CPU time per
example, which grows only while the two threads run at the same time. On bench_train's data
(Criteo shape, one model, the recipe's AdaGrad), each case trains every row once after one
warm-up pass, alternating cases, `--repeats` times:

| case         | what                                                                         |
|--------------|------------------------------------------------------------------------------|
| solo         | one thread, all rows in 4096-row batches (the kernel alone)                  |
| hogwild      | `FusedTrainer(threads=2).train_batch`, 4096-row batches (bench_train fused-2t) |
| hogwild-64k  | the same with 65,536-row batches (16x fewer thread hand-offs per epoch)      |
| pair-shared  | two plain threads, each its own half of the rows, one kernel call a batch,   |
|              | both on the same table: the hot rows are shared between them                 |
| pair-disjoint| the same, but thread 1's ids are remapped by a random permutation per field  |
|              | (same frequencies and table size; its hot rows are thread 0's cold ones)     |
| pair-prefetchw | pair-shared with write-intent prefetches (`prefetch_write`)                |

Reading it: if `hogwild` costs more CPU per example than `pair-shared`, the trainer's piece
hand-offs cost it; if `pair-shared` costs more than `solo` and `pair-disjoint` less, the
threads lose to each other's writes of the same hot rows (cache lines moving between cores); if
`pair-disjoint` costs as much as `pair-shared`, it is the memory system (bandwidth or the
shared cache), which no partitioning of the rows can fix.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import bench_train  # the same data as bench_train (scripts/ is on sys.path when run)
import numpy as np

from cvr.kernels import FusedTrainer
from cvr.models.ctr import FFM
from cvr.ops.manifest import write_json_atomic

CASES = ("solo", "hogwild", "hogwild-64k", "pair-shared", "pair-disjoint", "pair-prefetchw")
BATCH = 4096


def permuted(ids: np.ndarray, cards: list[int], seed: int) -> np.ndarray:
    """ids with each field's values 1.. remapped by a random permutation (0, OOV, kept)."""
    rng = np.random.default_rng(seed)
    out = ids.copy()
    for f, c in enumerate(cards):
        perm = np.concatenate([[0], 1 + rng.permutation(c - 1)]).astype(np.int32)
        out[:, f] = perm[ids[:, f]]
    return out


def run_case(case: str, ids, perm_ids, labels, cards, lr: float) -> dict[str, float]:
    model = FFM(cards, dim=4)
    threads = 2 if case.startswith("hogwild") else 1
    trainer = FusedTrainer(model, lr=lr, initial_accumulator_value=1.0, threads=threads)
    if case.startswith("pair"):  # one-thread trainers: their default reads; hogwild's writes
        trainer.prefetch_write = case == "pair-prefetchw"
    n, half = len(ids), len(ids) // 2
    for s in range(0, n, BATCH):  # warm-up pass: every row touched once, caches settled
        trainer.train_batch(ids[s : s + BATCH], labels[s : s + BATCH])
    if not case.startswith("pair"):
        batch = 65536 if case == "hogwild-64k" else BATCH
        wall, cpu = time.perf_counter(), time.process_time()
        for s in range(0, n, batch):
            trainer.train_batch(ids[s : s + batch], labels[s : s + batch])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return {
            "samples_per_s": n / wall,
            "cpu_us_per_example": cpu / n * 1e6,
            "cpu_per_wall": cpu / wall,
        }
    scratch = trainer.new_scratch(2)
    params = trainer._params()
    accums = trainer._accumulator_arrays(params)
    second = perm_ids if case == "pair-disjoint" else ids
    jobs = [(ids, 0), (second, half)]
    cpu = [0.0, 0.0]

    def work(t: int, src: np.ndarray, start: int) -> None:
        began = time.thread_time()
        for s in range(start, start + half, BATCH):
            e = min(start + half, s + BATCH)
            trainer._kernel(src[s:e], labels[s:e], params, accums, scratch[t])
        cpu[t] = time.thread_time() - began

    pool = [threading.Thread(target=work, args=(t, *job)) for t, job in enumerate(jobs)]
    wall = time.perf_counter()
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    wall = time.perf_counter() - wall
    return {
        "samples_per_s": 2 * half / wall,
        "cpu_us_per_example": sum(cpu) / (2 * half) * 1e6,
        "cpu_per_wall": sum(cpu) / wall,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    cases = args.cases.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.npz"
        bench_train.make_data(path, args.rows, 1000, 0)
        with np.load(path) as z:
            ids, labels = z["train_ids"], z["train_labels"]
            cards = [int(c) for c in z["cards"]]
    perm_ids = permuted(ids, cards, seed=1)
    runs: dict[str, list[dict]] = {c: [] for c in cases}
    for _ in range(args.repeats):
        for case in cases:
            r = run_case(case, ids, perm_ids, labels, cards, args.lr)
            r["loadavg_1m"] = os.getloadavg()[0]
            runs[case].append(r)
    print(f"{'case':<16}{'samples/s':>11}{'CPU us/ex':>11}{'cpu/wall':>10}  load (1 min)")
    for case in cases:
        med = {k: float(np.median([r[k] for r in runs[case]])) for k in runs[case][0]}
        loads = " ".join(f"{r['loadavg_1m']:.1f}" for r in runs[case])
        print(
            f"{case:<16}{med['samples_per_s']:>11,.0f}{med['cpu_us_per_example']:>11.2f}"
            f"{med['cpu_per_wall']:>10.2f}  {loads}"
        )
    report = {"benchmark": "hogwild", "rows": args.rows, "runs": runs}
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, report)
    return report


if __name__ == "__main__":
    main()
