# cvr: `make run` trains FFM on synthetic data; `make test` runs the test suite.
# Both set up the virtual environment first if needed (CPU torch first, then the package).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup run test test-fast bench lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch first, so nothing below can pull a CUDA build.
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e ".[dev,server]"
	touch $(STAMP)

run: setup
	$(PY) train.py

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	# pytorch-fm is the peer the training bench measures against; benchmark-only, never a dependency.
	$(PY) -m pip install --quiet --no-deps torchfm
	mkdir -p outputs/bench
	$(PY) scripts/bench_train.py --out outputs/bench/train.json
	$(PY) scripts/bench_infer.py --out outputs/bench/infer.json
	# Store builds vs pyarrow's bare parse at 0.5M and 2M rows (--large adds 8M: ~2.3 GB, minutes).
	$(PY) scripts/bench_data.py --out outputs/bench/data.json
	# A tiny run's start-up: imports, phases, and the torch + Lightning floor.
	$(PY) scripts/bench_startup.py --phases --out outputs/bench/startup.json
	# The autograd backend's fused torch AdaGrad vs torch's CPU loop, ESMM at the CVR study's shape.
	$(PY) scripts/bench_optim.py --out outputs/bench/optim.json
	# One process vs two DDP processes (gloo), same rows and global batch.
	$(PY) scripts/bench_ddp.py --out outputs/bench/ddp.json
	# Predictor latency on the bundle of a 50k-row run (model-only vs raw records end to end).
	$(PY) train.py logger=none data.rows_train=50000 hydra.run.dir=outputs/bench/predictor_run
	$(PY) scripts/bench_predictor.py --bundle outputs/bench/predictor_run/bundle --out outputs/bench/predictor.json
	# Serving from Milvus vs in-process tables at the Criteo shape (publishes ~0.75M rows: 20-30 min
	# on 2 busy cores; `--reuse-publish` measures again against the last publish).
	$(PY) scripts/bench_store.py --repeats 1 --out outputs/bench/store.json

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf outputs multirun .pytest_cache
