"""HAL errors, split by whose fault they are.

We asked for something illegal (a speed out of range, a command the mode ignores): raise before sending
anything. The robot sent something illegal (bad checksum, garbage): that is never an exception, it is an
event and a counter in :mod:`hal.codec`. The link failed: :class:`TransportError`, which the Robot handles
by reconnecting.
"""

from __future__ import annotations

__all__ = [
    "CommandRangeError",
    "HalError",
    "ModeError",
    "NoResponseError",
    "StreamBudgetError",
    "TransportError",
]


class HalError(Exception):
    """Base class of every error the HAL raises."""


class CommandRangeError(HalError, ValueError):
    """A command argument is outside what the OI accepts; nothing was sent."""

    def __init__(self, command: str, field: str, value: object, allowed: str) -> None:
        self.command = command
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(
            f"{command}: {field}={value!r} is out of range (allowed: {allowed}); nothing was sent"
        )


class StreamBudgetError(HalError, ValueError):
    """A requested stream does not fit the 15 ms slot at the link's baud rate; nothing was sent."""


class ModeError(HalError):
    """The robot's OI mode does not accept this command (e.g. driving in Passive); nothing was sent."""


class TransportError(HalError, OSError):
    """The serial link failed (unplugged adapter, closed socket, unopenable port)."""


class NoResponseError(HalError, TimeoutError):
    """The robot did not answer within the allowed time."""
