# Two commands for a fresh Debian machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench lint setup setup-test clean

$(VENV)/.stamp: pyproject.toml scripts/setup-env
	PYTHON=$(PYTHON) bash scripts/setup-env
	touch $@

setup: $(VENV)/.stamp

setup-test: setup
	GILCLONE_SETUP_TEST=1 PYTHON=$(PYTHON) bash scripts/setup-env

demo: setup
	$(PY) scripts/demo.py

lint: setup
	$(VENV)/bin/ruff check .

test: setup-test lint
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

bench: setup
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info
