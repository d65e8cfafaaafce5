# The short names people type. Everything runs from the virtualenv in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FLASK := $(BIN)/flask
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run test coverage lint format bench smoke reliability docs-check lock clean

# The install never depends on the pip a machine happens to have: the venv's own pip (any
# version) installs only the pinned, hash-checked installer (requirements-bootstrap.txt: uv,
# one wheel, no dependencies), and uv installs the locked trees, every file hash-checked,
# wheels only. `make run` needs the runtime tree; test, lint and bench add the dev tree.
UV := $(BIN)/uv
UV_INSTALL = $(UV) pip install --quiet --python $(BIN)/python --require-hashes --only-binary :all:

$(UV): requirements-bootstrap.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps \
		--require-hashes --only-binary=:all: -r requirements-bootstrap.txt
	touch $@

$(VENV)/.runtime: requirements.txt | $(UV)
	$(UV_INSTALL) -r requirements.txt
	touch $@

$(VENV)/.installed: requirements-dev.txt $(VENV)/.runtime
	$(UV_INSTALL) -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

## make lock: resolve requirements-bootstrap.in, requirements.in and requirements-dev.in into
## their .txt locks (every package, pinned, with hashes). Run it after changing a .in
## file; versions already locked stay unless LOCK_ARGS=--upgrade (or --upgrade-package NAME).
LOCK_VENV := .venv-lock
UV_COMPILE = $(LOCK_VENV)/bin/uv pip compile --quiet --universal --python-version 3.11 \
	--generate-hashes --only-binary :all: --custom-compile-command "make lock" $(LOCK_ARGS)
# Its own venv with the pinned uv, so that it runs even when the other locks are broken.
$(LOCK_VENV)/bin/uv: requirements-bootstrap.txt
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
		--require-hashes --only-binary=:all: -r requirements-bootstrap.txt

lock: $(LOCK_VENV)/bin/uv
	$(UV_COMPILE) requirements-bootstrap.in -o requirements-bootstrap.txt
	$(UV_COMPILE) requirements.in -o requirements.txt
	$(UV_COMPILE) requirements-dev.in -o requirements-dev.txt

## make run: install, migrate the SQLite database, ensure the first admin, then serve on
## :8000 with the worker beside it (it sends the emails: the console mailer prints them)
run: $(VENV)/.runtime
	$(FLASK) db upgrade
	$(FLASK) users ensure-admin
	$(FLASK) worker & worker=$$!; trap 'kill $$worker 2>/dev/null' EXIT INT TERM; \
		$(FLASK) run --host $(HOST) --port $(PORT)

## make test: the suite but the system tests (SQLite; MariaDB too when TEST_DATABASE_URL is set)
test: $(VENV)/.installed
	$(BIN)/pytest -m "not system" $(PYTEST_ARGS)

## make coverage: the same, with line and branch coverage of app/ printed at the end (the
## tracing adds about half again to the suite's time on Python 3.11)
coverage: $(VENV)/.installed
	$(BIN)/pytest -m "not system" --cov=app --cov-branch --cov-report=term-missing:skip-covered $(PYTEST_ARGS)

## make lint: ruff (Python), hadolint (Dockerfile), shellcheck (the entrypoint, CI's script)
## and `terraform fmt` (terraform/), all offline
TERRAFORM ?= terraform
lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint --no-color Dockerfile
	$(BIN)/shellcheck docker/entrypoint.sh terraform/run_migration.sh .ci/run
	TF_CLI_CONFIG_FILE=/dev/null $(TERRAFORM) fmt -check -recursive -diff terraform

format: $(VENV)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## make bench: throughput and latency ratios under Debian's uWSGI with app.ini on MariaDB, with
## a private Redis, moto as SES and app.ini's `flask worker` (root, like make smoke; see
## bench/README); BENCH_ARGS="--only views"
bench: $(VENV)/.installed
	$(BIN)/python bench/run.py $(BENCH_ARGS)

## make smoke: the fast system tests (tests/system): the deployment's own files with Debian's
## nginx and uWSGI, the image itself under podman, a private MariaDB and Redis, moto as SES
## (root; see docs/testing.md)
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
