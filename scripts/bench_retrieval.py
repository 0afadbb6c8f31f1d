"""Retrieval benchmark at catalogue scale, one command:

    python scripts/bench_retrieval.py --items 1000000
    python scripts/bench_retrieval.py --items 1000000 --run-dir outputs/runs/<train run>

Without --run-dir / --checkpoint it first trains the Criteo-shape FFM of conf/data/synthetic.yaml
(39 fields: 36 query x 3 item fields, k = 4, so 433-dim vectors) in-process. Then it runs
`retrieve.py` over that many generated items with the index types whose builds fit a ~10 minute
budget on 2 cores: exact, IVF-Flat, IVF-SQ8, IVF-PQ and HNSW-SQ8 with efConstruction 20 (a
float HNSW over 1M 433-dim vectors alone takes about 5 minutes to build here). Extra arguments
are passed to retrieve.py as Hydra overrides, e.g. `'index=[flat,hnsw]'` or `queries.num=500`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCALE_OVERRIDES = [
    "index=[flat,ivf_flat,ivf_sq8,ivf_pq,hnsw_sq8]",
    # Half the default construction effort halves the 1M-item build (about 2.5 of 5 minutes);
    # a larger efSearch buys the recall back at query time.
    "index.hnsw_sq8.build.hnsw.efConstruction=20",
    "index.hnsw_sq8.search.efSearch=[32,64,128,256,512]",
    "save_indexes=[]",
    "train.run_name=ffm-criteo-shape-retrieval",
    "train.overrides=['model=ffm','trainer.max_epochs=2','trainer.enable_progress_bar=false']",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000, help="catalogue size")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--run-dir", help="a train.py run folder to take the model from")
    parser.add_argument("--checkpoint", help="a .ckpt inside a train.py run folder")
    args, overrides = parser.parse_known_args(argv)
    command = [
        sys.executable,
        str(REPO / "retrieve.py"),
        *SCALE_OVERRIDES,
        f"catalogue.num_items={args.items}",
        f"queries.num={args.queries}",
    ]
    if args.run_dir:
        command.append(f"run_dir={Path(args.run_dir).resolve()}")
    if args.checkpoint:
        command.append(f"checkpoint={Path(args.checkpoint).resolve()}")
    return subprocess.run([*command, *overrides], cwd=REPO).returncode


if __name__ == "__main__":
    sys.exit(main())
