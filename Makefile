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
# `make release VERSION=0.2.0 SIGNER=DIR`: a signed OTA bundle in dist/releases (see docs/releases.md);
# without SIGNER, the local cloud's own release key (made on first use). Like PORT, taken only from make's
# command line or this file, never from an environment that exports VERSION for something else.
RELEASE_VERSION := $(if $(filter environment%,$(origin VERSION)),,$(VERSION))
RELEASE_SIGNER := $(if $(filter environment%,$(origin SIGNER)),,$(SIGNER))

.PHONY: setup run test lint typecheck unit bench dist release clean

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

# the signed release bundle a robot updates itself from: the agent's wheel plus its wheelhouse
release: setup
	$(VENV)/bin/roomba-fleet release build $(if $(RELEASE_VERSION),--version '$(RELEASE_VERSION)') \
		$(if $(RELEASE_SIGNER),--signer '$(RELEASE_SIGNER)')

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
