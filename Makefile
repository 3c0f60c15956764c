PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,ui]"
	touch $(STAMP)

demo: setup
	$(BIN)/lorakit demo --out out/demo

# The whole suite, slow tests included (a bare `pytest` skips the slow ones).
test: setup
	$(BIN)/python -m pytest -m "slow or not slow" -q

test-fast: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/load_fuse.py
	$(BIN)/python benchmarks/algebra.py
	$(BIN)/python benchmarks/train_step.py

clean:
	rm -rf $(VENV) out build dist src/*.egg-info
