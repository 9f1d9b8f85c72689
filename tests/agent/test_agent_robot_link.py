"""The agent's side of the serial link: the HAL reader wakes once per few frames (its CPU is mostly wake-ups),
yet sees every frame, and a waiter still gets each frame as it completes. Against the simulator on a pty."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.model import Snapshot
from agent.robot_link import FRAMES_PER_READ, RobotLink
from hal.opcodes import OIMode
from hal.robot import Robot
from hal.sim.server import SimServer
from hal.transport import SerialTransport


@pytest.fixture
def sim() -> Iterator[SimServer]:
    tmp = Path(tempfile.mkdtemp(prefix="ra-link-", dir="/tmp"))
    try:
        with SimServer(link=tmp / "tty", seed=1) as server:
            yield server
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _counting_transport(url: str) -> tuple[SerialTransport, list[int]]:
    """A real serial transport whose non-empty reads (the reader's wake-ups with data) are counted."""
    transport = SerialTransport(url, 115200)
    real = transport.read
    reads = [0]

    def read(size: int = 4096) -> bytes:
        data = real(size)
        if data:
            reads[0] += 1
        return data

    transport.read = read  # type: ignore[method-assign]
    return transport, reads


def test_reader_batches_frames_and_loses_none(sim: SimServer) -> None:
    posted: list[Snapshot] = []
    transport, reads = _counting_transport(sim.url)
    robot = Robot(sim.url, hold_mode=None, frames_per_read=FRAMES_PER_READ, transport=transport)
    RobotLink(robot, posted.append, sample_s=0.2)
    with robot:
        robot.wait_for(lambda s: s.link.frames_ok >= 5, timeout=10, what="the stream")
        first_frames, first_reads = robot.state.link.frames_ok, reads[0]
        deadline = time.monotonic() + 30
        while robot.state.link.frames_ok < first_frames + 60 and time.monotonic() < deadline:
            time.sleep(0.05)
        state = robot.state
        frames, wakeups = state.link.frames_ok - first_frames, reads[0] - first_reads
    assert frames >= 60 and state.link.frames_corrupt == 0
    # each pause spans two or three stream periods unless a waiter is active: about three frames per read
    # (the bound leaves room for a simulator slowed down by a loaded machine)
    assert 0 < wakeups * 3 <= frames * 2 + 3, (wakeups, frames)
    assert len(state.sensors) >= 50 and state.sensors["oi_mode"] == int(OIMode.PASSIVE)
    with pytest.raises(TypeError):
        state.sensors["oi_mode"] = 3  # type: ignore[index]  # a snapshot stays read-only
    assert posted and posted[-1].link_up and posted[-1].frames > 0


def test_a_waiter_gets_every_frame(sim: SimServer) -> None:
    """While a wait_for waits, the reader stops batching so the waiter sees every frame."""
    transport, reads = _counting_transport(sim.url)
    robot = Robot(sim.url, hold_mode=None, frames_per_read=FRAMES_PER_READ, transport=transport)
    with robot:
        robot.wait_for(lambda s: s.link.frames_ok >= 3, timeout=10, what="the stream")
        start_reads, start_frames = reads[0], robot.state.link.frames_ok
        target = start_frames + 40
        robot.wait_for(lambda s: s.link.frames_ok >= target, timeout=30, what="40 more frames")
        frames, wakeups = robot.state.link.frames_ok - start_frames, reads[0] - start_reads
    # while someone waits the reader wakes about once per frame (more than the batched one per three)
    assert wakeups * 2 > frames, (wakeups, frames)


def test_frames_per_read_is_validated() -> None:
    with pytest.raises(ValueError, match="frames_per_read"):
        Robot("loop://", hold_mode=None, frames_per_read=0)
