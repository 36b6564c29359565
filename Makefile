# The two entry points of a fresh machine: `make demo` and `make test`.
# Both create ./.venv with the interpreter named by PYTHON (3.10+).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
DEMO_ENTITY ?= drugs_hcp

.PHONY: demo test test-unit lint format install install-test clean-demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-test: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'

demo: install
	$(BIN)/bidopt db upgrade
	$(BIN)/bidopt db seed-demo
	$(BIN)/bidopt entities show $(DEMO_ENTITY)
	$(BIN)/bidopt data generate $(DEMO_ENTITY) --rows 500000
	$(BIN)/bidopt runs create $(DEMO_ENTITY) -c target_win_rate=0.4 -c max_bid_cpm=20
	$(BIN)/bidopt optimizer run --once
	$(BIN)/bidopt runs show --entity $(DEMO_ENTITY)
	$(BIN)/bidopt serve --new-token

test: install-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Unit tests only: no Ray, no servers (tests/unit/conftest.py makes ray.init fail); seconds.
test-unit: install-test
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install-test
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean-demo:
	rm -rf .bidopt
