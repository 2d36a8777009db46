# The two set-up commands: `make train` and `make test` create the virtual
# environment on first use (python3 -m venv + pip install -e '.[dev]').
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# The stamp names this checkout, so a venv shared between clones (CI's cache)
# re-installs the editable package when it is used from a new folder.
STAMP := $(VENV)/.installed-$(shell printf '%s' "$(CURDIR)" | cksum | cut -d' ' -f1)
ARGS ?=
# pytest-xdist workers: one a core, at most 4 (each test file runs whole in one); 0: none
WORKERS ?= $(shell $(PYTHON) -c 'import os; print(min(4, len(os.sched_getaffinity(0))))')

.PHONY: train test lint bench venv browser

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/gankit train --config mlp-mnist $(ARGS)

test: $(STAMP) lint browser
	$(BIN)/python -m pytest -n $(WORKERS) --dist loadfile $(ARGS)

# tests/test_report.py opens reports in Debian's headless Chromium (Playwright drives the
# system browser: nothing is downloaded); without it those tests skip, saying why.
browser:
	@command -v chromium >/dev/null || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) \
	      || echo "note: installing chromium failed: the browser tests will skip"; \
	  else \
	    echo "note: no chromium (apt-get install chromium, as root): the browser tests will skip"; \
	  fi; }

lint: $(STAMP)
	$(BIN)/ruff check src tests bench docs

bench: $(STAMP)
	$(BIN)/python bench/throughput.py
