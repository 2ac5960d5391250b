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
# Each chapter's source is notebooks/tNN_<name>.md (MyST markdown, jupytext md:myst); its paired .ipynb is the
# executed copy that the book renders and nbval checks. One chapter: make notebooks NOTEBOOKS=notebooks/t06_cheung.md
NOTEBOOKS ?= $(sort $(wildcard notebooks/t*.md))

.PHONY: help env test book notebooks data browser bench prompts-check clean-cache study

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

test: $(STAMP) data browser ## ruff, then the whole test suite (unit tests, the book build, nbval on every notebook)
	$(PY) -m ruff check zsad tests benchmarks
	$(PY) -m pytest

notebooks: $(STAMP) data ## write each notebooks/*.md source into its .ipynb and execute that in place (papermill)
	@for src in $(NOTEBOOKS); do \
	  md="$${src%.*}.md"; nb="$${src%.*}.ipynb"; \
	  echo "== papermill $$md -> $$nb"; \
	  $(PY) -m zsad.notebook sync "$$md" >/dev/null || { echo "FAILED: $$md (not written into $$nb)"; exit 1; }; \
	  $(PY) -m papermill --cwd notebooks --progress-bar "$$nb" "$$nb" || { echo "FAILED: $$nb (see the failing cell above)"; exit 1; }; \
	  $(PY) -m zsad.notebook normalise "$$nb" >/dev/null; \
	done

book: notebooks ## set up, run the default study job, build the book offline, print where it is
	$(VENV)/bin/jupyter-book build . -W -n --keep-going
	@echo "Book: $(CURDIR)/_build/html/index.html"

study: $(STAMP) ## the papers' study: make study CHECKPOINT=... MVTEC_ROOT=... VISA_ROOT=... [CNN_CHECKPOINT=...] [DETECTOR=...]
	$(PY) -m zsad study run --checkpoint "$(CHECKPOINT)" --mvtec-root "$(MVTEC_ROOT)" --visa-root "$(VISA_ROOT)" \
	  --cnn-checkpoint "$(CNN_CHECKPOINT)" --detector "$(DETECTOR)"

bench: $(STAMP) ## run the quick benchmarks by hand (minutes; figures go into benchmarks/README.md)
	$(PY) benchmarks/bench_metrics.py
	$(PY) benchmarks/bench_fade_speed.py

prompts-check: $(STAMP) ## regenerate every committed prompt ensemble and fail if any byte differs (~30 min)
	$(PY) -m zsad prompts check

clean-cache: ## remove generated data and caches (results/ and prompts/ are kept)
	rm -rf data/synthetic cache _build
