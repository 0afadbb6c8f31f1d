"""Train a CTR/CVR model: `python train.py model=ffm embedding.dim=8 data=criteo`."""

import logging
import sys

from cvr.startup import (
    exit_without_teardown,
    freeze_before_exit,
    imports_without_gc,
    torchmetrics_without_scipy_or_matplotlib,
)
from cvr.tracking.tracker import prestart

if __name__ == "__main__":  # (not for `import train`: a test or notebook that trains calls train())
    # MLflow's import and store open run in a tracking process meanwhile (cvr.tracking.tracker).
    prestart(sys.argv[1:])
# torch + Lightning: ~400k objects the collector would walk; scipy and pyplot, which nothing
# here calls
with imports_without_gc(), torchmetrics_without_scipy_or_matplotlib():  # (cvr/startup.py)
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import DictConfig

    from cvr.pipelines.errors import one_line
    from cvr.pipelines.run_lifecycle import RunKilled
    from cvr.pipelines.train import register_resolvers, train
    from cvr.tracking.sweep import record_job_failure

register_resolvers()
log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        metrics = train(cfg)
    except RunKilled as stop:
        print(f"train: {stop}; the MLflow run is marked KILLED", file=sys.stderr)
        sys.exit(128 + stop.signum)
    except Exception as error:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            message = one_line(error)  # bad input or a full disk: one line, no traceback
            if message is not None:
                print(message, file=sys.stderr)
                sys.exit(2)
            raise
        # In a sweep one failed job must not stop the others: record it and go on.
        log.exception("job failed; the sweep continues")
        record_job_failure(cfg.paths.output_dir, error)
        return float("nan")
    return metrics.get("val/auc", float("nan"))


if __name__ == "__main__":
    try:
        main()
    finally:
        freeze_before_exit()  # interpreter teardown need not walk every module's objects again
    exit_without_teardown(0)  # a run that returned: its files and MLflow run are complete
