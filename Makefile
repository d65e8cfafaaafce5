# The short names people type. Everything runs from the virtualenv in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FLASK := $(BIN)/flask
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint format bench smoke reliability docs-check lock clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# The locked tree only (every package pinned and hashed, wheels only): what CI and the
# image install is exactly what was reviewed.
$(VENV)/.installed: requirements.txt requirements-dev.txt | $(BIN)/activate
	$(BIN)/pip install --quiet --require-hashes --only-binary=:all: -r requirements-dev.txt
	touch $@

## make lock: resolve requirements.in and requirements-dev.in into requirements.txt and
## requirements-dev.txt (every package, pinned, with hashes). Run it after changing a .in
## file; versions already locked stay unless LOCK_ARGS=--upgrade (or --upgrade-package NAME).
UV_VERSION := 0.13.8
LOCK_VENV := .venv-lock
UV_COMPILE = $(LOCK_VENV)/bin/uv pip compile --quiet --universal --python-version 3.11 \
	--generate-hashes --only-binary :all: --custom-compile-command "make lock" $(LOCK_ARGS)
$(LOCK_VENV)/.uv-$(UV_VERSION):
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet uv==$(UV_VERSION)
	touch $@

lock: $(LOCK_VENV)/.uv-$(UV_VERSION)
	$(UV_COMPILE) requirements.in -o requirements.txt
	$(UV_COMPILE) requirements-dev.in -o requirements-dev.txt

## make run: install, migrate the SQLite database, ensure the first admin, then serve on
## :8000 with the worker beside it (it sends the emails: the console mailer prints them)
run: $(VENV)/.installed
	$(FLASK) db upgrade
	$(FLASK) users ensure-admin
	$(FLASK) worker & worker=$$!; trap 'kill $$worker 2>/dev/null' EXIT INT TERM; \
		$(FLASK) run --host $(HOST) --port $(PORT)

## make test: the suite but the system tests (SQLite; MariaDB too when TEST_DATABASE_URL is
## set), with line and branch coverage of app/ printed at the end
test: $(VENV)/.installed
	$(BIN)/pytest -m "not system" --cov=app --cov-branch --cov-report=term-missing:skip-covered $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## make bench: throughput and latency ratios under uWSGI on MariaDB, with a private Redis,
## moto as SES and `flask worker` beside the servers (see bench/README); BENCH_ARGS="--only views"
bench: $(VENV)/.installed
	$(BIN)/python bench/run.py $(BENCH_ARGS)

## make smoke: the fast system tests (tests/system): the deployment's own files with Debian's
## nginx and uWSGI, a private MariaDB and Redis, moto as SES (root; see docs/testing.md)
smoke: $(VENV)/.installed
	$(BIN)/pytest tests/system -m "system and not reliability and not browser" $(PYTEST_ARGS)

## make reliability: every system test, with the long load and fault runs (MariaDB down, SES
## down; a private mariadbd, never the machine's); figures in reliability-results.json
reliability: $(VENV)/.installed
	$(BIN)/pytest tests/system -m system $(PYTEST_ARGS)

## make docs-check: /api/docs in headless Chromium (every route drawn), the Postman collection with newman
docs-check: $(VENV)/.installed
	$(BIN)/pytest tests/system -m browser $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(LOCK_VENV) .pytest_cache .ruff_cache
