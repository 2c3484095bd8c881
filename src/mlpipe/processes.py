"""Processes mlpipe starts and stops: is one still ours, a free port for it, stopping its group.

``alive`` treats a zombie (exited, not yet reaped) as gone. ``start_time`` is the kernel's start
time of a pid, recorded beside a pid so that a pid the system has since reused for another
program is never mistaken for ours. ``stop_group`` is the terminate-then-kill every supervisor
does: SIGTERM to the process group, SIGKILL to what is left after a grace period.
``wait_until`` is the wait-until-ready loop of a starting server; ``local_http`` the one client
its health polls share.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import psutil


def alive(pid: int) -> bool:
    """True while ``pid`` runs (our own exited child is reaped on the way)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # someone else's process: it exists
        return True


def start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` in clock ticks since boot (as /proc/PID/stat has it,
    and as pid files written by earlier versions recorded it); None if gone."""
    try:
        since_boot = psutil.Process(pid).create_time() - psutil.boot_time()
    except psutil.Error:
        return None
    return str(round(since_boot * os.sysconf("SC_CLK_TCK")))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def stop_group(pid: int, grace: float = 20.0, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to the process group led by ``pid``; SIGKILL it if it still runs after
    ``grace`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
    deadline = time.monotonic() + grace
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def wait_until(
    ready: Callable[[], bool], running: Callable[[], bool], timeout: float, every: float = 0.3
) -> bool:
    """Ask ``ready()`` every ``every`` seconds: True once it is, False when ``running()`` turns
    false or ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and running():
        if ready():
            return True
        time.sleep(every)
    return False


@functools.cache
def local_http() -> Any:
    """One ``httpx.Client`` for polling the servers this process started. ``httpx.get`` builds
    a client, and so reads the system's CA bundle, per call: ~60 ms of CPU here, 4.8 s over one
    `mlpipe train`'s wait for its Prefect server, on the cores its trials run on."""
    import httpx

    return httpx.Client()


def output_to_file(path: str | None) -> None:
    """Send this process's stdout and stderr to the file at ``path`` (None: leave them): a
    worker process's output then stays out of a user's terminal."""
    if path is not None:
        with open(path, "ab") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
