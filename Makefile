# zsad: `make book` sets up and builds the study; `make test` sets up and runs every test.
.DEFAULT_GOAL := help
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.zsad-installed
# llama.cpp's default native build crashes on these CPUs (environment notes); pip's wheel cache ignores CMAKE_ARGS.
export CMAKE_ARGS := -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF
export HF_HUB_OFFLINE := 1
export PYDEVD_DISABLE_FILE_VALIDATION := 1
NOTEBOOKS := $(sort $(wildcard notebooks/t*.ipynb))

.PHONY: help env test book notebooks data browser bench prompts-check clean-cache

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $@

env: $(STAMP) ## create .venv and install the pinned environment (idempotent: seconds when nothing changed)

data: $(STAMP) ## generate the seeded synthetic dataset under data/synthetic (once)
	@test -f data/synthetic/README.txt || $(PY) -m zsad data synth --out data/synthetic --seed 0

browser: ## best effort: install Debian's Chromium for the book's browser test (root only; the test skips without it)
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1; } || \
	  echo "Chromium not installed: the browser check of the book will be skipped"

test: $(STAMP) data browser ## run the whole test suite (unit tests, the book build, nbval on every notebook)
	$(PY) -m pytest

notebooks: $(STAMP) data ## execute every notebook in place with its default parameters (papermill)
	@for nb in $(NOTEBOOKS); do \
	  echo "== papermill $$nb"; \
	  $(PY) -m papermill --cwd notebooks --progress-bar "$$nb" "$$nb" || { echo "FAILED: $$nb (see the failing cell above)"; exit 1; }; \
	done

book: notebooks ## set up, run the default study job, build the book offline, print where it is
	$(VENV)/bin/jupyter-book build . -W -n --keep-going
	@echo "Book: $(CURDIR)/_build/html/index.html"

bench: $(STAMP) ## run the quick benchmarks by hand (minutes; figures go into benchmarks/README.md)
	$(PY) benchmarks/bench_metrics.py
	$(PY) benchmarks/bench_fade_speed.py

prompts-check: $(STAMP) ## regenerate every committed prompt ensemble and fail if any byte differs (~30 min)
	$(PY) -m zsad prompts check

clean-cache: ## remove generated data and caches (results/ and prompts/ are kept)
	rm -rf data/synthetic cache _build
