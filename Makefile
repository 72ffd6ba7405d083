# openwan — the two quickstart commands: `make test`, `make demo`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU-only machine takes this exact torch (a CPU build lies on disk here and installs in seconds).
# On a machine with a GPU, run `make setup TORCH_SPEC=torch` (or pip install openwan) to get a CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup test lint demo clean

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

demo:
	@echo "make demo needs the bundled tiny model and the generation pipeline, which are not in this version yet."
	@echo "Today: 'make test' checks every network against diffusers; see README.md for loading released weights."
	@exit 1

clean:
	rm -rf $(VENV) build dist *.egg-info
