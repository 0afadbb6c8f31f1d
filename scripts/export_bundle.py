"""Export a finished training run (or one checkpoint of it) as a serving bundle.

    python scripts/export_bundle.py outputs/runs/2025-01-01_12-00-00_123 outputs/bundles/ffm
    python scripts/export_bundle.py outputs/runs/<run>/checkpoints/last.ckpt outputs/bundles/last

A run folder gives its best checkpoint (`checkpoints/epoch*.ckpt`); the store is found again
from the run's saved config (`.hydra/config.yaml`). The config and checkpoint are read as data
only (closed registries, `weights_only=True`). Prints the bundle's manifest summary.
Exit code 1 with the reason when the run folder, checkpoint or store is not usable.
"""

from __future__ import annotations

import argparse
import logging
import sys

from cvr.checkpointing import CheckpointError
from cvr.ops.manifest import ManifestError
from cvr.pipelines.run_folder import export_bundle
from cvr.serving.bundle import verify_bundle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run folder, or a .ckpt file inside one")
    parser.add_argument("out", help="bundle folder to write (must not exist)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        path = export_bundle(args.run, args.out, overwrite=args.overwrite)
    except (ManifestError, CheckpointError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    manifest = verify_bundle(path)
    checkpoint = manifest["source_checkpoint"] or {}
    print(f"bundle {path}")
    print(f"  model       {manifest['model_class']}")
    print(f"  checkpoint  {checkpoint.get('path')} (sha256 {str(checkpoint.get('sha256'))[:16]})")
    print(f"  store       {manifest['store']['name']} {manifest['store']['fingerprint'][:16]}")
    print(f"  files       {', '.join(sorted(manifest['files']))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
