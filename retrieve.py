"""Retrieval benchmark over a trained model's vectors: `python retrieve.py [run_dir=...]`."""

import hydra
from omegaconf import DictConfig

from cvr.pipelines.retrieve import retrieve
from cvr.pipelines.train import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="retrieve")
def main(cfg: DictConfig) -> float:
    results = retrieve(cfg)
    best = results["best"]
    return best["recall_at_10"] if best else float("nan")


if __name__ == "__main__":
    main()
