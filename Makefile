# Two commands for a newcomer on a fresh machine:
#   make demo   set up .venv and run the main job on bundled data
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lossatlas-installed
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: setup demo test test-all bench images clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/lossatlas demo --out lossatlas-demo

test: $(STAMP)
	$(BIN)/python -m pytest

test-all: $(STAMP)
	$(BIN)/python -m pytest -m "slow or not slow"

bench: $(STAMP)
	$(PIP) install --no-deps loss-landscapes pyhessian
	$(BIN)/python benchmarks/bench_surface.py

clean:
	rm -rf $(VENV) lossatlas-demo .pytest_cache
