# The two commands of README.md. Both create .venv when missing and install pinned versions.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install coverage

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vgg-flax summary
	rm -rf runs/demo  # a fresh run each time (restarting with the same workdir would resume)
	$(PY) -m experiments.train --config experiments/configs/digits.py --workdir runs/demo

# Tests run in TEST_WORKERS processes (pytest-xdist); the big-memory ones share one of them.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup

# Line coverage of vgg_flax/ over the whole suite, its subprocesses included (.coveragerc).
coverage: $(STAMP)
	rm -f .coverage .coverage.*
	COVERAGE_SOURCE=$(CURDIR)/vgg_flax COVERAGE_DATA_DIR=$(CURDIR) $(PY) -m coverage run -m pytest
	$(PY) -m coverage combine -q
	COVERAGE_SOURCE=$(CURDIR)/vgg_flax $(PY) -m coverage report | tail -n 3
