"""Keeping the broker and the shadow service alive: start, wait until ready, restart with backoff, stop.

A crashed child is restarted after the project's one backoff (:class:`base.backoff.Backoff`: capped
exponential with full jitter, a ceiling of 0.5 s doubling to 30 s, started over after a minute of uptime),
and every restart is printed with its delay so a developer sees it in the ``up`` terminal.

Children never outlive the supervisor: on Linux each one asks the kernel for SIGTERM when its parent dies
(``PR_SET_PDEATHSIG``), so even a SIGKILLed ``up`` leaves no broker holding the port. ``up`` also cleans up
after a predecessor on platforms without it (``stale_children``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from base.backoff import Backoff
from base.logs import get_logger

log = get_logger("localcloud.supervisor")

BACKOFF_START_S = 0.5
BACKOFF_CAP_S = 30.0
STABLE_AFTER_S = 60.0


PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    prctl: Callable[..., int] = libc.prctl
    return prctl


_PRCTL = _load_prctl()


def die_with_parent(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when ``parent`` dies (None off Linux).

    Resolved before the fork (no imports or lookups in the child). The signal follows the parent *thread*
    that forked, so children must be started from a thread that lives as long as the supervisor (``up``
    starts them from its main thread). If the parent died before the request took effect, the child
    terminates itself at once.
    """
    prctl = _PRCTL
    if prctl is None:
        return None
    getppid, kill, getpid, term = os.getppid, os.kill, os.getpid, int(signal.SIGTERM)

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, term, 0, 0, 0)
        if getppid() != parent:
            kill(getpid(), term)

    return preexec


def restart_backoff() -> Backoff:
    return Backoff(base_s=BACKOFF_START_S, cap_s=BACKOFF_CAP_S)


def next_backoff(backoff: Backoff, uptime: float) -> float:
    """Seconds to wait before restarting a child that exited after ``uptime`` seconds. A child that ran for
    ``STABLE_AFTER_S`` counts as healthy: its next crash starts the sequence over."""
    if uptime >= STABLE_AFTER_S:
        backoff.reset()
    return backoff.next_delay()


@dataclass
class Child:
    """One supervised process. ``ready`` decides when a fresh start counts as up."""

    name: str
    argv: Sequence[str]
    log_path: Path
    ready: Callable[[Child], bool]
    stdout_pipe: bool = False
    before_start: Callable[[Child], None] | None = None
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff: Backoff = field(default_factory=restart_backoff)
    restart_delay: float = 0.0
    restart_at: float | None = None
    restarts: int = 0
    ready_event: threading.Event = field(default_factory=threading.Event)
    _log_file: IO[bytes] | None = None

    def start(self) -> None:
        self.ready_event.clear()
        if self.before_start is not None:
            self.before_start(self)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            list(self.argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if self.stdout_pipe else self._log_file,
            stderr=self._log_file,
            start_new_session=True,
            preexec_fn=die_with_parent(os.getpid()),
        )
        self.started_at = time.monotonic()
        if self.stdout_pipe:
            threading.Thread(target=self._watch_stdout, name=f"{self.name}-stdout", daemon=True).start()
        log.info("fleet.child.started", child=self.name, pid=self.proc.pid)

    def _watch_stdout(self) -> None:
        proc = self.proc
        assert proc is not None and proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == b"READY":
                self.ready_event.set()

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready(self):
                return True
            if self.proc is None or self.proc.poll() is not None:
                return False
            time.sleep(0.05)
        return False

    def stop(self, timeout: float = 5.0) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        log.info("fleet.child.stopped", child=self.name, code=proc.returncode)


class Supervisor:
    """Starts children in order, then restarts whichever exits until ``stop()``."""

    def __init__(self, children: Sequence[Child], say: Callable[[str], None] | None = None) -> None:
        self.children = list(children)
        self.stopping = threading.Event()
        self.say = say or (lambda text: print(text, file=sys.stderr, flush=True))
        self.on_change: Callable[[], None] | None = None

    def start_all(self, timeout: float = 20.0) -> str | None:
        """Start each child and wait for it; return a problem description, or None when all are up."""
        for child in self.children:
            child.start()
            if not child.wait_ready(timeout):
                code = child.proc.poll() if child.proc else None
                return f"{child.name} did not become ready (exit code {code}); see {child.log_path}"
        return None

    def poll_once(self, now: float) -> None:
        for child in self.children:
            proc = child.proc
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restart_at = None
                    child.restarts += 1
                    child.start()
                    if self.on_change:
                        self.on_change()
                continue
            if proc is None or proc.poll() is None:
                continue
            uptime = now - child.started_at
            child.restart_delay = next_backoff(child.backoff, uptime)
            child.restart_at = now + child.restart_delay
            child.stop()
            self.say(
                f"roomba-fleet: {child.name} exited with code {proc.returncode}; "
                f"restarting in {child.restart_delay:.1f}s (see {child.log_path})"
            )
            log.warning(
                "fleet.child.crashed",
                child=self.name_of(child),
                code=proc.returncode,
                backoff_s=child.restart_delay,
            )

    @staticmethod
    def name_of(child: Child) -> str:
        return child.name

    def run(self) -> None:
        while not self.stopping.wait(0.2):
            self.poll_once(time.monotonic())

    def stop_all(self) -> None:
        self.stopping.set()
        for child in reversed(self.children):
            child.stop()
