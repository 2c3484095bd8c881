# One image for every mlpipe role: `mlpipe train` (whole or one --shard), `serve`, `score`,
# `stream`, and, with another command, a Prefect worker or server and an MLflow server.
#
#   docker build -t mlpipe:0.1.0 .
#   docker run --rm -p 8000:8000 -e MLFLOW_TRACKING_URI=http://mlflow:5000 mlpipe:0.1.0 \
#       serve --host 0.0.0.0 --model models:/boston-rf@champion
#
# requirements-image.lock is requirements.lock without the dev tools (`make lock` writes both).
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1
RUN pip install --no-cache-dir uv==0.13.8 \
    && uv venv /opt/mlpipe --python /usr/local/bin/python
WORKDIR /src
COPY requirements-image.lock ./
RUN uv pip install --python /opt/mlpipe/bin/python -r requirements-image.lock
COPY pyproject.toml README.md ./
COPY src ./src
RUN uv pip install --python /opt/mlpipe/bin/python --no-deps .

# The final stage: the same base (the venv's python is /usr/local/bin/python in both), the venv
# and nothing else: no uv, no pip cache, no compilers.
FROM python:${PYTHON_VERSION}-slim-bookworm
# libgomp1: LightGBM's wheel links the system's OpenMP runtime (XGBoost's bundles its own)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 mlpipe \
    && useradd --system --uid 10001 --gid mlpipe --create-home --home-dir /home/mlpipe mlpipe
COPY --from=build /opt/mlpipe /opt/mlpipe
ENV PATH=/opt/mlpipe/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PREFECT_HOME=/home/mlpipe/.prefect \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    MLPIPE_HOME=/home/mlpipe/.mlpipe
USER 10001:10001
WORKDIR /home/mlpipe
EXPOSE 8000
# `mlpipe serve`'s liveness endpoint; other roles (train, score, stream) are run as Jobs, where
# Kubernetes ignores HEALTHCHECK and the process's exit status is what counts.
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MLPIPE_PORT', '8000') + '/health', timeout=4)"]
ENTRYPOINT ["mlpipe"]
CMD ["--help"]
