"""The link's bookkeeping, pure: the Robot owns the clock and the port, these decide and count.

:class:`LinkStats` keeps what an operator reads to tell a dead robot from a flaky cable (frames per second over
the last :data:`RATE_WINDOW_S`, the last frame's age, reconnects) next to the stream parser's own counters;
:class:`Reopening` paces attempts to reopen a failed port; :class:`ReadPacing` says how long the reader may
sleep after a read; :class:`Watchdog` says when to pulse the wake line and when a silent stream needs a new
handshake.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

from base.backoff import Backoff
from hal.codec import StreamParser, stream_frame_size

__all__ = [
    "RATE_WINDOW_S",
    "READ_EARLY_S",
    "STREAM_PERIOD_S",
    "LinkHealth",
    "LinkStats",
    "ReadPacing",
    "Reopening",
    "Watchdog",
]

RATE_WINDOW_S = 2.0
STREAM_PERIOD_S = 0.015  # the OI sends a stream frame every 15 ms
READ_EARLY_S = 0.001


@dataclass(frozen=True, slots=True)
class LinkHealth:
    port: str
    connected: bool = False
    frames_ok: int = 0
    frames_corrupt: int = 0
    frames_per_s: float = 0.0
    bytes_discarded: int = 0
    text_lines: int = 0
    reconnects: int = 0
    last_frame_age_s: float | None = None


class LinkStats:
    """What happened on one port's link, stamped with the caller's clock.

    The first :meth:`link_up` is the connection, every later one a reconnect. ``frames_per_s`` counts the
    frames of the last :data:`RATE_WINDOW_S` seconds, and reads 0 once the newest is older than that.
    """

    def __init__(self, port: str, parser: StreamParser) -> None:
        self.port = port
        self.parser = parser
        self.connected = False
        self.reconnects = 0
        self.up_at = 0.0
        self.last_frame_at: float | None = None
        self._ever_connected = False
        self._times: deque[float] = deque()

    def link_up(self, now: float) -> int:
        """The link (re)opened at ``now``; returns the reconnect count."""
        self.up_at = now
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True
        self.connected = True
        return self.reconnects

    def link_down(self) -> None:
        self.connected = False

    @property
    def framed_since_up(self) -> bool:
        """Whether a frame arrived on the current link (a port that opens and fails at once never has one)."""
        return self.last_frame_at is not None and self.last_frame_at >= self.up_at

    def frame(self, now: float) -> float | None:
        """A frame arrived at ``now``; returns the seconds since the previous one (None: the first)."""
        times = self._times
        times.append(now)
        while times and now - times[0] > RATE_WINDOW_S:
            times.popleft()
        previous, self.last_frame_at = self.last_frame_at, now
        return None if previous is None else now - previous

    def health(self, now: float) -> LinkHealth:
        times = self._times
        span = now - times[0] if len(times) > 1 else 0.0
        rate = (len(times) - 1) / span if span > 0 else 0.0
        parser = self.parser
        last = self.last_frame_at
        return LinkHealth(
            port=self.port,
            connected=self.connected,
            frames_ok=parser.frames_ok,
            frames_corrupt=parser.frames_corrupt,
            frames_per_s=round(rate, 2),
            bytes_discarded=parser.bytes_discarded,
            text_lines=parser.text_lines,
            reconnects=self.reconnects,
            last_frame_age_s=None if last is None else max(0.0, now - last),
        )

    def current(self, health: LinkHealth, now: float) -> LinkHealth:
        """``health`` (published at the last frame) as of ``now``: the frame's age, and no rate once stale."""
        last = self.last_frame_at
        if last is None:
            return health
        age = max(0.0, now - last)
        rate = health.frames_per_s if age < RATE_WINDOW_S else 0.0
        return replace(health, last_frame_age_s=age, frames_per_s=rate)


class Reopening:
    """When to try a port that failed again: after ``backoff``'s next delay.

    The backoff only resets (:meth:`settled`) once a frame has arrived on the new link, so a port that opens
    and fails at once (a flapping adapter, a server that accepts and hangs up) is retried at the capped pace.
    """

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self.at = 0.0
        self.failing = False

    def restart(self) -> None:
        """Try at once, and warn again about the first failure."""
        self.at, self.failing = 0.0, False

    def wait(self, now: float) -> float:
        """Seconds until the next attempt (0 or less: now)."""
        return self.at - now

    def failed(self, now: float) -> float:
        """An attempt to open failed at ``now``; returns the wait before the next."""
        self.failing = True
        return self.later(now)

    def later(self, now: float) -> float:
        """Not now (a link that failed before its first frame): returns the wait before the next attempt."""
        self.at = now + self.backoff.next_delay()
        return self.at - now

    def opened(self) -> None:
        self.failing = False

    def settled(self) -> None:
        self.backoff.reset()


class ReadPacing:
    """How long the reader sleeps after a read that returned bytes.

    The line is paced by the baud rate (an 84-byte frame takes 7.3 ms at 115200), so a reader that wakes for
    every few bytes spends its CPU on wake-ups. A partial frame waits for the bytes still missing; after a
    whole frame the next one cannot be complete for another stream period, so sleep most of it (waking a
    little early, then for the few missing bytes, keeps the delay below one frame time). ``frames_per_read``
    above 1 adds whole periods, so that many frames are read in one wake-up, unless someone is ``waiting``.
    """

    def __init__(self, stream_ids: tuple[int, ...], baud: int, frames_per_read: int = 1) -> None:
        if not (isinstance(frames_per_read, int) and 1 <= frames_per_read <= 10):
            raise ValueError(f"frames_per_read must be an integer from 1 to 10, got {frames_per_read!r}")
        self.frames_per_read = frames_per_read
        self.frame_size = stream_frame_size(stream_ids)
        self.byte_s = 10.0 / baud  # start bit, 8 data bits, stop bit

    def pause(self, buffered: int, waiting: bool = False) -> float:
        """The sleep after a read that left ``buffered`` bytes of an unfinished frame in the parser."""
        later = 0.0 if waiting else (self.frames_per_read - 1) * STREAM_PERIOD_S
        if 0 < buffered < self.frame_size:
            return later + (self.frame_size - buffered) * self.byte_s
        return later + STREAM_PERIOD_S - READ_EARLY_S


class Watchdog:
    """Two timers of a live link: the BRC keep-awake pulse and the silence that calls for a new handshake.

    In Passive the robot sleeps after 5 minutes without activity, so the wake line is pulsed every
    ``keep_awake_s``; with no frame for ``silence_s`` after the last frame or handshake, the Robot wakes the
    robot and restarts the stream.
    """

    def __init__(self, silence_s: float, keep_awake_s: float) -> None:
        self.silence_s = silence_s
        self.keep_awake_s = keep_awake_s
        self.handshake_at = 0.0
        self.awake_pulse_at = 0.0

    def handshook(self, now: float) -> None:
        self.handshake_at = self.awake_pulse_at = now

    def pulse_due(self, now: float) -> bool:
        """Whether to pulse the wake line now (a robot in Passive, on a port with modem lines); if so, the
        pulse counts as done."""
        if now - self.awake_pulse_at > self.keep_awake_s:
            self.awake_pulse_at = now
            return True
        return False

    def silent_for(self, now: float, last_frame_at: float | None) -> float | None:
        """Seconds since the last frame (or the handshake) if the stream counts as silent, else None."""
        last = self.handshake_at if last_frame_at is None else last_frame_at
        if now - max(last, self.handshake_at) > self.silence_s:
            return now - last
        return None
