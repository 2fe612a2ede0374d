# Two commands on a fresh machine:
#   make run    couchgw on its embedded defaults (embedded CouchDB, demo SOAP target)
#   make test   the whole test suite, with lint and type checks
# Both install what they need first: a virtualenv in .venv and PouchDB Server in node_modules.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SOURCES := $(shell find couchgw twisted designdocs -type f -not -name '*.pyc' -not -name dropin.cache) setup.cfg pyproject.toml

.PHONY: run test lint deps bench clean

run: deps
	$(BIN)/twistd --nodaemon --pidfile= couchgw --target=demo

test: deps lint
	$(BIN)/pytest

# the speed suite (docs/BENCHMARKS.md) on PouchDB Server: about 9 minutes, a table and bench-results.json
bench: deps
	$(BIN)/python bench/suite.py

lint: $(VENV)/.installed
	$(BIN)/ruff check couchgw tests twisted
	$(BIN)/ruff format --check couchgw tests twisted
	$(BIN)/mypy

deps: $(VENV)/.installed node_modules/.installed

$(VENV)/.tools: setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet 'pytest>=8' 'mypy>=1.10' 'mypy-zope>=1.0' 'ruff>=0.6' 'selenium>=4.20' 'jsonschema>=4.18'
	touch $@

# A real (non-editable) install, as users get it: twistd finds the plugin only that way.
# (build/ goes first: setuptools would copy files from it that the source tree no longer has)
$(VENV)/.installed: $(VENV)/.tools $(SOURCES)
	rm -rf build
	$(BIN)/pip install --quiet .
	$(BIN)/pip install --quiet --force-reinstall --no-deps .
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

clean:
	rm -rf $(VENV) node_modules build *.egg-info couchgw-data
