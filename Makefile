# openwan — the two quickstart commands: `make test`, `make demo`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU-only machine takes this exact torch (a CPU build lies on disk here and installs in seconds).
# On a machine with a GPU, run `make setup TORCH_SPEC=torch` (or pip install openwan) to get a CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup test lint demo demo-model clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest -q -p no:cacheprovider

lint: setup
	$(PY) -m ruff check src tests benchmarks

demo: setup
	$(PY) -m openwan generate --prompt "a red circle moving to the right" --save-file demo.mp4 --strip demo.png
	@echo "demo video: $(CURDIR)/demo.mp4   frames: $(CURDIR)/demo.png"

demo-model: setup
	bash recipes/demo_model.sh runs/demo-model

clean:
	rm -rf $(VENV) build dist *.egg-info
