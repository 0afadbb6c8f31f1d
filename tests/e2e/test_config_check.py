"""Bad config values are refused before anything is created: one line, the key, no folder."""

from __future__ import annotations

import os

import pytest

from cvr.pipelines.config_check import check_config, check_output_root
from cvr.pipelines.errors import ConfigError
from cvr.pipelines.train import train
from tests.helpers import REPO, TINY_DATA, compose_train, run_script


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.max_epochs=abc", r"trainer\.max_epochs: expected an integer >= 1, got 'abc'"),
        ("embedding.dim=-3", r"embedding\.dim: expected an integer .*got -3"),
        ("data.rows_train=2.5", r"data\.rows_train: expected an integer >= 1, got 2\.5"),
        ("datamodule.batch_size=0", r"datamodule\.batch_size: expected an integer >= 1, got 0"),
        ("trainer.limit_train_batches=1.5", r"trainer\.limit_train_batches: a fraction"),
        ("export_bundle=maybe", r"export_bundle: expected true or false, got 'maybe'"),
        ("embedding=qr embedding.operation=xor", r"embedding\.operation: expected one of"),
        ("model=lr embedding=qr", r"model=lr embedding=qr: logistic regression has no embedding"),
    ],
)
def test_bad_values_name_the_key_and_create_nothing(tmp_path, override, message):
    cfg = compose_train(tmp_path, [*TINY_DATA, *override.split()])
    with pytest.raises(ConfigError, match=message):
        check_config(cfg)
    with pytest.raises(ConfigError, match=message):
        train(cfg)  # the pipeline checks first too (API callers, sweep jobs)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_the_shipped_default_config_passes(tmp_path):
    check_config(compose_train(tmp_path, []))
    check_config(compose_train(tmp_path, ["model=lr", "embedding=full"]))


def test_an_output_root_that_is_a_file_or_read_only_is_refused(tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ConfigError, match=r"paths\.output_root: .*afile is a file"):
        check_output_root(afile)
    with pytest.raises(ConfigError, match=r"afile is a file, so .*afile/out cannot be created"):
        check_output_root(afile / "out")
    # root ignores permission bits, so the refusal is checked through os.access.
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(ConfigError, match=r"paths\.output_root: .* is not writable"):
        check_output_root(tmp_path / "new")


def test_cli_prints_one_line_and_leaves_no_run_folder_or_mlflow_run(tmp_path):
    done = run_script(["train.py", f"paths.output_root={tmp_path}", "embedding.dim=-3"], REPO)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == ["error: embedding.dim: expected an integer in [1, 65536], got -3"], lines
    assert list(tmp_path.iterdir()) == []
