# The short names people type. Everything runs from the virtualenv in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FLASK := $(BIN)/flask
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint format bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt requirements-dev.txt | $(BIN)/activate
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

## make run: install, migrate the SQLite database, ensure the first admin, serve on :8000
run: $(VENV)/.installed
	$(FLASK) db upgrade
	$(FLASK) users ensure-admin
	$(FLASK) run --host $(HOST) --port $(PORT)

## make test: the whole suite (SQLite; MariaDB too when TEST_DATABASE_URL is set)
test: $(VENV)/.installed
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## make bench: throughput and latency ratios under uWSGI on MariaDB (see bench/README)
bench: $(VENV)/.installed
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
