# One command runs everything CI runs: `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install test lint docs browser test-slow bench bench-peers bench-million clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q -U pip setuptools  # a new venv's setuptools has known vulnerabilities
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# The dependency audit fails on a known vulnerability; an unreachable vulnerability service only
# warns (CAIRN_AUDIT_STRICT=1 makes that fail too): see scripts/audit_deps.py.
lint: install
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts
	$(BIN)/mypy
	$(BIN)/mypy --strict scripts
	$(BIN)/python scripts/audit_deps.py

# The manual (docs/) as a static site in site/; strict: a warning (a broken link) fails it.
# (Not --quiet: it hides the warnings, and strict mode then has none to count.)
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The web UI tests drive Debian's chromium (tests/conftest.py: a missing browser fails them):
# installed here when it is not there yet (CI runs as root on a fresh machine), else nothing.
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser:
	@test -x $(CHROMIUM) || { echo "installing Debian's chromium for the browser tests"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@test -x $(CHROMIUM)

# The whole suite less the long soak/fuzz runs (a bounded, seeded slice of those still runs).
test: lint docs browser
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

# Everything, including the long runs.
test-slow: install browser
	$(BIN)/pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/run_all.py

# Cairn beside ChromaDB, exact numpy and the model alone at 10k and 100k, with issue 21's targets
# as ratios of the run (ChromaDB goes into its own venv, bench/.peers/, made from PyPI on first use).
bench-peers: install
	$(BIN)/python bench/bench_peers.py

# Cairn at 1M memories (the 100k real ones + 900k synthetic near copies) against exact numpy:
# import with vectors, cold start, recall, peak RSS. The built store is cached in bench/.cache/.
# `make bench-million MILLION_SIZE=200000` for a quicker check.
MILLION_SIZE ?= 1000000
bench-million: install
	$(BIN)/python bench/bench_million.py --size $(MILLION_SIZE)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site
