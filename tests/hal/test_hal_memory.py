"""The HAL in memory: the Transport protocol, the memory cable, a thread-less Robot driven by ``step(now)``,
and ``hal.testing.RobotPair`` (the Robot and the simulator back to back on one simulated clock)."""

from __future__ import annotations

import threading
import time

import pytest
from structlog.testing import capture_logs

from hal import codec
from hal.errors import NoResponseError, TransportError
from hal.opcodes import OIMode
from hal.robot import LinkDown, LinkUp, ModeReentry, Robot, RobotEvent, reopen_backoff
from hal.sim.cable import SimCable
from hal.sim.robot import SimRobot
from hal.testing import RobotPair
from hal.transport import MemoryTransport, SerialTransport, Transport

pytestmark = pytest.mark.timeout(30)


# --- the transports -----------------------------------------------------------------------------------------


def test_both_transports_implement_the_protocol() -> None:
    """``Robot(transport=...)`` takes any Transport: the serial port and the memory cable both are one."""
    assert isinstance(SerialTransport("loop://"), Transport)
    assert isinstance(MemoryTransport(), Transport)


def test_memory_transport_carries_bytes_both_ways() -> None:
    """Host writes wait for the robot side; the robot side's bytes are read in order, at most ``size``."""
    cable = MemoryTransport()
    cable.open()
    cable.write(b"\x80")
    cable.write(b"\x83")
    assert cable.take_for_robot() == b"\x80\x83"
    assert cable.take_for_robot() == b""
    cable.deliver(b"abcdef")
    assert cable.read(4) == b"abcd" and cable.read() == b"ef" and cable.read() == b""
    cable.deliver(b"stale")
    cable.reset_input()
    assert cable.read() == b""
    assert cable.wake() is True and cable.wake_requests == 1


def test_memory_transport_unplugged_fails_like_a_serial_port() -> None:
    """Unplugged: reads fail and close the link, writes and reopening fail, bytes in flight are lost."""
    cable = MemoryTransport("memory://unit")
    cable.open()
    cable.write(b"\x87")
    cable.deliver(b"frame")
    cable.unplug()
    assert not cable.plugged and cable.take_for_robot() == b""
    with pytest.raises(TransportError, match="memory://unit is not open"):
        cable.write(b"\x87")
    with pytest.raises(TransportError, match="unplugged"):
        cable.read()
    assert not cable.is_open
    with pytest.raises(TransportError, match="cannot open memory://unit"):
        cable.open()
    cable.deliver(b"lost")  # the robot talks into a pulled cable
    cable.plug()
    cable.open()
    assert cable.read() == b""
    cable.close()
    assert cable.wake() is False  # no BRC pulse through a closed port


def test_memory_transport_read_timeout_waits_for_the_robot() -> None:
    """With a read timeout (for the Robot's reader thread) a read waits for bytes instead of spinning."""
    cable = MemoryTransport(read_timeout=0.5)
    cable.open()
    started = time.monotonic()
    threading.Timer(0.05, cable.deliver, args=(b"late",)).start()
    assert cable.read() == b"late"
    assert 0.03 < time.monotonic() - started < 0.4
    quiet = MemoryTransport(read_timeout=0.05)
    quiet.open()
    started = time.monotonic()
    assert quiet.read() == b""
    assert time.monotonic() - started >= 0.04


def test_robot_reader_thread_runs_over_a_memory_transport() -> None:
    """The threaded Robot is transport-agnostic: it holds Safe against a simulator behind a memory cable."""
    cable = MemoryTransport("memory://threaded", read_timeout=0.05)
    sim = SimRobot(seed=3, now=time.monotonic())
    stop = threading.Event()

    def wire() -> None:
        wakes = 0
        while not stop.is_set():
            now = time.monotonic()
            if cable.wake_requests != wakes:
                wakes = cable.wake_requests
                sim.wake(now)
            out = cable.take_for_robot()
            if out:
                sim.feed(out, now)
            data = sim.poll(now)
            if data:
                cable.deliver(data)
            time.sleep(0.003)

    pump = threading.Thread(target=wire, daemon=True)
    pump.start()
    try:
        with Robot(cable.url, hold_mode=OIMode.SAFE, transport=cable) as robot:
            state = robot.wait_for(lambda s: s.oi_mode == OIMode.SAFE and s.link.frames_ok >= 10, timeout=5)
            assert state.link.connected and robot.reader_alive
            assert sim.mode == OIMode.SAFE
        assert not robot.reader_alive
        deadline = time.monotonic() + 2
        while sim.mode != OIMode.PASSIVE and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        pump.join(timeout=2)
    assert sim.mode == OIMode.PASSIVE  # close() handed it back


