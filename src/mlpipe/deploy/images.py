"""The container image a Docker work pool runs: is a Docker daemon there, and does the image
exist, locally or in its registry? Asked before any deployment points at it, so that a typo
fails now, in one line, rather than in every flow run the worker starts."""

from __future__ import annotations

import os

from mlpipe.errors import UserError


def check_image(image: str) -> str:
    """Where ``image`` is: "local" or "registry"; a UserError when no Docker daemon answers or
    neither has it."""
    import docker
    from docker.errors import DockerException, ImageNotFound

    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except DockerException:
        raise UserError(
            f"no Docker daemon answers at {where}: start it (sudo systemctl start docker, or "
            "sudo dockerd), or set DOCKER_HOST"
        ) from None
    try:
        try:
            client.images.get(image)
            return "local"
        except ImageNotFound:
            pass
        try:
            client.images.get_registry_data(image)
        except DockerException:
            raise UserError(
                f"--image {image!r}: no such image on this Docker daemon nor in its registry: "
                "build it (make image) or push it, or check the name"
            ) from None
        return "registry"
    finally:
        client.close()
