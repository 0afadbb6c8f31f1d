"""Train a CTR/CVR model: `python train.py model=ffm embedding.dim=8 data=criteo`."""

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from cvr.pipelines.train import register_resolvers, train
from cvr.tracking.sweep import record_job_failure

register_resolvers()
log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        metrics = train(cfg)
    except Exception as error:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        # In a sweep one failed job must not stop the others: record it and go on.
        log.exception("job failed; the sweep continues")
        record_job_failure(cfg.paths.output_dir, error)
        return float("nan")
    return metrics.get("val/auc", float("nan"))


if __name__ == "__main__":
    main()
