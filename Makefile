# One entry point for everything: `make run` (sandbox, or the real bot with credentials)
# and `make test` (lint, types, tests). CI calls `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test check lint typecheck unit bench soak sandbox serve clean

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
	$(BIN)/ruff check bot handlers tests bench
	$(BIN)/ruff format --check bot handlers tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck unit

check: test

bench: $(STAMP)
	$(BIN)/python -m bench

# The full fault soak (make test runs a shorter one); prints its figures.
soak: $(STAMP)
	SOAK_REQUESTS=200 SOAK_LOCK_MIN=5 SOAK_LOCK_MAX=40 $(BIN)/pytest -q -s tests/test_soak.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
