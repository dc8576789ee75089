# Quick start: `make demo` (install + run the demo), `make test` (install + all checks and tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Two workers (the CI machine has 2 cores): the suite takes ~10 min instead of ~18;
# `make pytest PYTEST_ARGS=` runs it in one process.
PYTEST_ARGS ?= -n 2

.PHONY: install demo test lint typecheck pytest clean

$(BIN)/billing: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

install: $(BIN)/billing

demo: install
	$(BIN)/billing demo

lint: install
	$(BIN)/ruff check billing tests migrations config/grafana
	$(BIN)/ruff format --check billing tests migrations config/grafana

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .state .mypy_cache .ruff_cache .pytest_cache
