# The README's set-up. `make test` and `make demo` work on a fresh machine with Python 3.11.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test test-slow demo toy-models bench clean-venv

$(PY):
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

# Re-installs when pyproject.toml changes. torch resolves to 2.14.1 with torchvision 0.29.1.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -e ".[dev,demo,notebooks]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

# the tests marked slow (kept out of `make test`)
test-slow: $(STAMP)
	$(PY) -m pytest -m slow || [ $$? -eq 5 ]  # exit 5: no test is marked slow

demo: $(STAMP)
	$(VENV)/bin/piti info
	$(VENV)/bin/piti synth --out out/demo --num 8 --size 256 --seed 0
	@echo "demo: synthetic scenes written to out/demo"

# Retrains every embedded toy model from scratch (hours on a 2-core CPU; resumable), ships them to
# checkpoints/toy/ and runs the alignment check: scripts/toy_models.sh (its settings are listed there).
toy-models: $(STAMP)
	PY=$(PY) bash scripts/toy_models.sh

bench: $(STAMP)
	$(PY) benchmarks/sampling.py

clean-venv:
	rm -rf $(VENV)
