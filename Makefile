# Two commands do everything on a fresh machine (each creates and reuses .venv):
#   make run    the whole pipeline on the embedded default config (config/config.yaml)
#   make test   the test suite
# CPU machines get torch==2.13.0; GPU users pass a CUDA build, e.g.
#   make run TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"

PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
# pytest-xdist workers of `make test`: the end-to-end tests mostly wait on subprocesses and
# SLURM polling, so two workers overlap them on two cores
TEST_WORKERS ?= 2
VENV := .venv
STAMP := $(VENV)/.installed
# The torch spec of the installed build, rewritten (so newer than the stamps) only when
# TORCH_SPEC differs: `make run TORCH_SPEC=...` after a CPU install replaces the CPU build.
TORCH_SPEC_FILE := $(VENV)/.torch-spec
TORCH_STAMP := $(VENV)/.torch-installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

$(shell mkdir -p $(VENV) && { [ "$$(cat $(TORCH_SPEC_FILE) 2>/dev/null)" = '$(TORCH_SPEC)' ] || printf '%s' '$(TORCH_SPEC)' > $(TORCH_SPEC_FILE); })

.PHONY: run test lint

$(TORCH_STAMP): $(TORCH_SPEC_FILE)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	# torch first, pinned: any other spec pulls gigabytes of CUDA wheels on CPU machines; a
	# changed spec removes the installed build (pip would keep it as satisfying torch==X)
	$(VENV)/bin/python -m pip uninstall --quiet --yes torch
	$(VENV)/bin/python -m pip install --quiet $(TORCH_SPEC)
	touch $(TORCH_STAMP)

$(STAMP): pyproject.toml $(TORCH_STAMP)
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/snakemake $(SNAKEMAKE_ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/snakefmt --check Snakefile workflow
	$(VENV)/bin/snakemake --lint
