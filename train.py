"""Train a CTR/CVR model: `python train.py model=ffm embedding.dim=8 data=criteo`."""

import hydra
from omegaconf import DictConfig

from cvr.pipelines.train import register_resolvers, train

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    metrics = train(cfg)
    return metrics.get("val/auc", float("nan"))


if __name__ == "__main__":
    main()
