"""Shared fixtures for the HAL tests (client side and simulator)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hal.sim.server import SimServer


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary directory: Unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="rsim-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sim_pty(short_tmp: Path) -> Iterator[SimServer]:
    """A simulated Create 2 on a real pty: open ``sim_pty.url`` with pyserial at 115200.

    ``sim_pty.control({...})`` injects faults (see docs/sim.md), ``sim_pty.world`` is the physical state,
    and every command received is appended to ``short_tmp / "record.jsonl"``.
    """
    with SimServer(
        link=short_tmp / "tty", control=short_tmp / "ctl", record=short_tmp / "record.jsonl", seed=1
    ) as server:
        yield server


@pytest.fixture
def sim_tcp(short_tmp: Path) -> Iterator[SimServer]:
    """A simulated Create 2 on TCP (a free port on 127.0.0.1): ``sim_tcp.url`` is ``socket://127.0.0.1:N``."""
    with SimServer(tcp=("127.0.0.1", 0), control=short_tmp / "ctl", seed=1) as server:
        yield server
