# The two commands of the README's quick start: `make run` and `make test`; `make dist` for a robot image.
# Each one sets up what it needs (Debian packages, a venv in .venv) and is safe to run again.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# `make run PORT=18883`: the demo's MQTT port. Taken only from make's command line or this file, never
# from an environment that happens to export PORT for something else.
DEMO_PORT := $(if $(filter environment%,$(origin PORT)),,$(PORT))
# `make dist DIST=DIR`: where the wheel and the sdist go
DIST ?= dist

.PHONY: setup run test lint typecheck unit bench dist clean

setup:
	@bash scripts/setup.sh

run: setup
	@DEMO_PORT='$(DEMO_PORT)' bash scripts/run-demo.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy

unit: setup
	$(VENV)/bin/pytest -q

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# the wheel (and sdist) that the README's "Installing on a robot image" installs
dist: setup
	rm -f $(DIST)/roomba_agent-*
	$(PY) -m build --outdir $(DIST) .

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
