"""Is a process running, and is it still the one we started? For pid files and temporaries.

``alive`` treats a zombie (exited, not yet reaped by its parent) as gone. ``start_time`` is the
kernel's start time of a pid (Linux ``/proc``), recorded beside a pid so that a pid the system
has since reused for another program is never mistaken for ours.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def alive(pid: int) -> bool:
    """True while ``pid`` runs."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own exited child: reap it
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    with contextlib.suppress(OSError, IndexError):
        return _stat_fields(pid)[0] != "Z"
    return True


def start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid``; None where /proc does not exist."""
    with contextlib.suppress(OSError, IndexError):
        return _stat_fields(pid)[19]
    return None


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (which may hold spaces and parentheses)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
