# The short names people type. Everything runs from the virtualenv in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FLASK := $(BIN)/flask
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint format bench smoke reliability docs-check clean

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

## make test: the whole suite (SQLite; MariaDB too when TEST_DATABASE_URL is set), with
## line and branch coverage of app/ printed at the end
test: $(VENV)/.installed
	$(BIN)/pytest --cov=app --cov-branch --cov-report=term-missing:skip-covered $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## make bench: throughput and latency ratios under uWSGI on MariaDB (see bench/README)
bench: $(VENV)/.installed
	$(BIN)/python bench/run.py

## make smoke: the Docker deployment's files without Docker: Debian's nginx + uWSGI on MariaDB (root)
smoke: $(VENV)/.installed
	$(BIN)/python deploy/smoke.py

## make reliability: load, MariaDB stopped 10 s, SES failing 60 s on nginx + uWSGI (root;
## stops this machine's MariaDB and starts it again: not run by CI)
reliability: $(VENV)/.installed
	$(BIN)/python deploy/reliability.py

## make docs-check: open /api/docs in headless Chromium and check every route is drawn
docs-check: $(VENV)/.installed
	$(BIN)/python deploy/docs_in_browser.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
