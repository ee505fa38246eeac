# Two set-up commands for a fresh machine: `make demo` (the main job) and `make test`.
# torch is installed first, pinned (override with `make test TORCH_VERSION=...`), so pip never
# resolves torch on its own.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out/demo

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.torch-$(TORCH_VERSION): | $(BIN)/python
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.torch-$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e ".[test,data]"
	touch $@

$(VENV)/.installed-bench: pyproject.toml $(VENV)/.torch-$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e ".[test,data,bench]"
	touch $@

demo: $(VENV)/.installed-test
	$(BIN)/neuralode demo --out $(OUT)

test: $(VENV)/.installed-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/bench_core.py

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
