# Set-up is idempotent: the virtual environment is rebuilt only when pyproject.toml changes.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)
DETSEG_STAMP := $(VENV)/.detseg-$(shell cat pyproject.toml scripts/install_detseg.sh | sha256sum | cut -c1-12)

# Tests whose values depend on floating-point rounding, run on torch's generic CPU kernels in CI:
# what another CPU's rounding gives (ATEN_CPU_CAPABILITY switches the kernels, as a different CPU does).
NUMERICS_TESTS := tests/harness/test_repq_parity.py tests/harness/test_fake_quant.py tests/harness/test_learnable.py tests/harness/test_quantizer.py \
                  tests/harness/test_fused.py tests/tasks/test_digits.py tests/methods/test_psaq.py \
                  tests/harness/test_psaq_parity.py tests/harness/test_ptq4vit_parity.py

.PHONY: setup setup-detseg run test test-generic-cpu bench

setup: $(STAMP)

# Optional: the COCO / ADE20K tasks (mmcv 2.1.0 built once, ~12 min on 2 cores, then cached outside the repo).
setup-detseg: $(DETSEG_STAMP)

$(DETSEG_STAMP): $(STAMP) scripts/install_detseg.sh
	PYTHON=$(PY) bash scripts/install_detseg.sh
	@rm -f $(VENV)/.detseg-* && touch $@

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --progress-bar off --upgrade "pip>=24"
	$(PY) -m pip install --progress-bar off -e ".[test,cluster,deploy]"
	@rm -f $(VENV)/.installed-* && touch $@

run: setup
	$(PY) -m harness run

test: setup
	$(PY) -m pytest -q

test-generic-cpu: setup
	ATEN_CPU_CAPABILITY=default $(PY) -m pytest -q $(NUMERICS_TESTS)

bench: setup
	$(PY) benchmarks/quantizer_overhead.py
	$(PY) benchmarks/grid_reuse.py
