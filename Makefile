# The two commands of README.md. Both create .venv when missing and install pinned versions:
# `make demo` only what the demo needs (the data extra: TensorFlow, TFDS, scikit-learn; no torch),
# `make test` everything (the dev extra).
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_STAMP := $(VENV)/.installed-data
TEST_STAMP := $(VENV)/.installed-dev

.PHONY: demo test install coverage

$(DEMO_STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[data]'
	touch $(DEMO_STAMP)

$(TEST_STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(TEST_STAMP) $(DEMO_STAMP)

install: $(TEST_STAMP)

demo: $(DEMO_STAMP)
	$(VENV)/bin/vgg-flax summary
	rm -rf runs/demo  # a fresh run each time (restarting with the same workdir would resume)
	$(PY) -m experiments.train --config experiments/configs/digits.py --workdir runs/demo
	@echo "disk used:" && du -sh $(VENV) runs/demo && du -sh runs/demo/model runs/demo/checkpoints

# Tests run in TEST_WORKERS processes (pytest-xdist), a test file in one of them: its module
# fixtures (nets, checkpoints, references) are built once. (--dist loadgroup's groups are
# ignored under pytest 9: xdist 3.8 renames nodes through an attribute pytest 9 no longer reads.)
TEST_WORKERS ?= 2

test: $(TEST_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

# Line coverage of vgg_flax/ over the whole suite, its subprocesses included (.coveragerc).
coverage: $(TEST_STAMP)
	rm -f .coverage .coverage.*
	COVERAGE_SOURCE=$(CURDIR)/vgg_flax COVERAGE_DATA_DIR=$(CURDIR) $(PY) -m coverage run -m pytest -n $(TEST_WORKERS) --dist loadfile
	$(PY) -m coverage combine -q
	COVERAGE_SOURCE=$(CURDIR)/vgg_flax $(PY) -m coverage report | tail -n 3
