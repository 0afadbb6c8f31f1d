"""The retrieval pipeline: checkpoint -> query/item vectors -> faiss indexes -> benchmark -> MLflow.

The model comes from a training run (`checkpoint=...` or `run_dir=...`) or, when neither is
given, from a small FFM trained in-process through the training pipeline. Its store supplies the
field sides, the catalogue (item-field values by frequency) and the queries (rows of a split).
This is the only place that wires the retrieval config to objects.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cvr.data.store import EncodedStore
from cvr.ops.manifest import ManifestError, sha256_file, write_json_atomic
from cvr.pipelines import run_folder
from cvr.pipelines.train import RUN_INFO, train
from cvr.retrieval.bench import (
    RECALL_KS,
    BenchSettings,
    IndexConfig,
    add_speedups,
    benchmark,
    best_point,
    exact_search,
    mlflow_metrics,
    pareto_plot,
    results_table,
)
from cvr.retrieval.entity import nearest_entities
from cvr.retrieval.index import (
    MipsIndex,
    available_threads,
    read_index,
    set_threads,
    write_index,
)
from cvr.retrieval.mips import (
    catalogue_items,
    generate_catalogue,
    item_vectors,
    query_vectors,
    split_fields,
    value_frequencies,
)
from cvr.tracking import mlflow_runs

log = logging.getLogger(__name__)

TRAIN_CONFIG = Path(".hydra") / "config.yaml"
RESULTS_FILE = "retrieval.json"
PLOT_FILE = "retrieval_pareto.png"


@dataclass
class SourceModel:
    """A trained model with the store and run it came from."""

    model: nn.Module
    store: EncodedStore
    checkpoint: Path
    checkpoint_sha256: str
    train_cfg: DictConfig
    run_info: dict[str, Any]


# --- the model -----------------------------------------------------------------------------------
def find_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The run's best checkpoint (the one besides last.ckpt), else last.ckpt."""
    folder = Path(run_dir) / "checkpoints"
    best = sorted(p for p in folder.glob("*.ckpt") if p.name != "last.ckpt")
    if len(best) == 1:
        return best[0]
    if (folder / "last.ckpt").is_file():
        return folder / "last.ckpt"
    raise FileNotFoundError(f"run_dir: no checkpoint under {folder}")


def load_source(checkpoint: str | os.PathLike | None, run_dir: str | os.PathLike | None):
    """Rebuild the model of a training run from its saved config and checkpoint.

    The run folder (the checkpoint's grandparent) must hold `.hydra/config.yaml`, as every
    `train.py` run does; it rebuilds the store (from the cache) and the model.
    """
    if checkpoint is not None:
        ckpt = Path(checkpoint)
        if not ckpt.is_file():
            raise FileNotFoundError(f"checkpoint: no file at {ckpt}")
        run_dir = ckpt.parent.parent
    else:
        run_dir = Path(run_dir)
        ckpt = find_checkpoint(run_dir)
    config_path = Path(run_dir) / TRAIN_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path}: missing; the checkpoint must sit in a train.py run folder "
            f"(<run>/checkpoints/*.ckpt) that has its config"
        )
    # The saved config and checkpoint are data: store and model come from closed registries.
    train_cfg = run_folder.load_run_config(run_dir)
    run_info = run_folder.read_json(Path(run_dir) / RUN_INFO)
    store = run_folder.run_store(train_cfg, str(config_path))
    trained_on = _recorded_dataset_fingerprint(train_cfg, run_info)
    if trained_on is not None and trained_on != store.fingerprint:
        raise ManifestError(
            f"{run_dir}: the model was trained on dataset {trained_on[:16]}…, but its config now "
            f"builds dataset {store.fingerprint[:16]}… (the data or its generator changed); "
            f"retrain, or retrieve without checkpoint/run_dir"
        )
    model = run_folder.run_model(train_cfg, store.cardinalities, str(config_path))
    model.load_state_dict(run_folder.checkpoint_weights(ckpt))
    return SourceModel(model.eval(), store, ckpt, sha256_file(ckpt), train_cfg, run_info)


def _recorded_dataset_fingerprint(train_cfg: DictConfig, run_info: dict) -> str | None:
    """The fingerprint of the store the run trained on, from its MLflow tags where it logged."""
    run_id = run_info.get("mlflow_run_id")
    logger = train_cfg.get("logger") or {}
    if not run_id or not logger.get("enabled"):
        log.warning("the training run has no MLflow record: cannot check its dataset fingerprint")
        return None
    try:
        tags = MlflowClient(logger.tracking_uri).get_run(run_id).data.tags
    except MlflowException as exc:
        log.warning("cannot read training run %s from MLflow (%s)", run_id, exc)
        return None
    return tags.get("dataset_fingerprint")


def train_source(cfg: DictConfig, train_dir: Path) -> Path:
    """Train in-process with conf/train.yaml plus `cfg.train.overrides`; returns its run dir.

    Logs to the same MLflow tracking URI as the retrieval run, so the retrieval run can point at
    it. The resolved config is saved where `load_source` looks for it.
    """
    overrides = [
        *cfg.train.overrides,
        f"paths.output_root={cfg.paths.output_root}",
        f"paths.output_dir={train_dir}",
        f"run_name={cfg.train.run_name}",
        f"seed={cfg.seed}",
        "print_table=false",
    ]
    if cfg.logger.get("enabled"):
        overrides += [
            "logger=mlflow",
            f"logger.tracking_uri='{cfg.logger.tracking_uri}'",
            f"logger.experiment='{cfg.logger.experiment}'",
            f"logger.artifact_root='{cfg.logger.artifact_root}'",
        ]
    else:
        overrides.append("logger=none")
    train_cfg = _compose_train(overrides, Path(cfg.paths.root_dir) / "conf")
    log.info("no checkpoint given: training %s in %s", cfg.train.run_name, train_dir)
    train(train_cfg)
    (train_dir / TRAIN_CONFIG).parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(train_cfg, train_dir / TRAIN_CONFIG, resolve=True)
    return train_dir


def _compose_train(overrides: list[str], conf_dir: Path) -> DictConfig:
    if GlobalHydra.instance().is_initialized():  # inside `python retrieve.py`
        return compose("train", overrides=overrides)
    with initialize_config_dir(config_dir=str(conf_dir.resolve()), version_base="1.3"):
        return compose("train", overrides=overrides)


# --- vectors -------------------------------------------------------------------------------------
def sample_queries(
    store: EncodedStore, query_fields: list[int], num: int, split: str, seed: int
) -> np.ndarray:
    """int32 (min(num, rows), Q): the query fields of random rows of `split`."""
    rows = store.rows(split)
    picked = np.sort(np.random.default_rng([seed, 13]).choice(rows, min(num, rows), replace=False))
    return np.asarray(store.ids(split)[picked][:, query_fields], dtype=np.int32)


def build_catalogue(cfg: DictConfig, store: EncodedStore, item_fields: list[int]) -> np.ndarray:
    """Item ids int32 (m, J): seen combinations, or `num_items` generated ones."""
    spec = cfg.catalogue
    if spec.num_items is None:
        return catalogue_items(store, item_fields, split=spec.split)
    return generate_catalogue(store, item_fields, spec.num_items, split=spec.split, seed=cfg.seed)


# --- the pipeline --------------------------------------------------------------------------------
@dataclass
class Vectors:
    """What the benchmark searches: the catalogue's item vectors and the queries' vectors."""

    item_ids: np.ndarray  # int32 (m, J)
    items: np.ndarray  # float32 (m, d)
    queries: np.ndarray  # float32 (n, d)
    query_fields: list[int]
    item_fields: list[int]
    seconds: float


def build_vectors(cfg: DictConfig, source: SourceModel) -> Vectors:
    """Catalogue and queries from the source's store, through the MIPS decomposition."""
    t0 = time.perf_counter()
    store, model = source.store, source.model
    query_fields, item_fields = split_fields(store.sides)
    item_ids = build_catalogue(cfg, store, item_fields)
    query_ids = sample_queries(store, query_fields, cfg.queries.num, cfg.queries.split, cfg.seed)
    items = item_vectors(model, item_ids, query_fields, item_fields)
    queries, _ = query_vectors(model, query_ids, query_fields, item_fields)
    seconds = time.perf_counter() - t0
    log.info(
        "%d items, %d queries, dim %d: %.1fs", len(items), len(queries), items.shape[1], seconds
    )
    return Vectors(item_ids, items, queries, query_fields, item_fields, seconds)


def retrieve(cfg: DictConfig) -> dict[str, Any]:
    """Run the benchmark; returns the results written to retrieval.json."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    threads = cfg.bench.threads or available_threads()
    set_threads(threads)
    if cfg.checkpoint is None and cfg.run_dir is None:
        source = load_source(None, train_source(cfg, output_dir / "train"))
    else:
        source = load_source(cfg.checkpoint, cfg.run_dir)
    vectors = build_vectors(cfg, source)
    provenance = {
        "checkpoint_sha256": source.checkpoint_sha256,
        "data_fingerprint": source.store.fingerprint,
        "catalogue_sha256": hashlib.sha256(vectors.item_ids.tobytes()).hexdigest(),
    }
    saved: dict[str, str] = {}

    def save(config: IndexConfig, index: MipsIndex) -> None:
        if config.name in (cfg.save_indexes or []):
            path = write_index(index, output_dir / "indexes" / config.name, provenance, True)
            # Read it back through the verifying loader: what was saved is what is served.
            read_index(path, index.dim, "inner_product", provenance)
            saved[config.name] = str(path)

    index_nodes = OmegaConf.to_container(cfg.index, resolve=True)
    configs = [IndexConfig.from_dict(name, node) for name, node in index_nodes.items()]
    settings = BenchSettings(
        timed_k=cfg.bench.timed_k,
        threads=threads,
        single_query_budget_s=cfg.bench.single_query_budget_s,
        seed=cfg.seed,
    )
    truth_ids = exact_search(vectors.items, vectors.queries, max(RECALL_KS))
    rows = benchmark(
        vectors.items, vectors.queries, configs, settings, on_built=save, truth_ids=truth_ids
    )
    if cfg.get("milvus") and cfg.milvus.enabled:
        from cvr.vectorstore.search import milvus_rows

        milvus = OmegaConf.to_container(cfg.milvus, resolve=True)
        groups = vectors.item_ids[:, 0].astype(np.int64)  # the first item field, e.g. advertiser
        rows += milvus_rows(
            vectors.items, vectors.queries, truth_ids, groups, milvus["uri"], milvus["indexes"],
            k=cfg.bench.timed_k, budget_s=milvus["single_query_budget_s"],
        )  # fmt: skip
    add_speedups(rows, cfg.bench.baseline)
    results = summarize(cfg, source, vectors, rows, truth_ids, threads)
    results["saved_indexes"] = saved
    write_json_atomic(output_dir / RESULTS_FILE, results)
    title = f"{results['source']['model']}: {results['items']:,} items, d={results['dim']}"
    plot = pareto_plot(rows, output_dir / PLOT_FILE, title=title)
    results["mlflow_run_id"] = _log_to_mlflow(
        cfg, source, results, [output_dir / RESULTS_FILE, plot]
    )
    if cfg.get("print_table", True):
        print(report(results, output_dir))
    return results


def summarize(
    cfg: DictConfig,
    source: SourceModel,
    vectors: Vectors,
    rows: list[dict[str, Any]],
    truth_ids: np.ndarray,
    threads: int,
) -> dict[str, Any]:
    """The JSON-ready results: source, sizes, every row, the best point, the entity demo."""
    entity = None
    if cfg.entity.enabled:
        entity = _entity_demo(source.model, source.store, vectors.item_fields[0], cfg)
    return {
        "source": {
            "checkpoint": str(source.checkpoint),
            "checkpoint_sha256": source.checkpoint_sha256,
            "run_id": source.run_info.get("mlflow_run_id"),
            "model": type(source.model).__name__,
            "data_fingerprint": source.store.fingerprint,
        },
        "items": len(vectors.items),
        "queries": len(vectors.queries),
        "dim": int(vectors.items.shape[1]),
        "query_fields": len(vectors.query_fields),
        "item_fields": len(vectors.item_fields),
        "threads": threads,
        "vectors_s": vectors.seconds,
        # How much the ranking depends on the query: few distinct items across all exact top-10
        # lists means the items' own terms (popularity) dominate.
        "distinct_items_in_exact_top_10": len(np.unique(truth_ids[:, :10])),
        "rows": rows,
        "best": best_point(rows, cfg.bench.target_recall_at_10),
        "entity": entity,
    }


def report(results: dict[str, Any], output_dir: Path) -> str:
    """The printed summary: the table, the best point, where things were written."""
    lines = [
        f"\nretrieval: {results['source']['model']} from {results['source']['checkpoint']}",
        f"{results['items']:,} items x {results['dim']} dims ({results['query_fields']} query x "
        f"{results['item_fields']} item fields), {results['queries']} queries, "
        f"batch threads {results['threads']}; {results['distinct_items_in_exact_top_10']} "
        f"distinct items across the exact top-10 lists",
        results_table(results["rows"]),
    ]
    best = results["best"]
    if best is not None:
        verdict = "reaches" if best["reaches_target"] else "best recall (target not reached):"
        lines.append(
            f"{best['name']} {verdict} recall@10 {best['recall_at_10']:.4f} at "
            f"{best['speedup_single']:.1f}x exact single-thread QPS"
        )
    if results.get("entity"):
        ent = results["entity"]
        lines.append(
            f"nearest values of field {ent['field']} value {ent['value']} ({ent['metric']}): "
            f"{ent['neighbours']}"
        )
    lines.append(f"results: {output_dir / RESULTS_FILE}, plot: {output_dir / PLOT_FILE}")
    if results.get("mlflow_run_id"):
        lines.append(f"MLflow run {results['mlflow_run_id']}")
    return "\n".join(lines)


def _entity_demo(model: nn.Module, store: EncodedStore, field: int, cfg: DictConfig) -> dict:
    """Neighbours of the most frequent (non-OOV) value of one item field."""
    counts = value_frequencies(store, [field])
    value = int(np.argmax(counts[1:]) + 1)
    ids, scores = nearest_entities(model, field, value, k=cfg.entity.k, metric=cfg.entity.metric)
    return {
        "field": store.field_names[field],
        "value": value,
        "metric": cfg.entity.metric,
        "neighbours": [int(i) for i in ids],
        "scores": [round(float(s), 6) for s in scores],
    }


def _log_to_mlflow(
    cfg: DictConfig, source: SourceModel, results: dict[str, Any], artifacts: list[Path]
) -> str | None:
    """A new run tagged with the source run, in the source run's tracking URI when it has one."""
    if not cfg.logger.get("enabled"):
        return None
    tracking = cfg.logger
    train_logger = source.train_cfg.get("logger") or {}
    source_run_id = source.run_info.get("mlflow_run_id")
    if source_run_id and train_logger.get("enabled"):
        tracking = train_logger
    run_id = mlflow_runs.start_run(
        tracking.tracking_uri,
        tracking.experiment,
        run_name=f"{cfg.run_name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
        tags={
            "source_run_id": source_run_id or "",
            "source_checkpoint": str(source.checkpoint),
            "checkpoint_sha256": source.checkpoint_sha256,
            "dataset_fingerprint": source.store.fingerprint,
            "git_commit": mlflow_runs.git_commit(cfg.paths.root_dir),
            "task": "retrieval",
        },
        artifact_root=tracking.get("artifact_root"),
    )
    try:
        mlflow_runs.log_config(tracking.tracking_uri, run_id, cfg)
        summary = {
            "retrieval/items": results["items"],
            "retrieval/dim": results["dim"],
            "retrieval/vectors_s": results["vectors_s"],
        }
        mlflow_runs.log_metrics(
            tracking.tracking_uri, run_id, {**summary, **mlflow_metrics(results["rows"])}
        )
        client = MlflowClient(tracking.tracking_uri)
        for path in artifacts:
            client.log_artifact(run_id, str(path))
    except BaseException:
        mlflow_runs.end_run(tracking.tracking_uri, run_id, "FAILED")
        raise
    mlflow_runs.end_run(tracking.tracking_uri, run_id, "FINISHED")
    return run_id
