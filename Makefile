# openwan — the two quickstart commands: `make test`, `make demo`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU-only machine takes this exact torch (a CPU build lies on disk here and installs in seconds).
# On a machine with a GPU, run `make setup TORCH_SPEC=torch` (or pip install openwan) to get a CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup test test-all test-gpu lint demo demo-model stream-student clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

# Test tiers (markers in pyproject.toml). pytest exits non-zero (5) when a tier selects no test, so none passes empty.
#   make test      ruff + the default tier: CPU unit and parity tests, minutes on 2 cores
#   make test-all  ruff + every test: adds @slow (torchrun launches, SIGKILL-resume, the bundled model's evaluation);
#                  @gpu tests run where CUDA is present and are reported as skipped elsewhere
#   make test-gpu  the @gpu tests alone; refuses to run without CUDA (setup with TORCH_SPEC=torch there)
PYTEST := $(PY) -m pytest -q -p no:cacheprovider

test: lint
	$(PYTEST) -m "not slow and not gpu"

test-all: lint
	$(PYTEST)

test-gpu: setup
	@$(PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'make test-gpu needs a CUDA device and a CUDA build of torch (make setup TORCH_SPEC=torch); torch.cuda.is_available() is False here.')"
	$(PYTEST) -m gpu

lint: setup
	$(PY) -m ruff check src tests benchmarks

demo: setup
	$(PY) -m openwan generate --prompt "a red circle moving to the right" --save-file demo.mp4 --strip demo.png
	@echo "demo video: $(CURDIR)/demo.mp4   frames: $(CURDIR)/demo.png"

demo-model: setup
	bash recipes/demo_model.sh runs/demo-model

stream-student: setup
	bash recipes/stream_student.sh runs/stream-student

clean:
	rm -rf $(VENV) build dist *.egg-info
