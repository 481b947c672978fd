# `make demo` and `make test` each set everything up (a .venv with the CPU build of torch and
# this package) and then run the demo / the test suite. A second run installs nothing new:
# the install is redone only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel that lies on these machines' disk; override for a CUDA build, e.g.
#   make test TORCH_SPEC='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126'
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
# The optional integrations the suite tests (each of their tests skips without its package);
# `make test TEST_EXTRAS=` tests without them.
TEST_EXTRAS ?= lightning,onnx,transformers,tensorboard,structured,wandb,slurm,docs
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test study lint typecheck bench gpu-check clean install docs

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	@test -z "$(TEST_EXTRAS)" || $(BIN)/python -m pip install -q -e ".[dev,$(TEST_EXTRAS)]"
	@touch $(TEST_STAMP)

demo: $(STAMP)
	$(BIN)/sparseavg demo

# The tests run over every core (pytest-xdist), one torch thread per worker; `make test
# PYTEST_ARGS=` runs them in one process.
PYTEST_ARGS ?= -n auto
test: $(TEST_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The reproduction study: every method of its four settings over 5 seeds, then one document per
# setting group (docs/RESULTS.md, RESULTS-during-training.md, RESULTS-channels.md). Measured on
# 2 CPU cores (2026-12-04): 104 min for the two settings of RESULTS.md, about 25 min for the
# other two; resumable (finished runs under runs/study are reused, and a call that trains
# nothing rewrites the documents in under a minute). MNIST
# comes from ../shared/data where that checkout has it, else $$SPARSEAVG_DATA or a download.
STUDY_DATA := $(if $(wildcard ../shared/data/mnist),$(abspath ../shared/data),)
study: $(STAMP)
	SPARSEAVG_DATA=$${SPARSEAVG_DATA:-$(STUDY_DATA)} $(BIN)/sparseavg study

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples tools
	$(BIN)/ruff format --check src tests benchmarks examples tools

# The documentation site (MkDocs Material) into site/, warnings as errors; the configuration
# and CLI reference pages are regenerated from the code first.
docs: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[docs]"
	$(BIN)/python tools/gen_reference.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

typecheck: $(STAMP)
	$(BIN)/mypy

# Quick settings (a few minutes on 2 CPU cores); each script's --help gives its defaults.
bench: $(STAMP)
	$(BIN)/python benchmarks/masked_step.py --repeats 5
	$(BIN)/python benchmarks/attach_step.py --repeats 9
	$(BIN)/python benchmarks/engine_overhead.py --repeats 3 --samples 20000
	$(BIN)/python benchmarks/loader.py --repeats 3
	$(BIN)/python benchmarks/throughput.py --repeats 2
	$(BIN)/python benchmarks/malloc.py --repeats 5
	$(BIN)/python benchmarks/compile.py --repeats 3
	$(BIN)/python benchmarks/stacked.py --repeats 3
	$(BIN)/python benchmarks/distributed.py --repeats 1
	$(BIN)/python benchmarks/batch.py --repeats 3
	$(BIN)/python benchmarks/sparse_inference.py --repeats 3
	$(BIN)/python benchmarks/semi_structured.py --repeats 5
	$(BIN)/python benchmarks/lockstep.py --repeats 3

# On a CUDA machine (a CUDA build of torch: TORCH_SPEC above): the device tests and the GPU rows
# of the benchmarks, about 8 minutes, into benchmarks/gpu-report.md; without CUDA it says so.
gpu-check: $(TEST_STAMP)
	$(BIN)/python benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .mypy_cache
