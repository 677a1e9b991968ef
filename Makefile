# The README's set-up. `make test` and `make demo` work on a fresh machine with Python 3.10 or later.
# PYTHON: the first of these found (or set PYTHON=/path/to/python3.x).
ifeq ($(origin PYTHON),undefined)
PYTHON := $(firstword $(foreach p,python3.11 python3.12 python3.13 python3.10 python3,\
            $(if $(shell command -v $(p) >/dev/null 2>&1 && $(p) -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
            2>/dev/null && echo ok),$(p))))
endif
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test lint test-slow demo translate toy-models bench lab clean-venv

$(PY):
	@[ -n "$(PYTHON)" ] || { echo "make: no Python 3.10 or later found; set PYTHON=/path/to/python3"; exit 1; }
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found; set PYTHON=/path/to/python3"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

# Re-installs when pyproject.toml changes. torch resolves to 2.14.1 with torchvision 0.29.1.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -e ".[dev,demo,notebooks]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP) lint
	$(PY) -m pytest

# ruff: lint and format check (its settings are in pyproject.toml)
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# the tests marked slow (kept out of `make test`)
test-slow: $(STAMP)
	$(PY) -m pytest -m slow || [ $$? -eq 5 ]  # exit 5: no test is marked slow

# The app in the browser on the embedded toy models (demo/app.py); HOST and PORT as gradio's variables.
HOST ?= 127.0.0.1
PORT ?= 7860
demo: $(STAMP)
	@echo "demo: the app starts at http://$(HOST):$(PORT)/ (open it in a browser; Ctrl-C stops it)"
	GRADIO_SERVER_NAME=$(HOST) GRADIO_SERVER_PORT=$(PORT) $(PY) demo/app.py

# Batch translation on the embedded toy models: three held-out synthetic scenes (world seed 7; the models
# train on seed 0) translated from their label map, sketch and depth map, two samples each. Without the
# model files in checkpoints/toy/, it draws the scenes and says so.
translate: $(STAMP)
	$(VENV)/bin/piti info
	$(VENV)/bin/piti synth --out out/demo/scenes --num 3 --size 128 --seed 7 --quiet
	@if [ ! -f checkpoints/toy/piti-toy-mask-base.safetensors ]; then \
	  echo "translate: scenes in out/demo/scenes; checkpoints/toy/piti-toy-*.safetensors are missing (make toy-models), so nothing was translated"; \
	  exit 0; \
	fi; \
	for i in 000000 000001 000002; do \
	  $(VENV)/bin/piti sample --task mask --cond out/demo/scenes/colors/$$i.png --out out/demo/mask-$$i --num 2 --no-progress && \
	  $(VENV)/bin/piti sample --task sketch --cond out/demo/scenes/sketches/$$i.png --out out/demo/sketch-$$i --num 2 --no-progress && \
	  $(VENV)/bin/piti sample --task depth --cond out/demo/scenes/depth/$$i.png --out out/demo/depth-$$i --num 2 --no-progress \
	  || exit 1; \
	done; \
	echo "translate: conditions in out/demo/scenes, translations in out/demo/{mask,sketch,depth}-*/ (real photos: out/demo/scenes/images)"

# Retrains every embedded toy model from scratch (hours on a 2-core CPU; resumable), ships them to
# checkpoints/toy/ and runs the alignment check: scripts/toy_models.sh (its settings are listed there).
toy-models: $(STAMP)
	PY=$(PY) bash scripts/toy_models.sh

bench: $(STAMP)
	$(PY) benchmarks/sampling.py

# JupyterLab on the numbered notebooks (notebooks/00_quickstart.ipynb ...)
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

clean-venv:
	rm -rf $(VENV)
