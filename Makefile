# mamlrun: `make help` lists the targets. Everything installs into .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.mamlrun-installed
# W&B never needs an account here: runs are written offline unless WANDB_MODE says otherwise.
export WANDB_MODE ?= offline

.DEFAULT_GOAL := help
.PHONY: help install run test test-fast lint format bench clean

help: ## show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt scripts/install_learn2learn.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip wheel "setuptools<81"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	scripts/install_learn2learn.sh $(PY)
	touch $(STAMP)

install: $(STAMP) ## create .venv and install mamlrun with its dev extras (torch pinned by constraints.txt)

run: install ## train MAML on the embedded defaults (sinusoid, the paper's setting), then meta-test
	$(BIN)/mamlrun train

# pytest-xdist workers: one per core (`make test TEST_WORKERS=0` runs it in this process, without workers).
TEST_WORKERS ?= auto

test: install ## run the whole test suite on every core (what CI runs)
	$(BIN)/pytest -q -n $(TEST_WORKERS)

test-fast: install ## the tests not marked slow
	$(BIN)/pytest -q -n $(TEST_WORKERS) -m "not slow"

lint: install ## ruff check and format check
	$(BIN)/ruff check mamlrun tests scripts
	$(BIN)/ruff format --check mamlrun tests scripts

format: install ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix mamlrun tests scripts
	$(BIN)/ruff format mamlrun tests scripts

bench: install ## speed and memory benchmarks: vs learn2learn, memory=recompute, RL sampling, the RL baseline, load and sweeps
	$(PY) scripts/bench.py
	$(PY) scripts/bench_memory.py
	$(PY) scripts/bench_sampling.py
	$(PY) scripts/bench_sampling.py --env metaworld
	$(PY) scripts/bench_baseline.py
	$(PY) scripts/bench_scaling.py
	$(PY) scripts/bench_torchrun.py

clean: ## remove run outputs and caches (keeps .venv)
	rm -rf outputs multirun wandb .pytest_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +
