PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock

.PHONY: setup browser lock demo test test-fast bench clean

# Installs exactly what the lock names (the versions the suite last passed with), then lorakit itself.
# The browser the web UI's tests drive comes with the test targets only (the demo needs none).
setup: $(STAMP)

# Debian's chromium for the web UI's browser tests (Playwright drives it; it never downloads one).
CHROMIUM := /usr/bin/chromium
browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium (Debian package) for the web UI tests"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else \
	  echo "$(CHROMIUM) is missing: the web UI tests need it. As root run" >&2; \
	  echo "  apt-get update && apt-get install -y chromium" >&2; \
	  echo "(or 'sudo make browser'); everything but those tests works without it." >&2; \
	fi

$(STAMP): $(LOCK) pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r $(LOCK)
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

# Refreshes the lock from pyproject's ranges (newest releases that fit), in a throwaway venv.
# Run it on purpose, then `make test`, and commit both files together.
lock:
	rm -rf .lockenv
	$(PY) -m venv .lockenv
	.lockenv/bin/pip install -q --upgrade pip
	.lockenv/bin/pip install -q torch==2.13.0
	.lockenv/bin/pip install -q ".[dev,ui,train]"
	{ echo "# The exact versions \`make test\` passes with. Refresh with \`make lock\` (see README)."; \
	  echo "# torch is the CPU build; on a GPU machine install your own torch first."; \
	  .lockenv/bin/pip freeze --exclude-editable --exclude lorakit | sed 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/'; \
	} > $(LOCK)
	rm -rf .lockenv
	rm -f $(STAMP)

demo: setup
	$(BIN)/lorakit demo --out out/demo

# The whole suite, slow tests included (a bare `pytest` skips the slow ones).
test: setup browser
	$(BIN)/python -m pytest -m "slow or not slow" -q --durations=25

test-fast: setup browser
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/load_fuse.py
	$(BIN)/python benchmarks/algebra.py
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/generate.py
	$(BIN)/python benchmarks/live_layer.py
	$(BIN)/python benchmarks/precision_crossover.py
	$(BIN)/python benchmarks/lora_effect.py
	$(BIN)/python benchmarks/extract.py
	$(BIN)/python benchmarks/demo_seeds.py

clean:
	rm -rf $(VENV) .lockenv out build dist src/*.egg-info
