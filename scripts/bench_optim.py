"""The autograd backend's torch optimiser: its fused implementation against torch's CPU loop.

    .venv/bin/python scripts/bench_optim.py [--steps 40] [--repeats 3] [--out optim.json]

ESMM at the CVR study's shape (8 fields of 5,000 values, k=4, partial sharing: a shared table and
one private table per tower), batch 250, one thread, AdaGrad with weight decay 1e-5 on dense
table gradients, as `experiment=cvr_study` trains it. Per case, the same `--steps` batches from
the same initial weights, alternating cases, `--repeats` times; the table quotes the fastest
repeat's milliseconds per training step (forward, backward, optimiser step) and the largest
difference of any trained weight between the two implementations.

| case  | what                                                                             |
|-------|----------------------------------------------------------------------------------|
| loop  | `torch.optim.Adagrad` as torch builds it on the CPU by default (per-tensor loop) |
| fused | the same optimiser as `cvr.backends.autograd.make_optimizer` builds it (fused)   |

Meaningful on a quiet machine; both cases share whatever load there is, since they alternate.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from pathlib import Path

import torch

from cvr.backends.autograd import make_optimizer
from cvr.models.esmm import ESMM, esmm_loss

CARDINALITIES = [5000] * 8
BATCH = 250


def batches(steps: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(ids (B, F), click (B,), conversion (B,)) per step, ~5% clicks, ~10% conversions."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        ids = torch.randint(0, CARDINALITIES[0], (BATCH, len(CARDINALITIES)), generator=gen)
        click = (torch.rand(BATCH, generator=gen) < 0.05).float()
        conversion = (torch.rand(BATCH, generator=gen) < 0.1).float()
        out.append((ids, click, conversion))
    return out


def train(tower: str, fused: bool, data: list) -> tuple[float, torch.Tensor]:
    """(seconds per step, the trained shared table) of one case."""
    torch.manual_seed(0)
    model = ESMM(CARDINALITIES, dim=4, tower=tower, share_embedding=True, private_dim=4)
    factory = functools.partial(torch.optim.Adagrad, weight_decay=1e-5)
    params = list(model.parameters())
    # loop: the optimiser as torch builds it by default; fused: as the autograd backend does
    if fused:
        optimizer = make_optimizer(factory, params, 0.05, sparse_grads=False)
    else:
        optimizer = factory(params, lr=0.05)
    assert bool(optimizer.defaults.get("fused")) is fused
    started = time.perf_counter()
    for ids, click, conversion in data:
        optimizer.zero_grad()
        ctr_logit, cvr_logit = model.head_logits(ids).unbind(1)
        esmm_loss(ctr_logit, cvr_logit, click, conversion).backward()
        optimizer.step()
    return (time.perf_counter() - started) / len(data), model.embedding.weight.detach().clone()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="write the figures here as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = batches(args.steps)
    results = {}
    for tower in ("ffm", "fm"):
        seconds: dict[str, list[float]] = {"loop": [], "fused": []}
        weights = {}
        for _ in range(args.repeats):
            for case in ("loop", "fused"):
                step, weights[case] = train(tower, case == "fused", data)
                seconds[case].append(step)
        diff = float((weights["fused"] - weights["loop"]).abs().max())
        results[tower] = {
            "ms_per_step": {case: 1e3 * min(values) for case, values in seconds.items()},
            "ms_per_step_all": {case: [1e3 * v for v in vs] for case, vs in seconds.items()},
            "max_weight_diff": diff,
        }
    print(f"ESMM training step, batch {BATCH}, {args.steps} steps, best of {args.repeats}; "
          f"load {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"{'towers':8s} {'loop ms':>9s} {'fused ms':>9s} {'speed-up':>9s} {'max |dw|':>10s}")
    for tower, r in results.items():
        loop, fused = r["ms_per_step"]["loop"], r["ms_per_step"]["fused"]
        diff = r["max_weight_diff"]
        print(f"{tower:8s} {loop:9.1f} {fused:9.1f} {loop / fused:8.2f}x {diff:10.2e}")
    if args.out:
        payload = {"benchmark": "optim", "steps": args.steps, "repeats": args.repeats,
                   "loadavg_1m": os.getloadavg()[0], "results": results}  # fmt: skip
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
