# Set-up is idempotent: a virtual environment is rebuilt only when pyproject.toml or its constraints change.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# pyproject.toml admits a range of torch; set-up installs the tested pair, so `make run` reproduces.
CONSTRAINTS := constraints/torch2.14.txt
SETUP_EXTRAS := test,cluster,deploy
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(CONSTRAINTS) | sha256sum | cut -c1-12)
DETSEG_STAMP := $(VENV)/.detseg-$(shell cat pyproject.toml $(CONSTRAINTS) scripts/install_detseg.sh | sha256sum | cut -c1-12)
# The oldest torch of the range, in a venv of its own with the test extra only: its tests and grid need
# neither cluster, deploy nor detseg (whose mmcv is built per torch version).
OLDEST_VENV := .venv-torch2.11
OLDEST_CONSTRAINTS := constraints/torch2.11.txt
OLDEST_STAMP := $(OLDEST_VENV)/.installed-$(shell cat pyproject.toml $(OLDEST_CONSTRAINTS) | sha256sum | cut -c1-12)

# Tests whose values depend on floating-point rounding, run on torch's generic CPU kernels in CI:
# what another CPU's rounding gives (ATEN_CPU_CAPABILITY switches the kernels, as a different CPU does).
NUMERICS_TESTS := tests/harness/test_repq_parity.py tests/harness/test_fake_quant.py tests/harness/test_learnable.py tests/harness/test_quantizer.py \
                  tests/harness/test_fused.py tests/tasks/test_digits.py tests/methods/test_psaq.py \
                  tests/harness/test_psaq_parity.py tests/harness/test_ptq4vit_parity.py tests/methods/test_maskaq.py \
                  tests/methods/test_lsq_kd.py tests/harness/test_adalog_parity.py tests/harness/test_aphq_parity.py \
                  tests/methods/test_aphq_fimaq.py

.PHONY: setup setup-detseg run test test-generic-cpu test-oldest-torch bench

# $(call venv_install,VENV,CONSTRAINTS,EXTRAS): the project and EXTRAS into VENV (made once) under CONSTRAINTS.
define venv_install
	@test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --progress-bar off --upgrade "pip>=24"
	$(1)/bin/python -m pip install --progress-bar off -c $(2) -e ".[$(3)]"
	@rm -f $(1)/.installed-* && touch $@
endef

setup: $(STAMP)

# Optional: the COCO / ADE20K tasks (mmcv 2.1.0 built once, ~12 min on 2 cores, then cached outside the repo).
setup-detseg: $(DETSEG_STAMP)

$(DETSEG_STAMP): $(STAMP) scripts/install_detseg.sh
	PYTHON=$(PY) CONSTRAINTS=$(CONSTRAINTS) bash scripts/install_detseg.sh
	@rm -f $(VENV)/.detseg-* && touch $@

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(call venv_install,$(VENV),$(CONSTRAINTS),$(SETUP_EXTRAS))

$(OLDEST_STAMP): pyproject.toml $(OLDEST_CONSTRAINTS)
	$(call venv_install,$(OLDEST_VENV),$(OLDEST_CONSTRAINTS),test)

run: setup
	$(PY) -m harness run

test: setup
	$(PY) -m pytest -q

test-generic-cpu: setup
	ATEN_CPU_CAPABILITY=default $(PY) -m pytest -q $(NUMERICS_TESTS)

# The numerics-sensitive tests and a digits grid (real and noise, 12 cells, into a throw-away folder; a failed
# cell exits 1) on the oldest torch: the min-max path end to end, in a minute rather than the default grid's ten.
test-oldest-torch: $(OLDEST_STAMP)
	$(OLDEST_VENV)/bin/python -m pytest -q $(NUMERICS_TESTS)
	out=$$(mktemp -d) && trap 'rm -rf "$$out"' EXIT && \
	    $(OLDEST_VENV)/bin/python -m harness run --methods real,noise --bits w8a8,w4a4,w4a3 --results "$$out" \
	        --no-report --no-progress

bench: setup
	$(PY) benchmarks/quantizer_overhead.py
	$(PY) benchmarks/grid_reuse.py
