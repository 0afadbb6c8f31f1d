"""The default recipe against libffm on the same files: every real sample and synthetic shapes.

    .venv/bin/python scripts/recipe_check.py [--datasets libffm,criteo,...] [--set KEY=VALUE ...]
        [--before] [--out outputs/bench/recipe.json]

For each dataset the project's own config builds the store (`data=<name>`, cached under
outputs/cache), then:

- **cvr** trains with the defaults through the real pipeline (`cvr.pipelines.train.train`, MLflow,
  bundle and efficiency profile off), plus any `--set` overrides; `--before` also runs the
  defaults of before the recipe (written out below) in the same run;
- **libffm** trains on the same train/val/test rows, written in its text format (global feature =
  field offset + the id the project's encoder gave, OOV bucket included), with its defaults
  (eta 0.2, lambda 2e-5, instance normalisation, 15 epochs) and again with `--auto-stop` on the
  same validation rows;
- **pytorch-fm** (with `--pytorch-fm`, where `torchfm` is installed: `pip install --no-deps
  torchfm`) trains its FFM on the same rows with the recipe of its example (`torchfm_peer.py`).

`--also NAME:KEY=VALUE,KEY=VALUE` (repeatable; a list keeps its commas:
`g:optimizer.lr_search.grid=[0.02,0.2]`) trains further cvr variants on the same rows in the same
run (columns `cvr-NAME`), so candidate defaults are compared side by side.

Printed: test AUC and logloss of each, cvr's epochs run and best epoch, the standard error of a
test AUC on that many positives and negatives (Hanley-McNeil, at cvr's AUC: two AUCs closer than
about twice it are within noise), and whether cvr's AUC and logloss are at least libffm's (the
better of its two runs). Small samples (200-1,000 rows) give noisy test figures: read them as a
floor check, the synthetic rows as the measurement.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import libffm_peer
import numpy as np
import torchfm_peer

REPO = Path(__file__).resolve().parents[1]

REAL = ("libffm", "criteo", "criteo_csv", "avazu", "aliexpress", "aliccp", "movielens")


def synthetic(rows: int, fields: int, values: int | None = None) -> list[str]:
    """Overrides for a synthetic dataset: `rows` train rows (and a quarter each for val/test),
    `values` distinct values over all fields (default: Criteo's ~800k at 39 fields, 20k a field
    otherwise)."""
    out = ["data=synthetic", f"data.rows_train={rows}", f"data.rows_val={rows // 4}"]
    out += [f"data.rows_test={rows // 4}", f"data.num_fields={fields}"]
    if fields < 39:
        out += ["data.user_fields=3", "data.item_fields=2"]
        values = values or fields * 20_000
    if values:
        out.append(f"data.total_values={values}")
    return out


DATASETS: dict[str, list[str]] = {
    **{name: [f"data={name}"] for name in REAL},
    "syn-50k-39f": synthetic(50_000, 39),
    "syn-200k-39f": synthetic(200_000, 39),
    "syn-2m-39f": synthetic(2_000_000, 39),
    "syn-50k-10f": synthetic(50_000, 10),
    "syn-200k-10f": synthetic(200_000, 10),
    # the shape of the real set: 10 fields, ~5.4k values, ~290k rows (dense: ~50 rows
    # per value, so it wants many epochs)
    "syn-290k-10f-dense": synthetic(290_000, 10, 5_400),
    # implicit feedback with sampled negatives (cvr/data/implicit.py), the family of the held-out
    # real sets: Frappe's shape (10 fields, 5,382 values, 288,609 rows) and MovieLens-tag's
    # (user, movie, tag; cardinalities scaled to the rows)
    "imp-frappe-290k": ["data=synthetic_implicit"],
    "imp-ml-50k": ["data=synthetic_implicit_ml", "data.rows=50000"],
    "imp-ml-290k": ["data=synthetic_implicit_ml", "data.rows=290000"],
}
IMPLICIT = ("imp-frappe-290k", "imp-ml-50k", "imp-ml-290k")
DEFAULT_SET = (*REAL, "syn-50k-39f", "syn-200k-39f", "syn-50k-10f", "syn-200k-10f",
               "syn-290k-10f-dense", *IMPLICIT)  # fmt: skip

#: The defaults before the recipe (for --before): 4 epochs, AdaGrad lr 0.02, no weight decay.
BEFORE = [
    "trainer.max_epochs=4",
    "optimizer.lr=0.02",
    "callbacks.early_stopping.patience=2",
    "callbacks.early_stopping.monitor=val/auc",
    "callbacks.early_stopping.mode=max",
    "callbacks.model_checkpoint.monitor=val/auc",
    "callbacks.model_checkpoint.mode=max",
    "optimizer.fused.weight_decay=0.0",
]
#: Off for this check: they do not change what is learned, only cost time.
QUIET = [
    "logger=none",
    "export_bundle=false",
    "print_table=false",
    "trainer.enable_progress_bar=false",
    "callbacks.efficiency_profile.enabled=false",
]


def compose(output_root: Path, overrides: list[str]):
    """The resolved train config, as Hydra would build it for `train.py overrides`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from cvr.pipelines.train import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose(
            "train",
            overrides=[f"paths.output_root={output_root}", *overrides],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(Path(tempfile.mkdtemp(dir=output_root)))
        cfg.hydra.runtime.cwd = str(REPO)
        cfg.hydra.job.num = 0
        cfg.hydra.job.id = "recipe"
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    return cfg


def run_cvr(output_root: Path, overrides: list[str]) -> tuple[dict[str, Any], Any]:
    """Train through the real pipeline; (figures, the store it trained on)."""
    from cvr.pipelines.train import build_store, train

    cfg = compose(output_root, [*QUIET, *overrides])
    started = time.perf_counter()
    metrics = train(cfg)
    out = {
        "test_auc": metrics.get("test/auc"),
        "test_logloss": metrics.get("test/logloss"),
        "val_auc": metrics.get("val/best/auc"),
        "val_logloss": metrics.get("val/best/logloss"),
        "lr": metrics.get("train/lr"),
        "lr_search_seconds": metrics.get("train/lr_search_seconds"),
        "epochs_run": metrics.get("train/epochs_run"),
        "best_epoch": metrics.get("train/best_epoch"),
        "stopped_early": metrics.get("train/stopped_early"),
        "seconds": time.perf_counter() - started,
        # each rate the search tried: {lr: [its best val AUC, the val logloss it was scored by]}
        "lr_tried": {
            key.split("/")[2]: [metrics.get(key), metrics.get(key[: -len("auc")] + "logloss")]
            for key in metrics
            if key.startswith("train/lr_search/") and key.endswith("/val_auc")
        },
    }
    return out, build_store(cfg)


def run_libffm(
    exe_dir: Path, store, work: Path, variants: tuple[str, ...] = ("libffm", "libffm-autostop")
) -> dict[str, dict[str, Any]]:
    """libffm with its defaults and with --auto-stop on the same rows; test AUC/logloss."""
    from cvr.metrics import binary_metrics

    label = store.meta.get("label") or store.label_names[0]
    cards = np.asarray(store.cardinalities, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(cards)[:-1]])
    paths = {}
    for split in ("train", "val", "test"):
        paths[split] = work / f"{split}.ffm"
        ids = np.asarray(store.ids(split))
        libffm_peer.write_rows(paths[split], ids, store.labels(split, label), offsets)
    test_labels = store.labels("test", label)
    out = {}
    for variant, auto_stop in (("libffm", False), ("libffm-autostop", True)):
        if variant not in variants:
            continue
        run = libffm_peer.train(
            exe_dir, paths["train"], paths["val"], epochs=15, auto_stop=auto_stop, workdir=work
        )
        probs = np.clip(libffm_peer.predict(exe_dir, paths["test"], run["model"], workdir=work),
                        1e-7, 1 - 1e-7)  # fmt: skip
        m = binary_metrics(test_labels, probs)
        epochs = len(run["epochs"]) - (1 if run["auto_stopped"] else 0)
        out[variant] = {"test_auc": m["auc"], "test_logloss": m["logloss"], "epochs_run": epochs}
    return out


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUC measured on this many positives and
    negatives (nan when one class is missing)."""
    if positives == 0 or negatives == 0 or not np.isfinite(auc):
        return float("nan")
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)
    return float(np.sqrt(max(var, 0.0) / (positives * negatives)))


def split_top_level(text: str) -> list[str]:
    """Split on the commas outside brackets: 'a=1,b=[1,2]' -> ['a=1', 'b=[1,2]']."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def parse_variant(text: str) -> tuple[str, list[str]]:
    """'NAME:KEY=VALUE,KEY=VALUE' -> (NAME, [KEY=VALUE, ...])."""
    name, sep, rest = text.partition(":")
    overrides = [o for o in split_top_level(rest) if o]
    if not sep or not name or not all("=" in o for o in overrides):
        raise argparse.ArgumentTypeError(
            f"--also wants NAME:KEY=VALUE[,KEY=VALUE...], got {text!r}"
        )
    return name, overrides


