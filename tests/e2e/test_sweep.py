"""`python train.py -m ...`: one MLflow parent run, one child per job, failures recorded."""

import math
import re

import mlflow


def runs_of(root):
    client = mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")
    experiment = client.get_experiment_by_name("cvr")
    return client.search_runs([experiment.experiment_id])


def test_two_by_two_sweep_makes_one_parent_and_four_children(tiny_sweeps):
    returncode, _, stderr, root = tiny_sweeps("two_by_two")
    assert returncode == 0, stderr[-3000:]
    runs = runs_of(root)
    parents = [r for r in runs if r.data.tags.get("sweep_role") == "parent"]
    children = [r for r in runs if r.data.tags.get("sweep_role") == "child"]
    assert len(parents) == 1 and len(children) == 4 and len(runs) == 5
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    combos = set()
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["sweep_id"] == parent.data.tags["sweep_id"]
        assert child.info.status == "FINISHED"
        for name in (
            "test/auc",
            "test/logloss",
            "test/ne",
            "test/calibration",
            "eff/params",
            "eff/embedding_bytes",
            "eff/checkpoint_bytes",
            "eff/latency_b1_p50_us",
            "eff/latency_b1024_p99_us",
            "eff/throughput_b4096_per_s",
            "eff/train_samples_per_s",
        ):
            assert math.isfinite(child.data.metrics[name])
        combos.add((child.data.params["model._target_"], child.data.params["embedding.dim"]))
    assert len(combos) == 4


def test_failed_job_is_marked_and_the_sweep_goes_on(tiny_sweeps):
    returncode, stdout, stderr, root = tiny_sweeps("one_fails")
    runs = runs_of(root)
    children = {
        r.data.params.get("embedding.dim"): r
        for r in runs
        if r.data.tags.get("sweep_role") == "child"
    }
    # The bad value is refused before the job creates anything: no MLflow run of its own.
    assert "0" not in children
    assert children["2"].info.status == "FINISHED"
    assert "sweep finished with failed jobs" in stdout + stderr
    # A sweep with failed jobs exits non-zero and names each one with its reason.
    assert returncode == 1
    assert "1 of 2 jobs failed" in stderr
    assert re.search(
        r"job 0 \[.*embedding\.dim=0.*\]: ConfigError: embedding\.dim: expected an integer",
        stderr,
    ), stderr[-2000:]
