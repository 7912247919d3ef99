# Two entry points for a fresh machine: `make demo` and `make test`. Both are idempotent.
# Without make: pip install -e ".[fiftyone,dev]" (docs/development.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export FIFTYONE_DO_NOT_TRACK := true
export FIFTYONE_DATABASE_VALIDATION := false

.PHONY: install demo test test-fast lint format app bench-speed bench-accuracy clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt scripts/install_system.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c requirements/constraints.txt -e ".[fiftyone,dev]"
	# Only where needed: a mongod that runs here, ffmpeg, Chromium (see the script's header).
	bash scripts/install_system.sh $(PY)
	touch $(STAMP)

demo: install
	$(PY) scripts/demo.py

test: install lint
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow and not e2e"

# mypy's files and per-module strictness: [tool.mypy] in pyproject.toml
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m mypy

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

app: install
	FIFTYONE_PLUGINS_DIR=$(CURDIR)/build/fiftyone-plugins $(VENV)/bin/fiftyone app launch cliprnn-demo --remote -A 127.0.0.1 -p 5151 -w -1

bench-speed: install
	$(PY) -m cliprnn bench-speed

bench-accuracy: install
	$(PY) -m cliprnn bench-accuracy

clean:
	rm -rf $(VENV) build *.egg-info
