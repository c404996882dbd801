# One entry point for people and CI. `make test` = format, lint, types and the whole suite.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python

.PHONY: setup populate test check bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

populate: setup            ## fill ./data-cache with every dataset of providers.yaml
	$(VENV)/bin/marketcache populate

test: setup                ## the whole check: format, lint, types, tests
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" scripts/check

bench: setup               ## the speed benchmarks (print ratios)
	$(PY) benchmarks/bench_io.py
	$(PY) benchmarks/bench_network.py
	$(PY) benchmarks/bench_requests.py
	$(PY) benchmarks/bench_postgres.py
	$(PY) benchmarks/bench_objects.py
	$(PY) benchmarks/bench_startup.py
	$(PY) benchmarks/bench_serve.py
	$(PY) benchmarks/bench_live.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
