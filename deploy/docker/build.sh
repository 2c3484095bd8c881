#!/usr/bin/env bash
# `make image`: the full image and the serving image (the Dockerfile's default and `serve`
# targets). On python:3.11-slim-bookworm where the machine has it or can pull it; else on a
# stand-in built once from Debian's packages (stand-in-base.sh), kept for later builds.
# Docker's layer cache keeps the dependency layers while the locks do not change.
# Usage: build.sh IMAGE SERVE_IMAGE
set -euo pipefail
image=${1:?usage: build.sh IMAGE SERVE_IMAGE}
serve_image=${2:?usage: build.sh IMAGE SERVE_IMAGE}
here=$(cd "$(dirname "$0")" && pwd)
base=python:3.11-slim-bookworm
stand_in=mlpipe-stand-in-base:python3.11-bookworm

docker info >/dev/null 2>&1 || {
    echo "no Docker daemon answers: start it (sudo dockerd, or sudo systemctl start docker);" \
        "\`make system-deps\` installs Debian's docker.io" >&2
    exit 2
}
if ! docker image inspect "$base" >/dev/null 2>&1 && ! docker pull --quiet "$base" >/dev/null 2>&1
then
    echo "$base cannot be pulled here: building on $stand_in (Debian bookworm's python3.11)"
    docker image inspect "$stand_in" >/dev/null 2>&1 || "$here/stand-in-base.sh" "$stand_in"
    base=$stand_in
fi
cd "$here/../.."
# the legacy builder (no buildx) builds every stage of the default target, the serving
# image's among them; the second build is then all cache
docker build --build-arg "BASE_IMAGE=$base" --tag "$image" .
docker build --build-arg "BASE_IMAGE=$base" --target serve --tag "$serve_image" .
for name in "$image" "$serve_image"; do
    docker image inspect --format "$name {{.Size}}" "$name" | awk '{printf "%s: %d MB\n", $1, $2/1e6}'
done
