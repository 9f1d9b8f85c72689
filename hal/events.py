"""What the Robot tells its listeners, and the fan-out that calls them.

Events are small frozen dataclasses (as in h11): the Robot's own (:class:`StateUpdated` after every frame,
:class:`ModeChanged`, :class:`~hal.mode.ModeReentry`, :class:`LinkDown`, :class:`LinkUp`) and the stream
parser's (:data:`~hal.codec.StreamEvent`: battery lines, the firmware banner, corrupt frames, text).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hal.codec import StreamEvent
from hal.mode import ModeReentry
from hal.opcodes import OIMode
from hal.state import RobotState

__all__ = [
    "LinkDown",
    "LinkUp",
    "Listener",
    "Listeners",
    "ModeChanged",
    "RobotEvent",
    "StateUpdated",
]


@dataclass(frozen=True, slots=True)
class StateUpdated:
    state: RobotState


@dataclass(frozen=True, slots=True)
class ModeChanged:
    old: OIMode | None
    new: OIMode
    at: float


@dataclass(frozen=True, slots=True)
class LinkDown:
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class LinkUp:
    reconnects: int
    at: float


RobotEvent = StateUpdated | ModeChanged | ModeReentry | LinkDown | LinkUp | StreamEvent
Listener = Callable[[RobotEvent], None]


class Listeners:
    """Callbacks for every :data:`RobotEvent`, called in the order they were added.

    Adding or removing one (from any thread) swaps in a new tuple, so an :meth:`emit` under way never sees a
    half-changed list and holds no lock while it calls out. A callback's exception is logged on ``log`` as
    ``hal.listener.failed`` and goes no further: a listener's bug must not stop the robot's reader.
    """

    def __init__(self, log: Any) -> None:
        self.log = log
        self._callbacks: tuple[Listener, ...] = ()
        self._lock = threading.Lock()

    def add(self, callback: Listener) -> Callable[[], None]:
        """Returns the function that removes ``callback`` again."""
        with self._lock:
            self._callbacks = (*self._callbacks, callback)

        def remove() -> None:
            with self._lock:
                self._callbacks = tuple(cb for cb in self._callbacks if cb is not callback)

        return remove

    def __len__(self) -> int:
        return len(self._callbacks)

    def emit(self, event: RobotEvent) -> None:
        for callback in self._callbacks:
            try:
                callback(event)
            except Exception:
                self.log.exception("hal.listener.failed", listener=repr(callback), kind=type(event).__name__)
