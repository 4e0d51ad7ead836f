# Set-up is idempotent: the virtual environment is rebuilt only when pyproject.toml changes.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)

.PHONY: setup run test bench

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --progress-bar off --upgrade "pip>=24"
	$(PY) -m pip install --progress-bar off -e ".[test,cluster]"
	@rm -f $(VENV)/.installed-* && touch $@

run: setup
	$(PY) -m harness run

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/quantizer_overhead.py
	$(PY) benchmarks/grid_reuse.py
