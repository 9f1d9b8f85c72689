"""Holding an OI mode, sans-I/O: the mode the robot reports goes in, the commands to send come out.

The robot leaves Safe for Passive on its own (a cliff, a wheel drop, the charger: Create 2 OI spec, "Safe
mode"). Re-entering on every frame would flood the line while the cause lasts, so attempts are spaced
:data:`REENTRY_FIRST_S` apart, doubling up to :data:`REENTRY_CAP_S`, and the pace resets once the held mode is
reported again. :class:`ModeKeeper` decides; the Robot writes and logs.
"""

from __future__ import annotations

from dataclasses import dataclass

from hal import codec
from hal.opcodes import OPCODES, OIMode

__all__ = ["REENTRY_CAP_S", "REENTRY_FIRST_S", "ModeKeeper", "ModeReentry"]

REENTRY_FIRST_S = 0.2
REENTRY_CAP_S = 5.0
_IN_CONTROL = (OIMode.SAFE, OIMode.FULL)


@dataclass(frozen=True, slots=True)
class ModeReentry:
    """The robot left the held mode (it reports ``observed``) and the Robot sent the command again."""

    mode: OIMode
    observed: OIMode
    attempt: int
    at: float

    @property
    def commands(self) -> tuple[bytes, ...]:
        """What re-enters ``mode``: from Off the OI needs Start first."""
        enter = codec.enter_mode(self.mode)
        return (codec.start(), enter) if self.observed == OIMode.OFF else (enter,)


class ModeKeeper:
    """The mode to hold (None: never fight the robot), and whether the robot was powered off on purpose.

    ``dormant`` (after Power) means: do not wake the robot, until :meth:`request` asks for a mode again.
    """

    def __init__(self, hold: OIMode | None) -> None:
        self.hold = OIMode(hold) if hold is not None else None
        self.dormant = False
        self.attempts = 0
        self._delay = REENTRY_FIRST_S
        self._retry_at = 0.0

    def request(self, mode: OIMode, observed: OIMode | None) -> tuple[bytes, ...]:
        """Hold ``mode`` from now on (Off: hold nothing, but send it); returns the commands that enter it from
        ``observed`` (Safe and Full need Start first while the OI is off or not yet heard from)."""
        mode = OIMode(mode)
        self.dormant = False
        self.hold = mode if mode != OIMode.OFF else None
        self._delay, self.attempts = REENTRY_FIRST_S, 0
        enter = codec.enter_mode(mode)
        if mode in _IN_CONTROL and observed in (None, OIMode.OFF):
            return codec.start(), enter
        return (enter,)

    def release(self, *, dormant: bool = False) -> None:
        """The robot's own firmware takes over (clean, dock, ...): stop holding; ``dormant``: it powered off."""
        self.hold = None
        if dormant:
            self.dormant = True

    def handshake(self) -> tuple[bytes, ...]:
        """What a fresh link sends before the stream request: Start, then the held mode if it is Safe/Full."""
        hold = self.hold
        if hold is not None and hold in _IN_CONTROL:
            return codec.start(), codec.enter_mode(hold)
        return (codec.start(),)

    def closing(self, observed: OIMode | None, release: bool) -> tuple[bytes, ...]:
        """What closing the link sends: stop the wheels if in control (Safe/Full), pause the stream, and with
        ``release`` hand the robot back in Passive (where it charges, as the spec recommends)."""
        if observed not in _IN_CONTROL:
            return (codec.pause_resume_stream(False),)
        stop = codec.drive_direct(0, 0), codec.pause_resume_stream(False)
        return (*stop, codec.start()) if release else stop

    def observe(self, mode: OIMode, now: float) -> ModeReentry | None:
        """The robot reports ``mode`` at ``now``: a re-entry to send (its :attr:`ModeReentry.commands`), if
        the robot left the held mode and the pace allows one now; Passive is held as long as the OI is on."""
        hold = self.hold
        if hold is None or mode == hold or (hold == OIMode.PASSIVE and mode != OIMode.OFF):
            if hold is not None and mode == hold:
                self._delay, self.attempts = REENTRY_FIRST_S, 0
            return None
        if now < self._retry_at:
            return None
        self.attempts += 1
        self._retry_at = now + self._delay
        self._delay = min(REENTRY_CAP_S, self._delay * 2)
        return ModeReentry(hold, mode, self.attempts, now)

    def refusal(self, opcode: int, observed: OIMode | None) -> str | None:
        """Why the robot in ``observed`` would ignore ``opcode`` and what to do instead (None: it would not)."""
        spec = OPCODES[opcode]
        if observed is None or observed in spec.allowed_modes:
            return None
        hint, hold = "", self.hold
        if hold is not None and hold in spec.allowed_modes:
            hint = f"; the Robot is re-entering {hold.name} (the robot dropped out of it), try again"
        elif OIMode.SAFE in spec.allowed_modes:
            hint = "; call set_mode(OIMode.SAFE) or set_mode(OIMode.FULL) first"
        return f"{spec.name} is ignored by the robot in {observed.name}{hint}; nothing was sent"
