# Two commands on a fresh machine (Python 3.11 + pip + Java):
#   make repro   set up .venv and run the whole pipeline (`dvc repro` on params.yaml)
#   make test    set up .venv and run the test suite (slow end-to-end tests included; scale-out tests apart, below)
# and for development: make lint (ruff + mypy, what CI runs first), make deps (dvc.yaml's code deps from the imports);
# for scale-out: make test-scale (tests that start and stop process groups: DDP with 2 processes, ~2 min; a Ray head and
# Ray's fault tolerance (killed trials, an interrupted search), ~2 min; cluster mode end to end, a Ray head + an MLflow
# server + DDP stages, ~5 min; CI runs it after make test), make cluster-demo (cluster mode for a person, printing the
# MLflow UI's address)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# make test runs in this many pytest-xdist processes, one test module each at a time (module fixtures build once); the
# two whole-pipeline modules start first, one per process (tests/conftest.py), so the rest fills in around them. Each
# process and the stages it starts compute on one thread: two processes of two threads each on 2 cores took 12:55,
# twice the 6:50 of one thread each (the tiny models' ops gain nothing from a second thread that is not free)
TEST_WORKERS ?= 2
TEST_THREADS ?= 1
export DVC_NO_ANALYTICS := 1
# Stage commands in dvc.yaml call `python`: it must be the venv's, whatever the caller's shell has first
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup repro test test-fast test-scale lint format deps mlflow-ui cluster-demo clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and by exact version: anything looser would pull a multi-GB CUDA build on a CPU machine
	$(BIN)/python -m pip install -q --no-compile torch==2.13.0
	$(BIN)/python -m pip install -q --no-compile -c constraints.txt -e '.[dev]'
	# pip writes bytecode one file at a time; compileall writes the same files on every core at once (fresh venv:
	# 94 s -> 68 s in all). Bytecode is not skipped: where PYTHONDONTWRITEBYTECODE is set, as on our dev machine,
	# every process would compile torch & co. from source on each import (make test took 11:25 instead of 8:47).
	# compileall's only errors are py3.12-only files that pip skips too, hence `|| true`.
	$(BIN)/python -m compileall -q -j 0 $$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') \
		> /dev/null || true
	touch $(STAMP)

setup: $(STAMP)

repro: setup
	$(BIN)/dvc repro

test: setup
	OMP_NUM_THREADS=$(TEST_THREADS) $(BIN)/python -m pytest -q -m "not scale" -n $(TEST_WORKERS) --dist loadfile \
		--no-loadscope-reorder

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not scale"

test-scale: setup
	$(BIN)/python -m pytest -q -m scale

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

deps: setup
	$(BIN)/python -m tests.stages.import_closure --write

mlflow-ui: setup
	$(BIN)/python experiments/mlflow_ui.py --port 5000

cluster-demo: setup
	$(BIN)/python experiments/cluster_demo.py --port 5000

clean:
	rm -rf $(VENV) checkpoints lightning_logs
