"""Fault injection on the simulated serial line: corrupted and dropped bytes, and a line-rate pacer.

Both are sans-I/O and seeded so that a failing test can be replayed byte for byte.
"""

from __future__ import annotations

import random

from hal.codec import BAUD_CODES as CODEC_BAUD_CODES
from hal.models import MODELS

# Baud (129) code -> rate, from the codec's table (code 0 = 300 … 11 = 115200).
BAUD_CODES: tuple[int, ...] = tuple(
    rate for rate, _code in sorted(CODEC_BAUD_CODES.items(), key=lambda i: i[1])
)
DEFAULT_BAUD = MODELS["create2"].baud
BITS_PER_BYTE = 10  # 8N1: start + 8 data + stop


class ByteNoise:
    """Corrupt (XOR with a random non-zero byte) or drop a fraction of the bytes the robot sends."""

    def __init__(self, rng: random.Random, corrupt: float = 0.0, drop: float = 0.0) -> None:
        self.rng = rng
        self.corrupt = 0.0
        self.drop = 0.0
        self.corrupted = 0
        self.dropped = 0
        self.configure(corrupt, drop)

    def configure(self, corrupt: float, drop: float) -> None:
        for name, value in (("corrupt", corrupt), ("drop", drop)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"noise {name} must be a fraction between 0 and 1, got {value}")
        self.corrupt, self.drop = float(corrupt), float(drop)

    @property
    def active(self) -> bool:
        return self.corrupt > 0.0 or self.drop > 0.0

    def apply(self, data: bytes) -> bytes:
        if not self.active or not data:
            return data
        out = bytearray()
        rnd = self.rng.random
        for byte in data:
            r = rnd()
            if r < self.drop:
                self.dropped += 1
                continue
            if r < self.drop + self.corrupt:
                byte ^= self.rng.randint(1, 255)
                self.corrupted += 1
            out.append(byte)
        return bytes(out)


class PacedOutput:
    """Releases queued bytes no faster than a UART at ``baud`` would deliver them.

    A byte counts as delivered when its stop bit has gone out, so at time ``t`` the receiver has seen
    ``floor((t - start) * baud / 10)`` bytes of a burst queued at ``start``. The queue is capped like the
    robot's small transmit buffer: asking for more than the line can carry (an oversized stream) loses bytes,
    which is how the spec says an over-subscribed stream "eventually becomes corrupted" (the robot passes a
    small ``limit`` for stream frames).
    ``baud=None`` disables pacing (the in-process fleet simulator has no line to model).
    """

    def __init__(self, baud: int | None = DEFAULT_BAUD, capacity: int = 65536) -> None:
        self.baud = baud
        self.capacity = capacity
        self._buf = bytearray()
        self._line_t = 0.0
        self.overflowed = 0
        self.sent = 0

    @property
    def rate(self) -> float | None:
        return self.baud / BITS_PER_BYTE if self.baud else None

    def __len__(self) -> int:
        return len(self._buf)

    def clear(self) -> None:
        self._buf.clear()

    def push(self, data: bytes, now: float, latency: float = 0.0, limit: int | None = None) -> None:
        """Queue ``data``; keep at most ``limit`` bytes queued (default: the capacity), dropping the rest."""
        if not data:
            return
        if not self._buf:
            self._line_t = max(self._line_t, now + latency)
        room = min(self.capacity, limit if limit is not None else self.capacity) - len(self._buf)
        room = max(0, room)
        if len(data) > room:
            self.overflowed += len(data) - room
            data = data[:room]
        self._buf += data

    def pop(self, now: float) -> bytes:
        if not self._buf:
            return b""
        rate = self.rate
        if rate is None:
            out = bytes(self._buf)
            self._buf.clear()
            self.sent += len(out)
            return out
        if now <= self._line_t:
            return b""
        n = min(len(self._buf), int((now - self._line_t) * rate))
        if n <= 0:
            return b""
        out = bytes(self._buf[:n])
        del self._buf[:n]
        self._line_t += n / rate
        self.sent += n
        return out

    def next_ready(self, chunk: int = 96) -> float | None:
        """When at least ``chunk`` bytes (or all that is queued) will have been delivered."""
        if not self._buf:
            return None
        rate = self.rate
        if rate is None:
            return 0.0
        return self._line_t + min(chunk, len(self._buf)) / rate
