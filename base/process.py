"""Process facts every long-running part needs: is a pid alive, what is its command line, open-file limit,
and what a process costs (CPU seconds, resident memory; the benches read them)."""

from __future__ import annotations

import resource
from pathlib import Path

__all__ = ["cpu_seconds", "pid_alive", "process_cmdline", "raise_nofile_limit", "rss_mb"]


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


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used so far (Linux ``/proc``); 0.0 if it is gone."""
    import os

    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MiB (Linux ``/proc``); 0.0 if it is gone."""
    import os

    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, IndexError, ValueError):
        return 0.0


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
