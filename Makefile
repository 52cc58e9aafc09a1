# Front door: `make demo` runs the main job on the embedded synthetic set, `make test` runs the suite.
# Both create (or reuse) the environment in .venv from this repo's pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

.PHONY: env test lint demo bench
env: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n auto --dist loadfile --durations=15 tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .

demo: $(STAMP)
	$(PY) -m audiocap_jax.train --config=configs/demo.py --workdir=workdir/demo

bench: $(STAMP)
	$(PY) -m benchmarks.run
