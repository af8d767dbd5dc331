# The README's two commands are `make demo` and `make test`; everything else
# here is what they are made of.  Every install step a fresh machine needs
# lives in this file or in scripts/, never only on a developer's machine.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.eoscore-installed

.PHONY: demo test test-unit build wheel bench lint clean tools

# --- the two commands ------------------------------------------------------

## demo: install everything and run the main job on the embedded default (no servers).
demo: build
	$(VENV)/bin/eoscore demo

## test: install everything, start the real services (Kafka, PostgreSQL) and run the whole suite.
test: build tools
	$(PY) -m pytest -p no:cacheprovider --durations=15 tests

# --- pieces ------------------------------------------------------------------

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q "Cython>=3.0" "numpy>=1.26"
	$(PIP) install -q --no-build-isolation -e ".[test,wheel]"
	touch $(STAMP)

## build: (re)compile the native modules in place; cheap when nothing changed.
build: $(STAMP)
	$(PY) setup.py -q build_ext --inplace

## tools: the system tools the integration tests need (Java, Maven, PostgreSQL).
tools:
	scripts/ensure-tools
	scripts/postgres install

## test-unit: the suite without Kafka, PostgreSQL or wheel builds.
test-unit: build
	$(PY) -m pytest -p no:cacheprovider -m "not kafka and not postgres and not wheel" tests

## wheel: a manylinux x86-64 wheel in wheelhouse/ (pip wheel, then auditwheel repair).
wheel: $(STAMP)
	rm -rf dist
	$(PIP) wheel --no-deps -w dist .
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/auditwheel repair -w wheelhouse dist/eoscore-*.whl

## bench: the pyperf benchmarks, short mode.
bench: build
	for b in bench/bench_*.py; do $(PY) $$b --fast || exit 1; done

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf build dist wheelhouse src/*.egg-info
	find src -name '*.so' -delete
	find src/eoscore/_native -name '*.c' -delete
