# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DATA ?= data/builtin-32

.PHONY: install test test-all lint format demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m 'not gpu'

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The main job on the built-in data: prepare it once, then train with 2 Ray workers on CPU.
demo: install
	test -f $(DEMO_DATA)/manifest.json || $(BIN)/pixelrnn prepare builtin --output $(DEMO_DATA)
	$(BIN)/pixelrnn train --config experiments/demo.yaml --set data.path=$(DEMO_DATA)

bench: install
	$(BIN)/python benchmarks/model_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache
