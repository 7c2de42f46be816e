# Two commands for a fresh Debian machine: `make demo` and `make test`.
# `make test-fast` runs the tests not marked slow (readers, writers, models, parsers, CLI):
# under a minute, for the edit-test loop; `make test` runs everything.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-fast bench lint setup setup-test docs clean

$(VENV)/.stamp: pyproject.toml scripts/setup-env
	PYTHON=$(PYTHON) bash scripts/setup-env
	touch $@

setup: $(VENV)/.stamp

$(VENV)/.stamp-test: $(VENV)/.stamp
	GILCLONE_SETUP_TEST=1 PYTHON=$(PYTHON) bash scripts/setup-env
	touch $@

setup-test: $(VENV)/.stamp-test

demo: setup
	$(PY) scripts/demo.py

lint: setup
	$(VENV)/bin/ruff check .

# --durations: the slowest tests stay in sight, so that new slow ones get marked.
test: setup-test lint
	$(PY) -m pytest -q -ra --durations=15 $(PYTEST_ARGS)

test-fast: setup-test lint
	$(PY) -m pytest -q -ra -m "not slow" --durations=5 $(PYTEST_ARGS)

$(VENV)/.stamp-docs: $(VENV)/.stamp
	GILCLONE_SETUP_DOCS=1 PYTHON=$(PYTHON) bash scripts/setup-env
	touch $@

# The site, with the API reference generated from docstrings, into site/ (site/index.html).
# --strict: a warning (a broken link, a missing page, an unknown name) fails the build.
# `make test` builds it too (tests/test_docs.py), into a temporary directory.
docs: $(VENV)/.stamp-docs
	$(VENV)/bin/mkdocs build --strict --site-dir site


$(VENV)/.stamp-bench: $(VENV)/.stamp
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -e '.[bench]'
	touch $@

bench: $(VENV)/.stamp-bench
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build site *.egg-info
