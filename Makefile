# Two commands for a newcomer on a fresh machine:
#   make demo   set up .venv and run the main job on bundled data
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lossatlas-installed
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: setup demo test test-all bench images clean

IMAGES := seed-relu-plane.png seed-relu-slices.png logreg-slices.png logreg-planes.png mlp-digits-contour.png mlp-digits-3d.png \
	convexity-audit.png

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -c constraints.txt -e '.[dev]'
	$(PIP) install --no-deps -c constraints.txt curvlinops-for-pytorch  # KFAC; --no-deps: see pyproject.toml
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/lossatlas demo --out lossatlas-demo

test: $(STAMP)
	$(BIN)/python -m pytest

test-all: $(STAMP)
	$(BIN)/python -m pytest -m "slow or not slow"

# Peers are installed without their dependencies (they would pull another torch). The curvature
# benchmark's exact spectrum takes about an hour the first time (then cached); drop --no-exact for it.
bench: $(STAMP)
	$(PIP) install --no-deps loss-landscapes pyhessian
	$(BIN)/python benchmarks/run_all.py  # every benchmark, then one PASS/MISS table (log: build/bench.log)

images: $(STAMP)
	$(BIN)/lossatlas demo --out build/demo --no-progress
	mkdir -p docs/images
	cd build/demo && cp $(IMAGES) ../../docs/images/
	$(BIN)/lossatlas report logreg-bce mlp-digits --out build/report/report.html
	chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1400,2300 \
		--virtual-time-budget=8000 --user-data-dir=build/report/.chromium \
		--screenshot=docs/images/report.png file://$(CURDIR)/build/report/report.html
	$(BIN)/python -m lossatlas.studies.gallery --build build/studies --docs docs  # quick studies → docs/gallery.md

clean:
	rm -rf $(VENV) lossatlas-demo .pytest_cache
