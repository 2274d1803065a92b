# The two commands of README.md. Both create .venv when missing and install pinned versions.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vgg-flax summary
	rm -rf runs/demo  # a fresh run each time (restarting with the same workdir would resume)
	$(PY) -m experiments.train --config experiments/configs/digits.py --workdir runs/demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest
