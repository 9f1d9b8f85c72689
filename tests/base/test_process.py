"""The one pid-alive check and the process facts the supervisor and the agent's lock file rely on."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from base.process import pid_alive, process_cmdline, raise_nofile_limit
from base.testing import wait_until


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]


def test_own_pid_is_alive() -> None:
    """The running process itself is alive (the simplest true case of the one pid check)."""
    assert pid_alive(os.getpid())


def test_a_reaped_child_is_gone() -> None:
    """Once waited for, a child's pid no longer counts (a stale lock file's pid is not running)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not pid_alive(child.pid)


def test_a_zombie_counts_as_gone() -> None:
    """Exited but not reaped (an orphan in a container whose init does not reap): not alive."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        wait_until(lambda: _state(child.pid) == "Z", 10, "the child to become a zombie")
        assert not pid_alive(child.pid)
    finally:
        child.wait()


def test_a_running_child_is_alive_until_killed() -> None:
    """A live child is alive, and no longer once killed and reaped."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert pid_alive(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not pid_alive(child.pid)


@pytest.mark.parametrize(
    "pid",
    [None, "1234", 12.0, True, False, 0, -1, [1]],
    ids=["none", "str", "float", "true", "false", "zero", "negative", "list"],
)
def test_anything_but_a_positive_int_is_not_a_process(pid: object) -> None:
    """A pid read from a corrupt file (JSON ``true``, a string) is never "alive"; 0 and -1 would signal
    whole process groups."""
    assert not pid_alive(pid)


def test_process_cmdline_of_a_child_and_after_it_is_gone() -> None:
    """The argv as the child was started (how the supervisor tells its broker from a reused pid)."""
    argv = [sys.executable, "-c", "import time; time.sleep(60)", "marker-arg"]
    child = subprocess.Popen(argv)
    try:  # between fork and exec the child still shows pytest's argv
        wait_until(lambda: process_cmdline(child.pid) == argv, 10, "the child's own argv")
    finally:
        child.kill()
        child.wait()
    assert process_cmdline(child.pid) == []


def test_process_cmdline_of_self_matches_proc() -> None:
    """The argv of this very process, as /proc/self/cmdline has it."""
    own = [part.decode() for part in Path("/proc/self/cmdline").read_bytes().split(b"\0") if part]
    assert process_cmdline(os.getpid()) == own


def test_raise_nofile_limit_returns_the_soft_limit_in_force() -> None:
    """Idempotent, never lowers the limit, and reports what ``getrlimit`` then says."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    soft = raise_nofile_limit()
    assert soft >= before
    assert soft == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert raise_nofile_limit() == soft
