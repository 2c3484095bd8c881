# Two commands a new user needs: `make run` and `make test`. Both build .venv from the lock file.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
STAMP := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: run test unit integration lint bench bench-serve bench-score bench-stream bench-scale lock clean

# --compile-bytecode: every command imports seconds faster, even where PYTHONDONTWRITEBYTECODE
# keeps Python from caching bytecode itself (measured: mlpipe train's start 7.8 s -> 1.7 s).
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

run: $(STAMP)  ## tune the default spec on the bundled Boston data
	$(BIN)/mlpipe train $(ARGS)

test: $(STAMP)  ## the whole suite
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(STAMP)  ## GridSearchCV vs mlpipe train, side by side
	$(BIN)/python benchmarks/tune.py $(ARGS)

bench-serve: $(STAMP)  ## mlflow models serve vs mlpipe serve under wrk (apt-get install wrk)
	$(BIN)/python benchmarks/serve.py $(ARGS)

bench-score: $(STAMP)  ## pyfunc + read_parquet vs mlpipe score on 5,000,000 rows
	$(BIN)/python benchmarks/score.py $(ARGS)

bench-stream: $(STAMP)  ## a read+write-only consumer vs mlpipe stream, 100,000 records, local Kinesis
	$(BIN)/python benchmarks/stream.py $(ARGS)

bench-scale: $(STAMP)  ## the default search: one core vs 2 shards vs a 2-worker Dask cluster
	$(BIN)/python benchmarks/scale.py $(ARGS)

lock:  ## re-resolve requirements.lock (dev) and requirements-image.lock (the image: no dev tools)
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 --no-header -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml -c requirements.lock --python-version 3.11 --no-header \
		-o requirements-image.lock
	# uv resolves for this platform and drops the marker; the lock is shared with macOS users
	sed -i "s/^awslambdaric==\([^ ]*\)$$/awslambdaric==\1 ; sys_platform == 'linux'/" \
		requirements.lock requirements-image.lock

clean:
	rm -rf $(VENV) mlruns mlflow.db artifacts .pytest_cache
