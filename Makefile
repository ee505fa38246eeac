# Two set-up commands for a fresh machine: `make demo` (the main job: ODE-Net training on
# mnist5k) and `make test`. `make solver-demo` runs the solver demo, `make table1` the paper's
# Table 1 (ODE-Net vs ResNet vs RK-Net, 14 epochs each, one thread: about 20 CPU minutes).
# torch is installed first, pinned (override with `make test TORCH_VERSION=...`), so pip never
# resolves torch on its own.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out/demo
# the demo's recipe; DEMO_ARGS come after it, so an option given there replaces its value
DEMO_RECIPE := --epochs 3 --lr 6e-3 --warmup-epochs 0.25 --weight-decay 5e-4 --crop-padding 2 \
	--pool max --rtol 1e-2 --atol 1e-2 --threads 1
DEMO_ARGS ?=
TABLE1_ARGS ?=
SOLVER_DEMO_ARGS ?=

.PHONY: demo solver-demo table1 test docs bench clean

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
	$(BIN)/neuralode train odenet --data mnist5k $(DEMO_RECIPE) $(DEMO_ARGS) --out $(OUT)

solver-demo: $(VENV)/.installed-test
	$(BIN)/neuralode demo --out out/solver-demo $(SOLVER_DEMO_ARGS)

table1: $(VENV)/.installed-test
	$(BIN)/neuralode experiment table1 --data mnist5k $(TABLE1_ARGS) --out out/table1

test: $(VENV)/.installed-test
	$(BIN)/ruff check src tests benchmarks docs/tutorials
	$(BIN)/ruff format --check src tests benchmarks docs/tutorials
	$(BIN)/python -m pytest -q -n 2

# The documentation site, offline, into site/; --strict fails on broken links, missing API
# references and docstring warnings (tests/test_site.py builds it too, so `make test` checks it).
docs: $(VENV)/.installed-test
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/bench_core.py

clean:
	rm -rf $(VENV) out site .pytest_cache .ruff_cache
