# `make demo` and `make test` set up what they need: a virtual environment in .venv with the
# package, its dev tools, and the CPU build of torch (pinned: a plain `torch` pulls CUDA builds).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup test lint demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]" "$(TORCH)"
	touch $(STAMP)

# lint-imports: the layering of docs/ARCHITECTURE.md (contracts in pyproject.toml).
lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

# Learned outcomes depend on the CPU's float kernels: the discovery tests run again under
# torch's portable kernels, so a result that holds only on this machine's shows here.
test: lint
	$(BIN)/python -m pytest -q
	ATEN_CPU_CAPABILITY=default $(BIN)/python -m pytest -q tests/test_discover.py

demo: setup
	$(BIN)/safeseek demo

bench: setup
	$(BIN)/python benchmarks/step_overhead.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
