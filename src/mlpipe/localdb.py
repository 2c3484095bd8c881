"""A throwaway PostgreSQL server on a loopback port, for the tests, the database benchmark and
trying ``mlpipe score`` against a real database on a laptop.

It uses the server binaries of Debian's ``postgresql`` package (``/usr/lib/postgresql/*/bin``)
or whatever ``initdb`` is on PATH, creates a data folder in a temporary directory with password
authentication, starts ``postgres`` in its own session and, on exit, stops it by pid (a fast
shutdown) and removes the folder. As root it runs as the ``postgres`` user: PostgreSQL refuses
to run as root.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mlpipe.errors import UserError
from mlpipe.processes import free_port, stop_group


@dataclass(frozen=True)
class LocalPostgres:
    url: str  # postgresql+psycopg://USER@127.0.0.1:PORT/postgres, no password in it
    password: str
    port: int
    pid: int

    @property
    def dsn(self) -> str:
        """The URL as libpq and psycopg take it."""
        return self.url.replace("+psycopg", "")


def server_binaries() -> Path | None:
    """The folder of ``initdb`` and ``postgres``, or None when PostgreSQL is not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = found[-1] if found else shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@contextmanager
def local_postgres(user: str = "mlpipe", password: str = "mlpipe-local") -> Iterator[LocalPostgres]:
    """Start a server; yields where it listens; stops it and removes its data on exit."""
    import psycopg

    binaries = server_binaries()
    if binaries is None:
        raise UserError("PostgreSQL is not installed: apt-get install postgresql")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="mlpipe-pg-"))
    server = None
    try:
        (root / "pw").write_text(password)
        if as_user:
            shutil.chown(root, "postgres")
            shutil.chown(root / "pw", "postgres")
        subprocess.run(
            [*as_user, str(binaries / "initdb"), "-D", str(root / "data"), "-U", user,
             "-E", "UTF8", "--auth=scram-sha-256", f"--pwfile={root / 'pw'}"],
            check=True, capture_output=True,
        )  # fmt: skip
        port = free_port()
        with (root / "server.log").open("wb") as log:
            server = subprocess.Popen(
                [*as_user, str(binaries / "postgres"), "-D", str(root / "data"), "-p", str(port),
                 "-k", str(root), "-c", "listen_addresses=127.0.0.1"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        found = LocalPostgres(
            f"postgresql+psycopg://{user}@127.0.0.1:{port}/postgres", password, port, server.pid
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg.connect(found.dsn, password=password).close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline or server.poll() is not None:
                    log_text = (root / "server.log").read_text()[-2000:]
                    raise RuntimeError(f"PostgreSQL did not start:\n{log_text}") from None
                time.sleep(0.2)
        yield found
    finally:
        if server is not None and server.poll() is None:
            stop_group(server.pid, 30, signal.SIGINT)  # fast shutdown: SIGTERM waits for clients
            server.wait()
        shutil.rmtree(root, ignore_errors=True)
