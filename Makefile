# One entry point for everything: `make run` (sandbox, or the real bot with credentials)
# and `make test` (lint, types, tests). CI calls `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test check lint typecheck unit bench bench-full soak sandbox serve clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job: the real bot when .env / the environment has credentials, else the sandbox.
run: $(STAMP)
	$(BIN)/python -m bot run

sandbox: $(STAMP)
	$(BIN)/python -m bot sandbox

serve: $(STAMP)
	$(BIN)/python -m bot serve

lint: $(STAMP)
	$(BIN)/ruff check bot handlers emulators tests bench
	$(BIN)/ruff format --check bot handlers emulators tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

# The browser tests need Debian's chromium: installed here when missing and run as root
# (as CI does); otherwise those tests fail and say how to install it.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing chromium (apt-get) for the browser tests..."; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
			>.chromium-install.log 2>&1 || { cat .chromium-install.log; exit 1; }; \
		rm -f .chromium-install.log; \
	else \
		echo "chromium is missing: the browser tests will fail (sudo apt-get install chromium)"; \
	fi

unit: $(STAMP) browser
	$(BIN)/pytest -q

test: lint typecheck unit

check: test

# Every benchmark 3 times at scaled sizes (under 15 minutes on 2 cores): the README's table.
bench: $(STAMP)
	$(BIN)/python -m bench

# The same benchmarks at the issues' full sizes (about an hour; see the README).
bench-full: $(STAMP)
	$(BIN)/python -m bench --full

# The full fault soak (make test runs a shorter one); prints its figures.
soak: $(STAMP)
	SOAK_REQUESTS=200 SOAK_LOCK_MIN=5 SOAK_LOCK_MAX=40 $(BIN)/pytest -q -s tests/test_soak.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
