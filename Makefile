PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
# torch 2.13.0 first: a CPU build of exactly that release lies on disk here, and it keeps pip from
# fetching a CUDA build when the train extra is resolved.
TORCH ?= torch==2.13.0

.PHONY: install run test lint loadtest bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "ebr needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[train,loadtest,dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/ebr demo
	EBR_HOST=$(HOST) EBR_PORT=$(PORT) $(BIN)/ebr serve

test: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/pytest -q

# A bounded headless locust run against a server of its own on 127.0.0.1; see loadtest/run.py.
# The p99 bound is loose because locust, the server and whatever else runs share this machine's CPUs.
SCENARIO ?= swap
LOADTEST_SECONDS ?= 25
LOADTEST_MAX_P99_MS ?= 1000

loadtest: $(STAMP)
	$(BIN)/ebr demo
	$(BIN)/python -m loadtest.run --scenario $(SCENARIO) --seconds $(LOADTEST_SECONDS) \
		-- --max-p99-ms $(LOADTEST_MAX_P99_MS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf .ebr .pytest_cache .mypy_cache .ruff_cache