# --- a thread-less Robot ----------------------------------------------------------------------------------


def test_step_does_nothing_before_start_or_after_close() -> None:
    """A ticker may step a Robot that is not started yet or already closed: it must not open the link."""
    cable = MemoryTransport()
    robot = Robot(cable.url, hold_mode=None, transport=cable, reader_thread=False)
    assert not robot.running and robot.step(0.0) == 0.0 and not cable.is_open
    robot.start()
    assert robot.running and robot.reader_alive  # its stepping is the caller's
    robot.step(0.0)
    assert cable.is_open and cable.take_for_robot().startswith(bytes([128]))  # the handshake: Start first
    robot.close()
    assert not robot.running and not robot.reader_alive and not cable.is_open
    robot.step(1.0)
    assert not cable.is_open


def test_step_reopens_a_failing_link_at_the_backoff_pace_and_warns_once() -> None:
    """While the cable is out, opening is tried when the backoff allows, not on every step; one warning."""
    cable = MemoryTransport()
    cable.unplug()
    robot = Robot(
        cable.url, hold_mode=None, transport=cable, reader_thread=False, backoff=reopen_backoff(lambda: 1.0)
    )
    robot.start()
    with capture_logs() as logs:
        assert robot.step(0.0) == pytest.approx(0.05)  # the wait before the next attempt
        assert robot.step(0.02) == pytest.approx(0.03)  # too early: no attempt
        assert robot.step(0.06) == pytest.approx(0.1)
        assert robot.step(0.17) == pytest.approx(0.2)
    attempts = [e for e in logs if e["event"] == "oi.link.open_failed"]
    assert [e["log_level"] for e in attempts] == ["warning", "debug", "debug"]
    cable.plug()
    robot.step(0.4)
    assert cable.is_open and robot.state.link.connected
    robot.close()


def test_start_without_a_thread_starts_no_thread() -> None:
    """``reader_thread=False`` is for callers that step many robots: start() must add no thread."""
    before = threading.active_count()
    cable = MemoryTransport()
    robot = Robot(cable.url, transport=cable, reader_thread=False).start()
    assert threading.active_count() == before
    robot.close()


# --- RobotPair ----------------------------------------------------------------------------------------------


def test_pair_streams_and_holds_the_requested_mode() -> None:
    """The handshake, the stream and mode holding, end to end in simulated time."""
    with RobotPair(seed=1, hold_mode=OIMode.SAFE) as pair:
        state = pair.run_until(lambda s: s.oi_mode == OIMode.SAFE, timeout=1.0, what="Safe")
        assert pair.sim.mode == OIMode.SAFE and state.link.connected
        pair.robot.drive(200)
        state = pair.advance(1.0)
        assert 150 < state.pose.x_mm < 250
        assert state.link.frames_per_s == pytest.approx(1 / 0.015, rel=0.05)
        assert state.updated_at == pytest.approx(pair.now, abs=0.016)  # frames stamped on the pair's clock


def test_pair_is_deterministic_for_a_seed() -> None:
    """Same seed, same steps: the same state, byte for byte, so a failure reproduces."""
    states = []
    for _ in range(2):
        with RobotPair(seed=7, hold_mode=OIMode.FULL) as pair:
            pair.advance(0.2)
            pair.robot.drive_direct(150, 100)
            states.append(pair.advance(1.5))
    assert states[0] == states[1]


