# labseg: two commands on a fresh machine.
#   make run   virtual environment + dependencies, migrate, demo lab and user, web server + worker
#   make test  the same install, PostgreSQL and Redis started if down, then the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NIIVUE := frontend/static/vendor/niivue/niivue.js
HOST ?= 127.0.0.1
PORT ?= 8000
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/labseg
TEST_BROKER_URL ?= redis://127.0.0.1:6379/0
PYTEST_ARGS ?=

.PHONY: venv install chromium run test services lint models bench

venv: $(BIN)/python

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(STAMP) $(if $(wildcard package.json),$(NIIVUE)) chromium

# Reinstalls when a requirements file changes.
# The tests include a one-epoch training smoke run and the torch-vs-ONNX export check, so the
# training requirements (CPU torch 2.13.0 from the local wheel) are installed too; the server
# itself never imports torch.
$(STAMP): requirements.txt requirements-dev.txt requirements-train.txt | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt -r requirements-train.txt
	touch $(STAMP)

# frontend/vendor.sh runs `npm ci` and copies NiiVue's ES module build into static files.
$(NIIVUE): $(wildcard package.json package-lock.json) frontend/niivue-patch.mjs
	bash frontend/vendor.sh

# The browser tests drive Debian's Chromium (Playwright's own download is not used).
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
		echo "installing Debian chromium for the browser tests"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; \
	fi

# Embedded defaults: SQLite under var/ and the filesystem Celery broker, no service needed.
# The web server and the worker (with beat, for the job reconciler) stop together on Ctrl-C.
run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py sync_models || echo "no segmentation model registered yet: run 'make models'"
	$(BIN)/python manage.py create_demo --url http://$(HOST):$(PORT)/
	@trap 'trap - INT TERM EXIT; kill -TERM $$worker $$web 2>/dev/null; wait; exit 0' INT TERM EXIT; \
	$(BIN)/celery -A labseg worker -B -Q cpu,gpu,train --concurrency 1 --loglevel INFO \
		--schedule var/celerybeat-schedule & worker=$$!; \
	$(BIN)/python manage.py runserver --noreload $(HOST):$(PORT) & web=$$!; \
	wait -n

# PostgreSQL and Redis on 127.0.0.1, started when they are down (as .ci/run does).
services:
	@pg_isready -q -h 127.0.0.1 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@redis-cli ping >/dev/null 2>&1 || { mkdir -p /var/lib/redis /var/log/redis; redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 \
		--save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log; }
	@for i in $$(seq 30); do pg_isready -q -h 127.0.0.1 && redis-cli ping >/dev/null 2>&1 && exit 0; sleep 1; done; \
		echo "PostgreSQL or Redis did not start" >&2; exit 1

test: install services
	DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_BROKER_URL) $(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

# Trains the small bundled models (needs requirements-train.txt: CPU torch).
models: $(STAMP)
	$(BIN)/python -m inference.training.make_models

# Benchmarks against the test PostgreSQL; each prints its figures.
bench: install services
	@for script in bench/upload.py bench/segment_speed.py bench/viewer.py; do \
		if [ -f $$script ]; then \
			echo "== $$script"; \
			DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_BROKER_URL) $(BIN)/python $$script || exit 1; \
		fi; \
	done