def check(name: str, exe_dir: Path | None, args: argparse.Namespace, root: Path) -> dict:
    row: dict[str, Any] = {"dataset": name}
    base = DATASETS[name]
    row["cvr"], store = run_cvr(root, [*base, *args.set])
    if args.before:
        row["cvr-before"], _ = run_cvr(root, [*base, *BEFORE])
    for variant, overrides in args.also:
        row[f"cvr-{variant}"], _ = run_cvr(root, [*base, *overrides])
    row["rows_train"] = store.rows("train")
    row["fields"] = len(store.cardinalities)
    label = store.meta.get("label") or store.label_names[0]
    test_labels = np.asarray(store.labels("test", label))
    row["test_positives"] = int((test_labels > 0.5).sum())
    row["test_negatives"] = int(len(test_labels) - row["test_positives"])
    row["auc_se"] = auc_standard_error(
        row["cvr"]["test_auc"] if row["cvr"]["test_auc"] is not None else float("nan"),
        row["test_positives"],
        row["test_negatives"],
    )
    if exe_dir is not None:
        with tempfile.TemporaryDirectory(dir=root) as work:
            variants = ("libffm-autostop",) if args.autostop_only else ("libffm", "libffm-autostop")
            row.update(run_libffm(exe_dir, store, Path(work), variants))
    if args.pytorch_fm:
        row["pytorch-fm"] = torchfm_peer.train_and_test(store, label, seed=0)
    row["loadavg_1m"] = os.getloadavg()[0]
    return row


