"""Process facts every long-running part needs: is a pid alive, what is its command line, open-file limit."""

from __future__ import annotations

import resource
from pathlib import Path

__all__ = ["pid_alive", "process_cmdline", "raise_nofile_limit"]


def pid_alive(pid: object) -> bool:
    """True while ``pid`` runs. A zombie (exited, not yet reaped, e.g. orphaned in a container whose init
    does not reap) counts as gone; anything that is not a positive int is not a process."""
    import os

    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def process_cmdline(pid: int) -> list[str]:
    """The argv of a running process (Linux ``/proc``); empty if unknown or gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE to the hard limit (inherited by children: mosquitto never raises it itself);
    returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1_048_576
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft
