# The two set-up commands: `make train` and `make test` create the virtual
# environment on first use (python3 -m venv + pip install -e '.[dev]').
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# The stamp names this checkout, so a venv shared between clones (CI's cache)
# re-installs the editable package when it is used from a new folder.
STAMP := $(VENV)/.installed-$(shell printf '%s' "$(CURDIR)" | cksum | cut -d' ' -f1)
ARGS ?=

.PHONY: train test lint bench venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/gankit train --config configs/mlp-mnist.yaml $(ARGS)

test: $(STAMP) lint
	$(BIN)/python -m pytest $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

bench: $(STAMP)
	$(BIN)/python bench/throughput.py
