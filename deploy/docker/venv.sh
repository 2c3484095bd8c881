#!/bin/sh
# The Dockerfile's build stages: venv.sh LOCK makes the venv /opt/mlpipe from a lock file (its
# python is the base's /usr/local/bin/python, as at run time), without any package's own test
# suite (pandas' alone is 46 MB; nothing imports them at run time).
set -eu
uv venv /opt/mlpipe --python /usr/local/bin/python
uv pip install --python /opt/mlpipe/bin/python -r "$1"
find /opt/mlpipe/lib -depth -type d -name tests -exec rm -rf {} +