def verdict(row: dict[str, Any]) -> str:
    peers = [row[k] for k in ("libffm", "libffm-autostop") if k in row]
    ours = row["cvr"]
    if not peers or ours["test_auc"] is None or not np.isfinite(ours["test_auc"]):
        return "-"
    auc = ours["test_auc"] >= max(p["test_auc"] for p in peers) - 1e-4
    ll = ours["test_logloss"] <= min(p["test_logloss"] for p in peers) + 1e-4
    return {(True, True): "yes", (True, False): "AUC only", (False, True): "LL only"}.get(
        (auc, ll), "no"
    )


def print_table(rows: list[dict[str, Any]]) -> None:
    variants = [k for k in rows[0] if k.startswith("cvr-") and k != "cvr-before"]
    order = ("cvr-before", "cvr", *variants, "libffm", "libffm-autostop", "pytorch-fm")
    systems = [s for s in order if s in rows[0]]
    head = f"{'dataset':<14}{'rows':>9}{'F':>4}"
    for s in systems:
        head += f"{s + ' AUC':>{max(12, len(s) + 5)}}{'LL':>8}{'ep':>4}"
    print(head + f"{'best':>5}{'AUC SE':>8}{'>= libffm':>11}")
    for r in rows:
        line = f"{r['dataset']:<14}{r['rows_train']:>9,}{r['fields']:>4}"
        for s in systems:
            m = r.get(s, {})
            auc, ll, ep = m.get("test_auc"), m.get("test_logloss"), m.get("epochs_run")
            line += f"{auc if auc is not None else float('nan'):>{max(12, len(s) + 5)}.4f}"
            line += f"{ll if ll is not None else float('nan'):>8.4f}"
            line += f"{int(ep) if ep is not None else '-':>4}"
        best = r["cvr"].get("best_epoch")
        line += f"{int(best) if best is not None else '-':>5}{r.get('auc_se', float('nan')):>8.4f}"
        line += f"{verdict(r):>11}"
        print(line)
    loads = " ".join(f"{r['loadavg_1m']:.1f}" for r in rows)
    print(f"load avg (1 min) after each dataset: {loads}")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DEFAULT_SET), help=f"of {list(DATASETS)}")
    parser.add_argument("--set", action="append", default=[], help="extra override for cvr")
    parser.add_argument("--before", action="store_true", help="also run the pre-recipe defaults")
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        type=parse_variant,
        help="NAME:KEY=VALUE,... another cvr variant on the same rows (repeatable)",
    )
    parser.add_argument(
        "--autostop-only",
        action="store_true",
        help="run libffm with --auto-stop only (its 15-epoch run is long on 2M rows)",
    )
    parser.add_argument(
        "--pytorch-fm",
        action="store_true",
        help="also train pytorch-fm's FFM (its example's recipe) on the same rows",
    )
    parser.add_argument("--out", help="write the rows here as JSON")
    args = parser.parse_args(argv)
    missing = torchfm_peer.model_class()[1] if args.pytorch_fm else ""
    if missing:
        parser.error(f"--pytorch-fm: {missing} (pip install --no-deps torchfm)")
    names = args.datasets.split(",")
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        parser.error(f"--datasets: unknown {unknown}; choose from {list(DATASETS)}")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    exe_dir, why = libffm_peer.build()
    if exe_dir is None:
        print(f"libffm columns skipped: {why}")
    root = REPO / "outputs" / "recipe_check"
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        print(f"== {name}", file=sys.stderr, flush=True)
        try:
            rows.append(check(name, exe_dir, args, root))
        except Exception as exc:  # one broken dataset must not lose the others' figures
            print(f"{name}: failed: {type(exc).__name__}: {exc}".splitlines()[0], flush=True)
            continue
        print("ROW " + json.dumps(rows[-1], default=str), flush=True)
    print(f"\ncvr overrides: {args.set or 'none (defaults)'}")
    if rows:
        print_table(rows)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        report = {"overrides": args.set, "also": dict(args.also), "rows": rows}
        tmp.write_text(json.dumps(report, indent=2, default=str))
        os.replace(tmp, out)
    return rows


if __name__ == "__main__":
    main()
