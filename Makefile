# Steward: `make run` starts the demo, `make test` runs every test. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/steward serve --demo

test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/steward policy check
	$(BIN)/steward policy test
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/overhead.py

clean:
	rm -rf $(VENV) steward.db steward.db-shm steward.db-wal steward-sandbox.db steward-sandbox.db-shm steward-sandbox.db-wal .pytest_cache
