# Two images from one file:
# - the full image (the default target): every mlpipe role, `mlpipe train` (whole or one
#   --shard), `serve`, `score`, `stream`, and, with another command, a Prefect worker or server
#   and an MLflow server;
# - the serving image (`--target serve`): only what `mlpipe serve` needs to serve a model through
#   its ONNX fast path (no training stack, no SciPy or scikit-learn), for an autoscaled Deployment
#   that pulls and starts it quickly.
#
#   docker build -t mlpipe:0.1.0 .
#   docker build --target serve -t mlpipe-serve:0.1.0 .
#   docker run --rm -p 8000:8000 -e MLFLOW_TRACKING_URI=http://mlflow:5000 mlpipe-serve:0.1.0 \
#       serve --host 0.0.0.0 --model models:/boston-rf@champion
#
# requirements-image.lock is requirements.lock without the dev tools; requirements-serve.lock is
# deploy/docker/requirements-serve.in within the same versions (`make lock` writes all three).
# `make image` builds both, on a stand-in base where python:3.11-slim-bookworm cannot be pulled
# (BASE_IMAGE: deploy/docker/stand-in-base.sh).
ARG PYTHON_VERSION=3.11
ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim-bookworm

# What both images run on: the base, LightGBM's OpenMP runtime, the non-root user, the
# entrypoint and the health check (the venv is copied in last, owned by root: read-only to the user).
FROM ${BASE_IMAGE} AS runtime
# libgomp1: LightGBM's wheel links the system's OpenMP runtime (XGBoost's bundles its own)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 mlpipe \
    && useradd --system --uid 10001 --gid mlpipe --create-home --home-dir /home/mlpipe mlpipe
# no git in the image: MLflow's run tags skip the commit without a warning per run
ENV PATH=/opt/mlpipe/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PREFECT_HOME=/home/mlpipe/.prefect \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    MLPIPE_HOME=/home/mlpipe/.mlpipe \
    GIT_PYTHON_REFRESH=quiet
WORKDIR /home/mlpipe
EXPOSE 8000
USER 10001:10001
# `mlpipe serve`'s liveness endpoint; other roles (train, score, stream) are run as Jobs, where
# Kubernetes ignores HEALTHCHECK and the process's exit status is what counts.
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MLPIPE_PORT', '8000') + '/health', timeout=4)"]
ENTRYPOINT ["mlpipe"]

# The build stages, on the runtime (whose libraries the serving build's imports load): uv, then a
# venv at /opt/mlpipe each (deploy/docker/venv.sh): the locked dependencies first, mlpipe itself
# last, so a change to src/ rebuilds only that layer.
FROM runtime AS uv
# a build stage, not an image: both images' last USER is the runtime stage's 10001
# hadolint ignore=DL3002
USER 0:0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1
RUN pip install --no-cache-dir uv==0.13.8
WORKDIR /src
COPY deploy/docker/venv.sh /usr/local/bin/

FROM uv AS build
COPY requirements-image.lock ./
RUN venv.sh requirements-image.lock
COPY pyproject.toml README.md ./
COPY src ./src
RUN uv pip install --python /opt/mlpipe/bin/python --no-deps .

# The serving venv: requirements-serve.lock (the ONNX fast path, no training stack) and bytecode
# only for what the server imports (compiling every file adds ~170 MB, most of it never loaded;
# the rest would compile in memory: the image's user cannot write to /opt). The runtime's
# PYTHONDONTWRITEBYTECODE is lifted for the one command that writes it.
FROM uv AS build-serve
ENV UV_COMPILE_BYTECODE=0
COPY requirements-serve.lock ./
RUN venv.sh requirements-serve.lock
COPY pyproject.toml README.md ./
COPY src ./src
RUN uv pip install --python /opt/mlpipe/bin/python --no-deps . \
    && env -u PYTHONDONTWRITEBYTECODE /opt/mlpipe/bin/python -m mlpipe.serve.warm

# The serving image: `docker build --target serve`.
FROM runtime AS serve
COPY --from=build-serve /opt/mlpipe /opt/mlpipe
CMD ["serve", "--help"]

# The full image, the default target: the runtime and the whole venv, no uv, no pip cache, no
# compilers.
FROM runtime
COPY --from=build /opt/mlpipe /opt/mlpipe
CMD ["--help"]
