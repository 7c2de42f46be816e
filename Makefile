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


# The benchmark measures gilclone as users install it: a regular (not editable) install
# in its own venv, reinstalled from this tree on every run. An editable install adds a
# meta-path finder that every interpreter, host and clone, imports at start (pathlib,
# urllib.parse, re: ~9 ms and ~1 MiB per clone), which a wheel install does not have.
BENCH_VENV := .venv-bench

$(BENCH_VENV)/.stamp: pyproject.toml Makefile
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --disable-pip-version-check '.[bench,dask,joblib]'
	touch $@

bench: $(BENCH_VENV)/.stamp
	$(BENCH_VENV)/bin/python -m pip install -q --disable-pip-version-check --no-deps --force-reinstall .
	$(BENCH_VENV)/bin/python bench/run.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) build site *.egg-info