def test_pair_reenters_safe_after_a_wheel_drop() -> None:
    """The simulator drops to Passive on a wheel drop; the Robot sends Safe again once it can."""
    events: list[RobotEvent] = []
    with RobotPair(seed=2, hold_mode=OIMode.SAFE) as pair:
        pair.robot.add_listener(events.append)
        pair.run_until(lambda s: s.oi_mode == OIMode.SAFE, timeout=1.0)
        pair.sim.control({"op": "wheel_drop", "on": True}, pair.now)
        pair.run_until(lambda s: s.oi_mode == OIMode.PASSIVE, timeout=1.0, what="the drop to Passive")
        pair.sim.control({"op": "wheel_drop", "on": False}, pair.now)
        pair.run_until(lambda s: s.oi_mode == OIMode.SAFE, timeout=3.0, what="Safe again")
    assert any(isinstance(e, ModeReentry) and e.mode == OIMode.SAFE for e in events)


def test_pair_recovers_from_an_unplugged_cable() -> None:
    """Unplug: LinkDown; plug back: LinkUp with one reconnect, the handshake again, frames flow."""
    events: list[RobotEvent] = []
    with RobotPair(seed=3, hold_mode=OIMode.SAFE) as pair:
        pair.robot.add_listener(events.append)
        pair.advance(0.5)
        pair.unplug()
        state = pair.advance(0.5)
        assert not state.link.connected and any(isinstance(e, LinkDown) for e in events)
        frames = state.link.frames_ok
        pair.plug()
        state = pair.run_until(lambda s: s.link.frames_ok > frames + 10, timeout=3.0, what="frames again")
    assert state.link.reconnects == 1 and any(isinstance(e, LinkUp) and e.reconnects == 1 for e in events)


def test_pair_wakes_a_sleeping_robot_after_silence() -> None:
    """A robot that fell asleep goes silent; the silence handshake pulses BRC and the stream resumes."""
    with RobotPair(seed=4, hold_mode=None, silence_s=0.5) as pair:
        pair.advance(0.5)
        pair.sim.control({"op": "sleep"}, pair.now)
        frames = pair.advance(1.0).link.frames_ok
        wakes = pair.transport.wake_requests
        pair.run_until(lambda s: s.link.frames_ok > frames + 10, timeout=5.0, what="the stream after a wake")
        assert pair.transport.wake_requests > wakes


def test_pair_close_hands_the_robot_back_in_passive() -> None:
    """Closing a thread-less Robot says goodbye as a threaded one does: wheels off, stream paused, Passive."""
    pair = RobotPair(seed=5, hold_mode=OIMode.SAFE)
    pair.run_until(lambda s: s.oi_mode == OIMode.SAFE, timeout=1.0)
    pair.robot.drive(100)
    pair.advance(0.1)
    pair.close()
    assert pair.sim.mode == OIMode.PASSIVE and not pair.sim.stream_on
    assert pair.sim.requested_velocity == 0 or (pair.sim.requested_right, pair.sim.requested_left) == (0, 0)


def test_pair_run_until_times_out_with_the_link_state() -> None:
    """A condition that never holds fails after the timeout in simulated time, saying what was seen."""
    with RobotPair(seed=6) as pair:
        pair.unplug()
        with pytest.raises(NoResponseError, match="connected=False"):
            pair.run_until(lambda s: s.link.connected, timeout=0.3, what="a link")
        assert pair.now == pytest.approx(0.3)


def test_pair_clock_only_runs_forward() -> None:
    """Stepping to an earlier time is a test bug: refuse it instead of confusing the Robot's timers."""
    with RobotPair() as pair:
        pair.advance(0.1)
        with pytest.raises(ValueError, match="runs forward"):
            pair.step(0.05)


def test_sim_cable_carries_bytes_both_ways_and_delivers_before_an_unplug() -> None:
    """The one cable behind RobotPair and the fleet's SimLink: host bytes reach the simulator, its answer
    reaches the host, and bytes written just before an unplug are not lost."""
    sim = SimRobot(seed=3, now=0.0, pace=False)
    transport = MemoryTransport("memory://cable")
    transport.open()
    cable = SimCable(sim, transport)
    for t in (0.0, 3.0):  # past the simulated boot: the robot answers once it is up
        cable.carry(t)
    transport.read()
    transport.write(codec.start() + codec.sensors(35))
    cable.carry(3.1)
    assert transport.read() == bytes([1])  # packet 35 in Passive
    transport.write(codec.clean())
    cable.unplug(3.2)
    assert [e.name for e in sim.drain_events() if getattr(e, "name", None) == "Clean"] == ["Clean"]
