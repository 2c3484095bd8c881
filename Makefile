# Two commands a new user needs: `make run` and `make test`. Both build .venv from the lock file.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
STAMP := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# Two pytest processes, each taking whole test modules (pytest-xdist, --dist=loadfile: a module's
# fixtures stay in one process; the session servers, trained models and images are made once
# for both: tests/integration/conftest.py). The suite waits on servers, workers and
# subprocesses much of the time, so on 2 cores two processes fill them (README: its times).
# PYTEST_ARGS="-n 0" runs it in one process; more processes than cores made servers time out.
# The modules go out in the order tests/conftest.py puts them, slowest first (xdist's default
# reorders them by their number of tests, which left the long integration modules to the end).
PYTEST_ARGS ?= --numprocesses=2 --dist=loadfile --no-loadscope-reorder

# `make image`: the full image and the serving image (Dockerfile: default and `serve` targets)
IMAGE ?= mlpipe:0.1.0
SERVE_IMAGE ?= mlpipe-serve:0.1.0

.PHONY: run test unit integration lint system-deps image bench-image bench bench-search bench-serve bench-score \
	bench-score-categorical \
	bench-stream bench-scale \
	bench-db lock clean

# Python caches the bytecode of what it imports as it goes, also where the environment says
# PYTHONDONTWRITEBYTECODE (without a cache every command compiles its imports again: mlpipe
# train's start 7.8 s, against 1.7 s). Not compiled at install (uv's --compile-bytecode): all
# 21,700 files took 60 s of a fresh clone's `make test` here (97 s of CPU); the suite imports
# about a quarter of them, compiled once, on first import (~20 s of CPU).
unexport PYTHONDONTWRITEBYTECODE
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

run: $(STAMP)  ## tune the default spec on the bundled Boston data
	$(BIN)/mlpipe train $(ARGS)

# the venv and the Debian packages side by side (both mostly downloads: ~15 s of a fresh clone)
test:  ## the whole suite
	$(MAKE) --no-print-directory -j2 $(STAMP) system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Debian packages the tests run for real: PostgreSQL (database sources and sinks), Chromium
# (the drift report), curl (a client of the prediction API), Docker's daemon and debootstrap
# (the images; a stand-in base where no registry is reached). Installed when missing and root;
# otherwise those tests skip (CI: fail). test_image starts the daemon when it is not running.
system-deps:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
		missing="$$missing postgresql"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	command -v dockerd >/dev/null || missing="$$missing docker.io"; \
	command -v debootstrap >/dev/null || missing="$$missing debootstrap"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$missing >/dev/null; \
	else \
		echo "missing Debian packages:$$missing (sudo apt-get install$$missing); their tests skip"; \
	fi

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

integration: $(STAMP) system-deps
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

image:  ## the full and the serving image (a stand-in base where python:3.11-slim can't be pulled)
	deploy/docker/build.sh $(IMAGE) $(SERVE_IMAGE)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(STAMP)  ## GridSearchCV vs mlpipe train, side by side
	$(BIN)/python benchmarks/tune.py $(ARGS)

bench-search: $(STAMP)  ## HalvingGridSearchCV vs mlpipe train's halving, side by side
	$(BIN)/python benchmarks/search.py $(ARGS)

bench-serve: $(STAMP)  ## mlflow models serve vs mlpipe serve under wrk (apt-get install wrk)
	$(BIN)/python benchmarks/serve.py $(ARGS)

bench-score: $(STAMP)  ## pyfunc + read_parquet vs mlpipe score on 5,000,000 rows (ARGS="--s3": and on S3)
	$(BIN)/python benchmarks/score.py $(ARGS)

bench-score-categorical: $(STAMP)  ## mlpipe score: a table with categories vs one of numbers
	$(BIN)/python benchmarks/score_categorical.py $(ARGS)

bench-stream: $(STAMP)  ## a read+write-only consumer vs mlpipe stream, 100,000 records, local Kinesis
	$(BIN)/python benchmarks/stream.py $(ARGS)

bench-scale: $(STAMP)  ## the default search: one core vs 2 shards vs a 2-worker Dask cluster
	$(BIN)/python benchmarks/scale.py $(ARGS)

bench-image: $(STAMP) image  ## the full vs the serving image: sizes and docker run to /ready
	$(BIN)/python benchmarks/image.py $(ARGS)

bench-db: $(STAMP) system-deps  ## pandas read_sql+to_sql vs mlpipe score, PostgreSQL to PostgreSQL
	$(BIN)/python benchmarks/db_score.py $(ARGS)

lock:  ## re-resolve requirements.lock (dev), requirements-image.lock (no dev tools), -serve (serving)
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 --no-header -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml -c requirements.lock --python-version 3.11 --no-header \
		-o requirements-image.lock
	$(BIN)/uv pip compile deploy/docker/requirements-serve.in -c requirements.lock \
		--python-version 3.11 --no-header -o requirements-serve.lock
	# uv resolves for this platform and drops the marker; the lock is shared with macOS users
	sed -i "s/^awslambdaric==\([^ ]*\)$$/awslambdaric==\1 ; sys_platform == 'linux'/" \
		requirements.lock requirements-image.lock

clean:
	rm -rf $(VENV) mlruns mlflow.db artifacts .pytest_cache
